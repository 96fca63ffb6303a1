"""The exercise's claims on one run (or pair): each `check_*` returns a `Check`, or raises
`MissingData` for a field or curve it needs and does not find."""

import dataclasses
import math
from collections.abc import Mapping
from statistics import NormalDist

import numpy as np

from fmnist_jax.rundir import Curve, Run
from fmnist_jax.smoothing import DEFAULT_SMOOTHING, tensorboard_smooth

ADVERSARIAL_RUN = "adversarial"
# `make study`'s attack of every replica: <runs>/adversarial_replicas/<run>/<k>/summary.json.
ATTACK_REPLICAS_RUN = "adversarial_replicas"
ATTACK_NOISE_METHODS = ("exercise", "minl1")

# The thresholds; docs/populations.md says why each.
OVERFIT_REL_MARGIN = 0.05
EXERCISE_CNN_TURN_STEP = 10_000
TURN_STEP_TOLERANCE = 0.5
TURN_SMOOTHING = DEFAULT_SMOOTHING
DROPOUT_MIN_REDUCTION = 0.01
ADVERSARIAL_P_TARGET = 0.95
ADVERSARIAL_MIN_SUCCESS = 0.5
SAME_ACCURACY = 0.01
SLIGHT_RISE = 0.02
SAME_TRAIN_TEST = 0.03


class MissingData(Exception):
    """A field or curve a claim needs is not there: the claim is "not checked", not a bug."""


@dataclasses.dataclass(frozen=True)
class Check:
    """Whether a claim holds, its numbers, its effect, the effects for which it holds, and the
    effect's 95 % interval where the check measured it on a sample (the attack's images)."""

    holds: bool
    evidence: str
    effect: float
    region: tuple[float, float] = (-math.inf, math.inf)
    interval: tuple[float, float] | None = None


def number(record: Mapping, key: str, where: str = "summary.json") -> float:
    """`record[key]` as a float; MissingData when it is absent or not a number."""
    value = record.get(key)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise MissingData(f"{where} has no {key}")
    return float(value)


def curve(run: Run, key: str) -> Curve:
    """The run's logged series `key` ("train_loss", ...); MissingData when never logged."""
    found = run.curve(key)
    if found is None:
        raise MissingData(f"{run.name}: metrics.jsonl has no {key}")
    return found


def value_at(curve: Curve, step: int) -> float:
    """The curve's value at the last logged step at or before `step` (else its first value)."""
    index = max(int(np.searchsorted(curve.steps, step, side="right")) - 1, 0)
    return float(curve.values[index])


def final_gap(summary: Mapping) -> float:
    """Final test loss minus final train loss: how far the model fits train better than test."""
    return number(summary, "final_test_loss") - number(summary, "final_train_loss")


def check_overfits(
    summary: Mapping, train_loss: Curve, margin: float = OVERFIT_REL_MARGIN
) -> Check:
    """Train loss still falls after the test-loss minimum; the final test loss ends > `margin`
    (relative) above it."""
    low, low_step = number(summary, "min_test_loss"), int(number(summary, "min_test_loss_step"))
    final = number(summary, "final_test_loss")
    rise = (final - low) / abs(low) if low else math.inf
    train_then, train_final = value_at(train_loss, low_step), number(summary, "final_train_loss")
    holds = rise > margin and train_final < train_then
    evidence = (
        f"test loss lowest {low:.4f} at step {low_step:,}, final {final:.4f} "
        f"({rise:+.1%}; over-fitting needs > +{margin:.0%}); train loss over the same steps "
        f"{train_then:.4f} → {train_final:.4f}"
    )
    return Check(holds, evidence, rise, (margin, math.inf))


def loss_turn_step(test_loss: Curve, smoothing: float = TURN_SMOOTHING) -> int:
    """The step where the TensorBoard-smoothed test loss is lowest, i.e. where it turns up."""
    smoothed = tensorboard_smooth(test_loss.values, smoothing)
    return int(test_loss.steps[int(np.nanargmin(smoothed))])


def check_turn_step(
    test_loss: Curve,
    steps_per_epoch: float | None = None,
    expected: int = EXERCISE_CNN_TURN_STEP,
    tolerance: float = TURN_STEP_TOLERANCE,
    smoothing: float = TURN_SMOOTHING,
) -> Check:
    """The test loss turns (its smoothed minimum is before the last step) near `expected`."""
    turn, last = loss_turn_step(test_loss, smoothing), int(test_loss.steps[-1])
    low, high = round(expected * (1 - tolerance)), round(expected * (1 + tolerance))
    holds = turn < last and low <= turn <= high
    epoch = f" (epoch {turn / steps_per_epoch:.1f})" if steps_per_epoch else ""
    evidence = (
        f"smoothed test loss (weight {smoothing:g}) lowest at step {turn:,}{epoch} of {last:,}; "
        f"exercise: about {expected:,} (accepted {low:,}–{high:,})"
    )
    return Check(holds, evidence, float(turn), (low, high))


def _lowered(what: str, without: float, with_: float, rate: str, min_reduction: float) -> Check:
    evidence = (
        f"{what} {without:.4f} without dropout, {with_:.4f} with dropout{rate} "
        f"(change {with_ - without:+.4f}; needs ≤ {-min_reduction:+g})"
    )
    region = (-math.inf, -min_reduction)
    return Check(with_ <= without - min_reduction, evidence, with_ - without, region)


def check_dropout_gap(
    base: Mapping, dropout: Mapping, min_reduction: float = DROPOUT_MIN_REDUCTION
) -> Check:
    """Dropout narrows the final train–test loss gap by at least `min_reduction`."""
    rate = f" {dropout.get('dropout_rate', 0):g}"
    return _lowered(
        "final test − train loss", final_gap(base), final_gap(dropout), rate, min_reduction
    )


def check_dropout_test_loss(
    base: Mapping, dropout: Mapping, min_reduction: float = DROPOUT_MIN_REDUCTION
) -> Check:
    """Dropout lowers the final test loss by at least `min_reduction`."""
    without, with_ = number(base, "final_test_loss"), number(dropout, "final_test_loss")
    return _lowered("final test loss", without, with_, "", min_reduction)


def _accuracy_change(base: Mapping, dropout: Mapping) -> tuple[float, str]:
    """The final test accuracy's change with dropout, and its numbers as text."""
    without, with_ = number(base, "final_test_accuracy"), number(dropout, "final_test_accuracy")
    change = with_ - without
    return change, (
        f"final test accuracy {without:.2%} without dropout, {with_:.2%} with"
        f" ({change * 100:+.2f} points"
    )


def check_same_accuracy(base: Mapping, dropout: Mapping, tolerance: float = SAME_ACCURACY) -> Check:
    """Dropout leaves the final test accuracy about the same (within `tolerance`)."""
    change, text = _accuracy_change(base, dropout)
    evidence = f"{text}; about the same: within ±{tolerance * 100:g})"
    return Check(abs(change) <= tolerance, evidence, change, (-tolerance, tolerance))


def check_slight_rise(base: Mapping, dropout: Mapping, at_most: float = SLIGHT_RISE) -> Check:
    """Dropout raises the final test accuracy slightly: by more than 0, at most `at_most`."""
    change, text = _accuracy_change(base, dropout)
    evidence = f"{text}; a slight rise: above 0, at most {at_most * 100:g})"
    return Check(0 < change <= at_most, evidence, change, (0.0, at_most))


def check_train_test_same(summary: Mapping, tolerance: float = SAME_TRAIN_TEST) -> Check:
    """The final train and test accuracy are within `tolerance` of each other."""
    train, test = number(summary, "final_train_accuracy"), number(summary, "final_test_accuracy")
    evidence = (
        f"final train accuracy {train:.2%}, test {test:.2%} ({(train - test) * 100:+.2f}"
        f" points; quite the same: within ±{tolerance * 100:g})"
    )
    return Check(abs(train - test) <= tolerance, evidence, train - test, (-tolerance, tolerance))


def default_method(adversarial: Mapping) -> str:
    """The attack summary's `default_method`; MissingData when it has no result."""
    name, methods = adversarial.get("default_method"), adversarial.get("methods") or {}
    if name not in methods:
        listed = ", ".join(methods) or "none"
        raise MissingData(
            f"{ADVERSARIAL_RUN}/summary.json: default_method {name!r} has no result "
            f"(methods: {listed})"
        )
    return name


def check_adversarial(
    adversarial: Mapping,
    p_target: float = ADVERSARIAL_P_TARGET,
    min_success: float = ADVERSARIAL_MIN_SUCCESS,
) -> Check:
    """The default method reaches p(target) >= `p_target` on more than `min_success` of its
    images, with the success rate's interval; MissingData without the number of images."""
    name = default_method(adversarial)
    result = adversarial["methods"][name]
    threshold = adversarial.get("threshold")
    if isinstance(threshold, int | float) and threshold < p_target:
        raise MissingData(f"the attack stopped at p(target) ≥ {threshold:g}, below {p_target:g}")
    where = f"{ADVERSARIAL_RUN}/summary.json ({name})"
    rate = number(result, "success_rate", where)
    images = result.get("num_images") or adversarial.get("num_images")
    if not isinstance(images, int) or images <= 0:
        raise MissingData(f"{where} has no num_images: no interval for its success rate {rate:.1%}")
    low, high = success_interval(round(rate * images), images)
    extras = [
        f"{label} {result[key]:.4g}"
        for key, label in (
            ("mean_p_target", "mean p(target)"),
            ("median_l1", "median ℓ1 noise"),
            ("median_steps", "median steps"),
        )
        if isinstance(result.get(key), int | float)
    ]
    evidence = (
        f"method {name!r}: success rate {rate:.1%} [{low:.1%}, {high:.1%}] of {images} images"
        f" (95 % interval; needs > {min_success:.0%})"
    )
    region = (min_success, 1.0)
    return Check(rate > min_success, "; ".join([evidence, *extras]), rate, region, (low, high))


def check_attack_noise(base: Mapping, dropout: Mapping, method: str) -> Check:
    """Dropout raises the median L1 noise `method` needs (relative change) on one replica pair's
    attacks; any rise holds, the interval over replicas says whether it is real."""
    where = f"{ATTACK_REPLICAS_RUN} ({method})"
    same = ("seed", "num_images", "slow_images")
    if any(base.get(k) != dropout.get(k) for k in same):
        raise MissingData(f"{where}: the two runs were attacked on different images ({same})")
    found = [(s.get("methods") or {}).get(method) for s in (base, dropout)]
    if None in found:
        raise MissingData(f"{where}: no result for method {method!r}")
    (b, b_rate), (d, d_rate) = (
        (number(r, "median_l1", where), number(r, "success_rate", where)) for r in found
    )
    change = d / b - 1
    evidence = (
        f"median L1 {b:.3g} without dropout, {d:.3g} with ({change:+.1%}); success"
        f" {b_rate:.0%} / {d_rate:.0%}"
    )
    return Check(change > 0, evidence, change, (0.0, math.inf))


def success_interval(successes: int, trials: int) -> tuple[float, float]:
    """The 95 % Wilson score interval of a success rate (scipy's "wilson", in closed form: cheap
    enough to search the number of trials that decides a claim)."""
    z, rate = NormalDist().inv_cdf(0.975), successes / trials
    shrink = 1 + z**2 / trials
    centre = (rate + z**2 / (2 * trials)) / shrink
    half = z * math.sqrt(rate * (1 - rate) / trials + z**2 / (4 * trials**2)) / shrink
    return centre - half, centre + half
