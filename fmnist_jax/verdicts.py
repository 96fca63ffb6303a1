"""Each claim of the exercise over replicas: "holds in k of R" with the effect's interval.

`check_claims` runs the checks of `fmnist_jax.claims` on each replica of the runs present
(replica k of a run without dropout paired with replica k of the run with, which shares its
seed) and gives a `Verdict` each: one word read off the mean effect's 95 % interval over the R
replicas against the claim's threshold ("holds", "does not hold", "undecided" with the
replicas the spread would need), with "holds in k of R" beside it ("holds (1 run)" / "does
not hold (1 run)" for one), or "not checked (...)" with the reason: a run that is missing, or a
field or curve it lacks (`MissingData`). Anything else raised by a check is a bug and is not caught.
"""

import dataclasses
import math
from collections.abc import Mapping, Sequence

from fmnist_jax import replicas
from fmnist_jax.claims import (
    ADVERSARIAL_P_TARGET,
    ADVERSARIAL_RUN,
    ATTACK_NOISE_METHODS,
    ATTACK_REPLICA_RUNS,
    ATTACK_REPLICAS_RUN,
    EXERCISE_CNN_TURN_STEP,
    Check,
    MissingData,
    check_adversarial,
    check_attack_noise,
    check_dropout_gap,
    check_dropout_test_loss,
    check_overfits,
    check_same_accuracy,
    check_slight_rise,
    check_train_test_same,
    check_turn_step,
    curve,
)
from fmnist_jax.rundir import Run

HOLDS, FAILS, UNDECIDED = "holds", "does not hold", "undecided"
NOT_CHECKED_MISSING_RUN = "not checked (run missing)"
NOT_CHECKED_INCOMPLETE = "not checked (incomplete data)"


@dataclasses.dataclass(frozen=True)
class Verdict:
    """One claim of the exercise: its status ("holds in k of R", "holds (1 run)", "not checked
    (...)"), the evidence, and in how many of how many replicas it held (0 of 0: not checked)."""

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
    """HOLDS when the mean effect's interval lies inside the claim's `region`, FAILS when it
    lies wholly outside, else UNDECIDED."""
    (low, high), (start, end) = interval, region
    if start <= low and high <= end:
        return HOLDS
    if high < start or low > end:
        return FAILS
    return UNDECIDED


def replicas_needed(stats: Mapping, region: Sequence[float], limit: int = 1000) -> int | None:
    """The fewest replicas whose 95 % interval, at the observed mean and spread, would clear
    the region's nearest end (None: more than `limit`, or no spread to extrapolate from)."""
    ends = [e for e in region if math.isfinite(e)]
    if not ends or stats["std"] == 0:
        return None
    distance = min(abs(stats["mean"] - e) for e in ends)
    for n in range(2, limit + 1):
        if replicas.t_quantile(replicas.INTERVAL_LEVEL, n - 1) * stats["std"] / math.sqrt(n) < (
            distance
        ):
            return n
    return None


def summarize_checks(claim: str, checks: Sequence[Check], effect: str, unit: str) -> Verdict:
    """The verdict of one claim checked on R replicas. Its word reads the mean effect's 95 %
    interval against the claim's region (`decide`): "holds", "does not hold" or "undecided",
    with how many of the R replicas hold ("k of R hold"), and for "undecided" how many replicas the
    observed spread would need to decide it. One replica: "holds (1 run)" / "does not hold (1 run)".
    """
    held, total = sum(c.holds for c in checks), len(checks)
    if total == 1:
        status = f"{HOLDS if held else FAILS} (1 run)"
        return Verdict(claim, status, checks[0].evidence, held, total)
    stats = replicas.statistics([c.effect for c in checks])
    low, high = stats["interval"]
    word = decide((low, high), checks[0].region)
    unit_text = "" if unit in ("step", "%") else f" {unit}"
    ends = " and ".join(_fmt_effect(e, unit) for e in checks[0].region if math.isfinite(e))
    reading = {
        HOLDS: f"the interval clears the threshold {ends}",
        FAILS: f"the interval lies on the wrong side of {ends}",
        UNDECIDED: f"the interval straddles {ends}: not distinguishable at R = {total}",
    }[word]
    if word == UNDECIDED:
        needed = replicas_needed(stats, checks[0].region)
        reading += (
            f"; at this spread about {needed} replicas would decide it"
            if needed
            else "; no replica count at this spread decides it"
        )
    evidence = (
        f"{effect} {_fmt_effect(stats['mean'], unit)} [{_fmt_effect(low, unit)},"
        f" {_fmt_effect(high, unit)}]{unit_text} (mean, 95 % interval over {total} replicas;"
        f" range {_fmt_effect(stats['min'], unit)} to {_fmt_effect(stats['max'], unit)}):"
        f" {reading}; replica 0: {checks[0].evidence}"
    )
    return Verdict(claim, f"{word} ({held} of {total} hold)", evidence, held, total)


def _checked(claim, runs, names, check, effect: str, unit: str) -> Verdict:
    """`check(*replica runs)` on each replica (replica k of every run in `names` together)
    once every run is present and finished, else "not checked"."""
    missing = [n for n in names if runs.get(n) is None or runs[n].summary is None]
    if missing:
        return Verdict(claim, NOT_CHECKED_MISSING_RUN, "missing: " + ", ".join(missing))
    count = min(runs[n].num_replicas for n in names)
    try:
        checks = [check(*(runs[n].replica(k) for n in names)) for k in range(count)]
    except MissingData as e:
        return Verdict(claim, NOT_CHECKED_INCOMPLETE, str(e))
    return summarize_checks(claim, checks, effect, unit)


# The claims about one model, in the report's order: (models it is made for, the claim with
# {label} for "MLP" or "ConvNet", the runs it reads ({m}: the model's run name), the check on
# replica k of each, what its effect is, and the effect's unit).
MODEL_CLAIMS = (
    (
        ("mlp", "cnn"),
        "The {label} without dropout over-fits (train loss falls, test loss rises)",
        ("{m}",),
        lambda base: check_overfits(base.summary, curve(base, "train_loss")),
        "final test loss above its minimum by",
        "%",
    ),
    (
        ("cnn",),
        f"The ConvNet's test loss turns after about {EXERCISE_CNN_TURN_STEP:,} iterations",
        ("{m}",),
        lambda base: check_turn_step(curve(base, "test_loss"), base.summary.get("steps_per_epoch")),
        "turn at step",
        "step",
    ),
    (
        ("mlp", "cnn"),
        "Dropout 0.25 reduces the {label}'s final train–test loss gap",
        ("{m}", "{m}_dropout"),
        lambda base, drop: check_dropout_gap(base.summary, drop.summary),
        "dropout changes the final test − train loss gap by",
        "nats",
    ),
    (
        ("mlp", "cnn"),
        "Dropout lowers the {label}'s final test loss",
        ("{m}", "{m}_dropout"),
        lambda base, drop: check_dropout_test_loss(base.summary, drop.summary),
        "dropout changes the final test loss by",
        "nats",
    ),
    (
        ("mlp",),
        "With dropout the MLP's test accuracy remains about the same",
        ("{m}", "{m}_dropout"),
        lambda base, drop: check_same_accuracy(base.summary, drop.summary),
        "dropout changes the final test accuracy by",
        "points",
    ),
    (
        ("cnn",),
        "With dropout the ConvNet's test accuracy rises slightly",
        ("{m}", "{m}_dropout"),
        lambda base, drop: check_slight_rise(base.summary, drop.summary),
        "dropout changes the final test accuracy by",
        "points",
    ),
    (
        ("cnn",),
        "With dropout the ConvNet's train and test accuracy are quite the same",
        ("{m}_dropout",),
        lambda drop: check_train_test_same(drop.summary),
        "final train − test accuracy",
        "points",
    ),
)


def _model_claims(runs: Mapping[str, Run | None], model: str, label: str) -> list[Verdict]:
    """The over-fitting, dropout and accuracy claims (MODEL_CLAIMS) for one model ("mlp" or
    "cnn")."""
    return [
        _checked(claim.format(label=label), runs, [n.format(m=model) for n in names], check, *unit)
        for models, claim, names, check, *unit in MODEL_CLAIMS
        if model in models
    ]


def _attack_noise_claims(attacks: Mapping[str, Sequence[Mapping]] | None) -> list[Verdict]:
    """Dropout vs the attack's noise, one claim per method: replica k of the ConvNet without
    dropout paired with replica k with dropout (`attacks`: run name -> the attack summaries
    of its replicas in order; None or a run without any: not run)."""
    found = []
    for method in ATTACK_NOISE_METHODS:
        claim = (
            f"Dropout raises the ℓ1 noise a targeted attack needs ({method}; beyond the exercise)"
        )
        pairs = [(attacks or {}).get(run) or [] for run in ATTACK_REPLICA_RUNS]
        if not all(pairs):
            missing = f"missing: {ATTACK_REPLICAS_RUN} (make study)"
            found.append(Verdict(claim, NOT_CHECKED_MISSING_RUN, missing))
            continue
        try:
            checks = [check_attack_noise(b, d, method) for b, d in zip(*pairs)]
        except MissingData as e:
            found.append(Verdict(claim, NOT_CHECKED_INCOMPLETE, str(e)))
            continue
        found.append(summarize_checks(claim, checks, "dropout changes the median ℓ1 by", "%"))
    return found


def check_claims(
    runs: Mapping[str, Run | None],
    adversarial: Mapping | None,
    attacks: Mapping[str, Sequence[Mapping]] | None = None,
) -> list[Verdict]:
    """Every claim of the exercise, checked on the runs present (None: missing) and the
    attack's summary.json (None: not run; the attack is of one model, replica 0), with the
    dropout-vs-attack-noise claims (`attacks`, see `_attack_noise_claims`) before it."""
    verdicts = _model_claims(runs, "mlp", "MLP") + _model_claims(runs, "cnn", "ConvNet")
    verdicts += _attack_noise_claims(attacks)
    claim = f"Adversarial examples reach p(target) ≥ {ADVERSARIAL_P_TARGET}"
    if adversarial is None:
        verdicts.append(Verdict(claim, NOT_CHECKED_MISSING_RUN, f"missing: {ADVERSARIAL_RUN}"))
        return verdicts
    try:
        check = check_adversarial(adversarial)
    except MissingData as e:
        verdicts.append(Verdict(claim, NOT_CHECKED_INCOMPLETE, str(e)))
        return verdicts
    status = f"{HOLDS if check.holds else FAILS} (1 model)"
    verdicts.append(Verdict(claim, status, check.evidence, int(check.holds), 1))
    return verdicts
