"""Each declared claim over replicas (replica k without dropout paired with replica k with):
"holds in k of R", the word read off the mean effect's 95 % interval (docs/populations.md);
the attack's claim, the word read off its success rate's 95 % interval."""

import dataclasses
import functools
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

from fmnist_jax import claims, declarations, replicas, rundir
from fmnist_jax.claims import Check, MissingData
from fmnist_jax.errors import ConfigError
from fmnist_jax.rundir import Run

HOLDS, FAILS, UNDECIDED = "holds", "does not hold", "undecided"
NOT_CHECKED_MISSING_RUN = "not checked (run missing)"
NOT_CHECKED_INCOMPLETE = "not checked (incomplete data)"
NOT_CHECKED_UNPAIRED = "not checked (members do not pair)"
MAX_IMAGES = 100_000  # the most images `images_needed` tries


@dataclasses.dataclass(frozen=True)
class Verdict:
    """A claim, its status, the evidence, and in how many of how many replicas it held."""

    claim: str
    status: str
    evidence: str
    held: int = 0
    total: int = 0


def _fmt_effect(value: float, unit: str) -> str:
    if unit == "step":
        return f"{value:,.0f}"
    if unit == "%":
        return f"{value:+.1%}"
    if unit == "points":
        return f"{value * 100:+.2f}"
    return f"{value:+.4f}"


def decide(interval: Sequence[float], region: Sequence[float]) -> str:
    """HOLDS when the interval lies inside `region`, FAILS when wholly outside, else UNDECIDED."""
    (low, high), (start, end) = interval, region
    if start <= low and high <= end:
        return HOLDS
    if high < start or low > end:
        return FAILS
    return UNDECIDED


def replicas_needed(stats: Mapping, region: Sequence[float], limit: int = 1000) -> int | None:
    """The fewest replicas whose interval, at this mean and spread, would clear the region's
    nearest end (None: more than `limit`, or no spread)."""
    ends = [e for e in region if math.isfinite(e)]
    if not ends or stats["std"] == 0:
        return None
    distance = min(abs(stats["mean"] - e) for e in ends)
    for n in range(2, limit + 1):
        half = replicas.t_quantile(replicas.INTERVAL_LEVEL, n - 1) * stats["std"] / math.sqrt(n)
        if half < distance:
            return n
    return None


def images_needed(rate: float, region: Sequence[float], limit: int = MAX_IMAGES) -> int | None:
    """The fewest images whose success-rate interval, at this rate, `decide`s the region (None:
    more than `limit`)."""
    for n in range(1, limit + 1):
        if decide(claims.success_interval(round(rate * n), n), region) != UNDECIDED:
            return n
    return None


def _reading(word: str, ends: str, needed: int | None, what: str, replicas_now: int = 0) -> str:
    """How an interval reads against the threshold `ends`; undecided, how many `what`
    ("replicas", "images") would decide it at this spread or rate (`needed`; None: none)."""
    reading = {
        HOLDS: f"the interval clears the threshold {ends}",
        FAILS: f"the interval lies on the wrong side of {ends}",
        UNDECIDED: f"the interval straddles {ends}",
    }[word]
    if word != UNDECIDED:
        return reading
    if replicas_now:
        reading += f": not distinguishable at R = {replicas_now}"
    basis = "rate" if what == "images" else "spread"
    if needed is None:
        return f"{reading}; no number of {what} at this {basis} decides it"
    return f"{reading}; at this {basis} about {needed:,} {what} would decide it"


def rate_verdict(claim: str, check: Check) -> Verdict:
    """One model's verdict on a success rate: its interval (`check.interval`) read by `decide`."""
    word = decide(check.interval, check.region)
    needed = images_needed(check.effect, check.region) if word == UNDECIDED else None
    reading = _reading(word, f"{check.region[0]:.0%}", needed, "images")
    evidence = f"{check.evidence}; {reading}"
    return Verdict(claim, f"{word} (1 model)", evidence, int(word == HOLDS), 1)


def summarize_checks(claim: str, checks: Sequence[Check], effect: str, unit: str) -> Verdict:
    """The verdict of one claim checked on R replicas ("holds (1 run)" for one)."""
    held, total = sum(c.holds for c in checks), len(checks)
    if total == 1:
        return Verdict(claim, f"{HOLDS if held else FAILS} (1 run)", checks[0].evidence, held, 1)
    stats = replicas.statistics([c.effect for c in checks])
    low, high = stats["interval"]
    word = decide((low, high), checks[0].region)
    unit_text = "" if unit in ("step", "%") else f" {unit}"
    ends = " and ".join(_fmt_effect(e, unit) for e in checks[0].region if math.isfinite(e))
    needed = replicas_needed(stats, checks[0].region) if word == UNDECIDED else None
    reading = _reading(word, ends, needed, "replicas", total)
    evidence = (
        f"{effect} {_fmt_effect(stats['mean'], unit)} [{_fmt_effect(low, unit)},"
        f" {_fmt_effect(high, unit)}]{unit_text} (mean, 95 % interval over {total} replicas;"
        f" range {_fmt_effect(stats['min'], unit)} to {_fmt_effect(stats['max'], unit)}):"
        f" {reading}; replica 0: {checks[0].evidence}"
    )
    return Verdict(claim, f"{word} ({held} of {total} hold)", evidence, held, total)


class Claim(NamedTuple):
    """A claim an experiment may declare: its text ({label}: the experiment's), its check on one
    replica (of the run without dropout first, where `paired`), its effect and its unit."""

    text: str
    check: Callable[..., Check]
    effect: str
    unit: str

    @property
    def paired(self) -> bool:
        """Whether its check reads the run without dropout beside the experiment's."""
        return len(inspect.signature(self.check).parameters) == 2


CLAIMS = {
    "overfits": Claim(
        "The {label} without dropout over-fits (train loss falls, test loss rises)",
        lambda base: claims.check_overfits(base.summary, claims.curve(base, "train_loss")),
        "final test loss above its minimum by",
        "%",
    ),
    "turn_step": Claim(
        f"The {{label}}'s test loss turns after about {claims.EXERCISE_CNN_TURN_STEP:,} iterations",
        lambda base: claims.check_turn_step(
            claims.curve(base, "test_loss"), base.summary.get("steps_per_epoch")
        ),
        "turn at step",
        "step",
    ),
    "dropout_gap": Claim(
        "Dropout 0.25 reduces the {label}'s final train–test loss gap",
        lambda base, drop: claims.check_dropout_gap(base.summary, drop.summary),
        "dropout changes the final test − train loss gap by",
        "nats",
    ),
    "dropout_test_loss": Claim(
        "Dropout lowers the {label}'s final test loss",
        lambda base, drop: claims.check_dropout_test_loss(base.summary, drop.summary),
        "dropout changes the final test loss by",
        "nats",
    ),
    "same_accuracy": Claim(
        "With dropout the {label}'s test accuracy remains about the same",
        lambda base, drop: claims.check_same_accuracy(base.summary, drop.summary),
        "dropout changes the final test accuracy by",
        "points",
    ),
    "slight_rise": Claim(
        "With dropout the {label}'s test accuracy rises slightly",
        lambda base, drop: claims.check_slight_rise(base.summary, drop.summary),
        "dropout changes the final test accuracy by",
        "points",
    ),
    "train_test_same": Claim(
        "With dropout the {label}'s train and test accuracy are quite the same",
        lambda drop: claims.check_train_test_same(drop.summary),
        "final train − test accuracy",
        "points",
    ),
}
# Dropout against the attack's noise per method, on `make study`'s attacks (after CLAIMS).
ATTACK_NOISE = "attack_noise"


def _claim(d: declarations.Declared, name: str) -> Claim | None:
    """CLAIMS[name] for experiment `d` (None for ATTACK_NOISE); ConfigError when it cannot be."""
    if name != ATTACK_NOISE and name not in CLAIMS:
        known = ", ".join([*CLAIMS, ATTACK_NOISE])
        raise ConfigError(
            f"experiment {d.name!r}: unknown claim {name!r} in report.claims; {known}"
        )
    if (name == ATTACK_NOISE or CLAIMS[name].paired) and not d.dropout_of:
        raise ConfigError(f"experiment {d.name!r}: claim {name!r} needs report.dropout_of")
    return CLAIMS.get(name)


def _summarized(claim: str, check: Callable, arguments, effect: str, unit: str) -> Verdict:
    """`check(*a)` for each replica's `a`, summarized ("not checked" on MissingData)."""
    try:
        checks = [check(*a) for a in arguments]
    except MissingData as e:
        return Verdict(claim, NOT_CHECKED_INCOMPLETE, str(e))
    return summarize_checks(claim, checks, effect, unit)


def _checked(claim: str, runs: Mapping, names: Sequence[str], spec: Claim) -> Verdict:
    """`spec.check` on replica k of every run in `names` together, for each k."""
    missing = [n for n in names if runs.get(n) is None or runs[n].summary is None]
    if missing:
        return Verdict(claim, NOT_CHECKED_MISSING_RUN, "missing: " + ", ".join(missing))
    count = min(runs[n].num_members for n in names)
    groups = {n: [runs[n].member(k) for k in range(count)] for n in names}
    unpaired = rundir.unpaired(groups)
    if unpaired:
        return Verdict(claim, NOT_CHECKED_UNPAIRED, unpaired)
    member_runs = list(zip(*groups.values()))
    return _summarized(claim, spec.check, member_runs, spec.effect, spec.unit)


def _attack_noise(pair: Sequence[str], attacks: Mapping | None) -> list[Verdict]:
    """Dropout vs the attack's noise per method (`attacks`: run -> its replicas' attacks)."""
    found = []
    for method in claims.ATTACK_NOISE_METHODS:
        claim = (
            f"Dropout raises the ℓ1 noise a targeted attack needs ({method}; beyond the exercise)"
        )
        summaries = [(attacks or {}).get(run) or [] for run in pair]
        if not all(summaries):
            missing = f"missing: {claims.ATTACK_REPLICAS_RUN} (make study)"
            found.append(Verdict(claim, NOT_CHECKED_MISSING_RUN, missing))
            continue
        check = functools.partial(claims.check_attack_noise, method=method)
        effect = "dropout changes the median ℓ1 by"
        found.append(_summarized(claim, check, zip(*summaries), effect, "%"))
    return found


def experiment_verdicts(d: declarations.Declared, runs: Mapping) -> list[Verdict]:
    """The verdicts of the `CLAIMS` experiment `d` declares, on its runs in `runs`."""
    found = []
    for name in d.claims:
        spec = _claim(d, name)
        if spec is not None:
            names = d.runs if spec.paired else (d.name,)
            found.append(_checked(spec.text.format(label=d.label), runs, names, spec))
    return found


def check_claims(
    runs: Mapping[str, Run | None], adversarial: Mapping | None, attacks: Mapping | None = None
) -> list[Verdict]:
    """Every declared claim on the runs (None: missing), then those on the replicas' `attacks`,
    then the attack's own (`adversarial`: its summary.json, None when it has not run)."""
    verdicts, noise = [], []
    for d in declarations.experiments(runs):
        verdicts += experiment_verdicts(d, runs)
        noise += [
            v for name in d.claims if name == ATTACK_NOISE for v in _attack_noise(d.runs, attacks)
        ]
    verdicts += noise
    claim = f"Adversarial examples reach p(target) ≥ {claims.ADVERSARIAL_P_TARGET}"
    if adversarial is None:
        return [
            *verdicts,
            Verdict(claim, NOT_CHECKED_MISSING_RUN, f"missing: {claims.ADVERSARIAL_RUN}"),
        ]
    try:
        check = claims.check_adversarial(adversarial)
    except MissingData as e:
        return [*verdicts, Verdict(claim, NOT_CHECKED_INCOMPLETE, str(e))]
    return [*verdicts, rate_verdict(claim, check)]
