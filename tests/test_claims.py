"""Tests of fmnist_jax.claims: each claim check on fabricated summaries and curves, and which
failures make a claim "not checked" (missing runs, fields, curves) and which raise (bugs)."""

from pathlib import Path

import numpy as np
import pytest

from fmnist_jax import claims
from fmnist_jax.rundir import Curve, Run

STEPS = np.arange(1000, 20001, 1000)
# A V-shaped test loss, lowest at step 10,000; the smoothed curve (weight 0.6) lags one eval.
V_LOSS = np.abs(STEPS - 10_000) / 10_000 + 0.3
FALLING = np.linspace(0.8, 0.1, len(STEPS))


def summary(final_test=0.40, min_test=0.30, min_step=10_000, final_train=0.15, **extra):
    """A fabricated summary.json with the fields the claims read."""
    return {
        "final_test_loss": final_test,
        "min_test_loss": min_test,
        "min_test_loss_step": min_step,
        "final_train_loss": final_train,
        **extra,
    }


def run(s, train=FALLING, test=V_LOSS, name="run"):
    """A finished run in memory whose metrics.jsonl holds `train` and `test` losses."""
    history = [
        {"step": int(step), "train_loss": float(a), "test_loss": float(b)}
        for step, a, b in zip(STEPS, train, test, strict=True)
    ]
    return Run(Path(name), {}, history, s)


def dropout_run():
    return run(summary(final_test=0.33, final_train=0.28, dropout_rate=0.25))


ADVERSARIAL = {  # the shape the attack writes: per-method numbers and its default method
    "methods": {
        "gd": {"success_rate": 0.8, "mean_p_target": 0.97, "median_l1": 12.5, "note": "x"},
        "fgsm": {"success_rate": 0.2, "median_steps": 40},
    },
    "default_method": "gd",
    "threshold": 0.95,
}


def verdicts_by_claim(runs, adversarial=None):
    return {v.claim: v for v in claims.check_claims(runs, adversarial)}


# --------------------------------------------------------------------------- single claims


def test_overfitting_holds_when_test_loss_rises_while_train_loss_falls():
    holds, evidence = claims.check_overfits(summary(), Curve(STEPS, FALLING))
    assert holds
    # Train loss at the test minimum (step 10,000, index 9) is 0.8 - 9 * 0.7 / 19.
    assert "+33.3%" in evidence and "0.4684 → 0.1500" in evidence


def test_overfitting_does_not_hold_for_a_small_rise_or_a_train_loss_that_stopped_falling():
    flat = summary(final_test=0.31)  # +3.3 %: under the 5 % margin
    holds, evidence = claims.check_overfits(flat, Curve(STEPS, FALLING))
    assert not holds and "+3.3%" in evidence
    stalled = summary(final_train=0.5)  # train loss ends above its value at the test minimum
    assert not claims.check_overfits(stalled, Curve(STEPS, FALLING))[0]


def test_turn_step_is_found_on_the_smoothed_curve():
    noisy = np.array([1.0, 0.8, 0.3, 0.9, 0.6, 0.55, 0.5, 0.7, 0.8])
    steps = np.arange(1, 10) * 1000
    # The raw minimum is a one-eval dip at step 3,000; the smoothed one is at 7,000.
    assert claims.loss_turn_step(Curve(steps, noisy)) == 7000
    assert claims.loss_turn_step(Curve(steps, noisy), smoothing=0.0) == 3000


def test_turn_step_near_10000_holds_and_far_or_absent_does_not():
    holds, evidence = claims.check_turn_step(Curve(STEPS, V_LOSS), steps_per_epoch=1000)
    assert holds and "lowest at step 11,000 (epoch 11.0) of 20,000" in evidence
    early = np.abs(STEPS - 3000) / 10_000 + 0.3
    assert not claims.check_turn_step(Curve(STEPS, early))[0]
    holds, evidence = claims.check_turn_step(Curve(STEPS, FALLING))  # never turns
    assert not holds and "lowest at step 20,000 of 20,000" in evidence


def test_dropout_must_narrow_the_gap_and_lower_the_test_loss_by_the_margin():
    base = summary(final_test=0.40, final_train=0.15)  # gap 0.25
    better = summary(final_test=0.33, final_train=0.28, dropout_rate=0.25)  # gap 0.05
    holds, evidence = claims.check_dropout_gap(base, better)
    assert holds and "0.2500 without dropout, 0.0500 with dropout 0.25" in evidence
    assert claims.check_dropout_test_loss(base, better)[0]
    barely = summary(final_test=0.395, final_train=0.15)  # gap down by 0.005 < 0.01
    assert not claims.check_dropout_gap(base, barely)[0]
    assert not claims.check_dropout_test_loss(base, barely)[0]


def test_adversarial_claim_is_judged_on_the_summarys_default_method():
    holds, evidence = claims.check_adversarial(ADVERSARIAL)
    assert holds
    assert "'gd': success rate 80.0%" in evidence and "mean p(target) 0.97" in evidence
    assert not claims.check_adversarial({**ADVERSARIAL, "default_method": "fgsm"})[0]


@pytest.mark.parametrize(
    "adversarial",
    [
        {"methods": ADVERSARIAL["methods"]},  # no default_method: no guess at one
        {"methods": {"descent": {"success_rate": 0.9}}},  # no "descent" fallback either
        {"methods": ADVERSARIAL["methods"], "method": "gd"},  # nor a key the attack never writes
        {"methods": {}, "default_method": "gd"},
    ],
)
def test_adversarial_claim_without_a_default_method_result_is_not_checked(adversarial):
    (verdict,) = claims.check_claims({}, adversarial)[-1:]
    assert verdict.status == claims.NOT_CHECKED_INCOMPLETE
    assert "default_method" in verdict.evidence


def test_adversarial_claim_at_a_lower_threshold_is_not_checked():
    (verdict,) = claims.check_claims({}, {**ADVERSARIAL, "threshold": 0.5})[-1:]
    assert verdict.status == claims.NOT_CHECKED_INCOMPLETE
    assert verdict.evidence == "the attack stopped at p(target) ≥ 0.5, below 0.95"


# --------------------------------------------------------------------------- all claims


def test_check_claims_marks_missing_and_unfinished_runs_not_checked():
    unfinished = Run(Path("cnn_dropout"), {}, [], None)  # no summary.json yet
    runs = {"mlp": run(summary()), "mlp_dropout": dropout_run(), "cnn": run(summary())}
    verdicts = verdicts_by_claim({**runs, "cnn_dropout": unfinished})
    statuses = [v.status for v in verdicts.values()]
    assert statuses == [claims.HOLDS] * 5 + [claims.NOT_CHECKED_MISSING_RUN] * 3
    gap = verdicts["Dropout 0.25 reduces the ConvNet's final train–test loss gap"]
    assert gap.evidence == "missing: cnn_dropout"
    assert verdicts_by_claim({**runs, "cnn_dropout": None}) == verdicts
    adversarial = verdicts["Adversarial examples reach p(target) ≥ 0.95"]
    assert adversarial.evidence == "missing: adversarial"


def test_a_missing_curve_or_summary_field_is_not_checked_with_its_reason():
    no_curves = Run(Path("mlp"), {}, [], summary())
    incomplete = summary()
    del incomplete["min_test_loss"]
    runs = {"mlp": no_curves, "cnn": run(summary(final_test=0.301)), "cnn_dropout": None}
    verdicts = claims.check_claims(runs, adversarial=None)
    assert verdicts[0].status == claims.NOT_CHECKED_INCOMPLETE
    assert verdicts[0].evidence == "mlp: metrics.jsonl has no train_loss"
    assert verdicts[3].status == claims.FAILS  # cnn's test loss rose by 0.3 % only
    verdicts = claims.check_claims({"cnn": run(incomplete)}, adversarial=None)
    assert verdicts[3].status == claims.NOT_CHECKED_INCOMPLETE
    assert verdicts[3].evidence == "summary.json has no min_test_loss"


@pytest.mark.parametrize("bug", [KeyError, TypeError, ValueError, IndexError, ZeroDivisionError])
def test_a_bug_in_a_claim_check_raises(monkeypatch, bug):
    def broken(*args, **kwargs):
        raise bug("a bug in the check")

    monkeypatch.setattr(claims, "check_dropout_gap", broken)
    runs = {"mlp": run(summary()), "mlp_dropout": dropout_run()}
    with pytest.raises(bug, match="a bug in the check"):
        claims.check_claims(runs, ADVERSARIAL)


def test_a_bug_reading_a_curve_raises(monkeypatch):
    monkeypatch.setattr(claims, "value_at", lambda curve, step: curve.values[len(curve.values)])
    with pytest.raises(IndexError):
        claims.check_claims({"mlp": run(summary())}, None)
