"""Tests of fmnist_jax.claims and fmnist_jax.verdicts: each claim check on fabricated summaries
and curves, which failures make a claim "not checked" (missing runs, fields, curves) and which
raise (bugs), and the k-of-R verdicts over fabricated replicas."""

import math
from pathlib import Path

import numpy as np
import pytest

from fmnist_jax import claims, replicas, verdicts
from fmnist_jax.claims import Check
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
        {"step": int(step), "replica": 0, "train_loss": float(a), "test_loss": float(b)}
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
    "num_images": 100,
}


def default_attack(successes: int, images: int) -> dict:
    """An attack summary whose default method succeeded on `successes` of `images` images."""
    gd = {"success_rate": successes / images, "num_images": images}
    return {"methods": {"gd": gd}, "default_method": "gd", "threshold": 0.95}


def verdicts_by_claim(runs, adversarial=None):
    return {v.claim: v for v in verdicts.check_claims(runs, adversarial)}


# --------------------------------------------------------------------------- single claims


def test_overfitting_holds_when_test_loss_rises_while_train_loss_falls():
    check = claims.check_overfits(summary(), Curve(STEPS, FALLING))
    holds, evidence = check.holds, check.evidence
    assert holds and check.effect == pytest.approx(0.1 / 0.3)
    # Train loss at the test minimum (step 10,000, index 9) is 0.8 - 9 * 0.7 / 19.
    assert "+33.3%" in evidence and "0.4684 → 0.1500" in evidence


def test_overfitting_does_not_hold_for_a_small_rise_or_a_train_loss_that_stopped_falling():
    flat = summary(final_test=0.31)  # +3.3 %: under the 5 % margin
    check = claims.check_overfits(flat, Curve(STEPS, FALLING))
    assert not check.holds and "+3.3%" in check.evidence
    stalled = summary(final_train=0.5)  # train loss ends above its value at the test minimum
    assert not claims.check_overfits(stalled, Curve(STEPS, FALLING)).holds


def test_turn_step_is_found_on_the_smoothed_curve():
    noisy = np.array([1.0, 0.8, 0.3, 0.9, 0.6, 0.55, 0.5, 0.7, 0.8])
    steps = np.arange(1, 10) * 1000
    # The raw minimum is a one-eval dip at step 3,000; the smoothed one is at 7,000.
    assert claims.loss_turn_step(Curve(steps, noisy)) == 7000
    assert claims.loss_turn_step(Curve(steps, noisy), smoothing=0.0) == 3000


def test_turn_step_near_10000_holds_and_far_or_absent_does_not():
    check = claims.check_turn_step(Curve(STEPS, V_LOSS), steps_per_epoch=1000)
    assert check.holds and "lowest at step 11,000 (epoch 11.0) of 20,000" in check.evidence
    assert check.effect == 11_000
    early = np.abs(STEPS - 3000) / 10_000 + 0.3
    assert not claims.check_turn_step(Curve(STEPS, early)).holds
    check = claims.check_turn_step(Curve(STEPS, FALLING))  # never turns
    assert not check.holds and "lowest at step 20,000 of 20,000" in check.evidence


def test_dropout_must_narrow_the_gap_and_lower_the_test_loss_by_the_margin():
    base = summary(final_test=0.40, final_train=0.15)  # gap 0.25
    better = summary(final_test=0.33, final_train=0.28, dropout_rate=0.25)  # gap 0.05
    check = claims.check_dropout_gap(base, better)
    assert check.holds and "0.2500 without dropout, 0.0500 with dropout 0.25" in check.evidence
    assert check.effect == pytest.approx(-0.2)
    assert claims.check_dropout_test_loss(base, better).holds
    barely = summary(final_test=0.395, final_train=0.15)  # gap down by 0.005 < 0.01
    assert not claims.check_dropout_gap(base, barely).holds
    assert not claims.check_dropout_test_loss(base, barely).holds


def test_the_accuracy_claims_read_their_margins():
    base = summary(final_test_accuracy=0.900, final_train_accuracy=0.98)
    same = summary(final_test_accuracy=0.905, final_train_accuracy=0.92)
    assert claims.check_same_accuracy(base, same).holds
    assert claims.check_same_accuracy(base, same).effect == pytest.approx(0.005)
    assert not claims.check_same_accuracy(base, summary(final_test_accuracy=0.915)).holds
    assert claims.check_slight_rise(base, same).holds
    assert not claims.check_slight_rise(base, summary(final_test_accuracy=0.899)).holds
    assert not claims.check_slight_rise(base, summary(final_test_accuracy=0.930)).holds
    check = claims.check_train_test_same(same)
    assert check.holds and check.effect == pytest.approx(0.015)
    assert not claims.check_train_test_same(base).holds  # 8 points apart


def test_adversarial_claim_is_judged_on_the_summarys_default_method():
    check = claims.check_adversarial(ADVERSARIAL)
    assert check.holds and check.effect == 0.8 and check.region == (0.5, 1.0)
    # The success rate's 95 % Wilson interval over the summary's images (80 of 100).
    assert check.interval == pytest.approx((0.7112, 0.8666), abs=1e-4)
    assert "'gd': success rate 80.0% [71.1%, 86.7%] of 100 images" in check.evidence
    assert "mean p(target) 0.97" in check.evidence
    assert not claims.check_adversarial({**ADVERSARIAL, "default_method": "fgsm"}).holds


@pytest.mark.parametrize("successes, trials", [(0, 10), (5, 8), (80, 100), (10, 10), (501, 1000)])
def test_success_interval_is_scipys_wilson_interval(successes, trials):
    from scipy import stats

    ci = stats.binomtest(successes, trials).proportion_ci(0.95, method="wilson")
    assert claims.success_interval(successes, trials) == pytest.approx((ci.low, ci.high), abs=1e-12)


@pytest.mark.parametrize(
    "successes, images, status, reading",
    [
        (195, 200, "holds", "97.5% [94.3%, 98.9%] of 200 images"),
        (40, 200, "does not hold", "20.0% [15.0%, 26.1%] of 200 images"),
        (5, 8, "undecided", "62.5% [30.6%, 86.3%] of 8 images"),
    ],
)
def test_adversarial_verdict_reads_the_success_rates_interval(successes, images, status, reading):
    (verdict,) = verdicts.check_claims({}, default_attack(successes, images))[-1:]
    assert verdict.status == f"{status} (1 model)"
    assert (verdict.held, verdict.total) == (int(status == verdicts.HOLDS), 1)
    assert f"success rate {reading} (95 % interval; needs > 50%); the interval " in verdict.evidence
    assert verdict.evidence.endswith(
        {
            "holds": "clears the threshold 50%",
            "does not hold": "lies on the wrong side of 50%",
            "undecided": "straddles 50%; at this rate about 57 images would decide it",
        }[status]
    )


def test_images_needed_is_the_fewest_whose_interval_decides():
    region = (0.5, 1.0)
    assert verdicts.images_needed(0.625, region) == 57
    assert claims.success_interval(35, 56)[0] < 0.5 < claims.success_interval(36, 57)[0]
    assert verdicts.images_needed(0.625, region, limit=56) is None
    assert verdicts.images_needed(0.5, region) is None  # the interval always straddles 50 %


def test_adversarial_claim_without_an_image_count_is_not_checked():
    no_count = {k: v for k, v in ADVERSARIAL.items() if k != "num_images"}
    (verdict,) = verdicts.check_claims({}, no_count)[-1:]
    assert verdict.status == verdicts.NOT_CHECKED_INCOMPLETE
    assert verdict.evidence == (
        "adversarial/summary.json (gd) has no num_images: no interval for its success rate 80.0%"
    )


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
    (verdict,) = verdicts.check_claims({}, adversarial)[-1:]
    assert verdict.status == verdicts.NOT_CHECKED_INCOMPLETE
    assert "default_method" in verdict.evidence


def test_adversarial_claim_at_a_lower_threshold_is_not_checked():
    (verdict,) = verdicts.check_claims({}, {**ADVERSARIAL, "threshold": 0.5})[-1:]
    assert verdict.status == verdicts.NOT_CHECKED_INCOMPLETE
    assert verdict.evidence == "the attack stopped at p(target) ≥ 0.5, below 0.95"


# --------------------------------------------------------------------------- all claims


def test_check_claims_marks_missing_and_unfinished_runs_not_checked():
    unfinished = Run(Path("cnn_dropout"), {}, [], None)  # no summary.json yet
    runs = {"mlp": run(summary()), "mlp_dropout": dropout_run(), "cnn": run(summary())}
    found = verdicts_by_claim({**runs, "cnn_dropout": unfinished})
    statuses = [v.status for v in found.values()]
    one = f"{verdicts.HOLDS} (1 run)"
    incomplete, missing = verdicts.NOT_CHECKED_INCOMPLETE, verdicts.NOT_CHECKED_MISSING_RUN
    # MLP: over-fits, gap, test loss hold; the accuracy claim lacks its field. ConvNet:
    # over-fits and turns; four claims need cnn_dropout; the attacks are missing.
    assert statuses == [one] * 3 + [incomplete] + [one] * 2 + [missing] * 7
    gap = found["Dropout 0.25 reduces the ConvNet's final train–test loss gap"]
    assert gap.evidence == "missing: cnn_dropout"
    assert verdicts_by_claim({**runs, "cnn_dropout": None}) == found
    adversarial = found["Adversarial examples reach p(target) ≥ 0.95"]
    assert adversarial.evidence == "missing: adversarial"


def test_a_missing_curve_or_summary_field_is_not_checked_with_its_reason():
    no_curves = Run(Path("mlp"), {}, [], summary())
    incomplete = summary()
    del incomplete["min_test_loss"]
    runs = {"mlp": no_curves, "cnn": run(summary(final_test=0.301)), "cnn_dropout": None}
    found = verdicts.check_claims(runs, adversarial=None)
    assert found[0].status == verdicts.NOT_CHECKED_INCOMPLETE
    assert found[0].evidence == "mlp: metrics.jsonl has no train_loss"
    assert found[4].status == f"{verdicts.FAILS} (1 run)"  # cnn's test loss rose 0.3 % only
    found = verdicts.check_claims({"cnn": run(incomplete)}, adversarial=None)
    assert found[4].status == verdicts.NOT_CHECKED_INCOMPLETE
    assert found[4].evidence == "summary.json has no min_test_loss"


@pytest.mark.parametrize("bug", [KeyError, TypeError, ValueError, IndexError, ZeroDivisionError])
def test_a_bug_in_a_claim_check_raises(monkeypatch, bug):
    def broken(*args, **kwargs):
        raise bug("a bug in the check")

    monkeypatch.setattr(claims, "check_dropout_gap", broken)
    runs = {"mlp": run(summary()), "mlp_dropout": dropout_run()}
    with pytest.raises(bug, match="a bug in the check"):
        verdicts.check_claims(runs, ADVERSARIAL)


def test_a_bug_reading_a_curve_raises(monkeypatch):
    monkeypatch.setattr(claims, "value_at", lambda curve, step: curve.values[len(curve.values)])
    with pytest.raises(IndexError):
        verdicts.check_claims({"mlp": run(summary())}, None)


# --------------------------------------------------------------------------- replicas


def replicated_run(per_replica: list[dict], name: str, dropout_rate: float = 0.0) -> Run:
    """A finished run of len(per_replica) replicas: summary.json's per-replica list, and
    each replica's records (the same falling train / V-shaped test loss) in metrics.jsonl."""
    history = [
        {"step": int(step), "replica": k, "train_loss": float(a), "test_loss": float(b)}
        for step, a, b in zip(STEPS, FALLING, V_LOSS, strict=True)
        for k in range(len(per_replica))
    ]
    s = {"dropout_rate": dropout_rate, "num_replicas": len(per_replica), "replicas": per_replica}
    return Run(Path(name), {"num_replicas": len(per_replica)}, history, s)


def test_a_claim_holding_in_some_replicas_says_k_of_r_with_the_effects_interval():
    base = replicated_run([summary(final_test=0.40, final_train=0.15)] * 3, "mlp")
    # Gaps with dropout 0.05, 0.10, 0.245: changes -0.20, -0.15, -0.005 (the last under 0.01).
    drop = replicated_run(
        [summary(final_test=0.33, final_train=t) for t in (0.28, 0.23, 0.085)], "mlp_dropout", 0.25
    )
    verdict = verdicts_by_claim({"mlp": base, "mlp_dropout": drop})[
        "Dropout 0.25 reduces the MLP's final train–test loss gap"
    ]
    assert verdict.status == "undecided (2 of 3 hold)" and (verdict.held, verdict.total) == (2, 3)
    changes = np.array([-0.20, -0.15, -0.005])
    half = 4.302652729911275 * changes.std(ddof=1) / np.sqrt(3)  # t(0.975, 2 dof)
    low, high = changes.mean() - half, changes.mean() + half
    assert f"by {changes.mean():+.4f} [{low:+.4f}, {high:+.4f}] nats" in verdict.evidence
    assert "over 3 replicas" in verdict.evidence


def test_replica_k_is_paired_with_replica_k_and_all_or_none_read_as_such():
    base = replicated_run([summary(final_test=0.40, final_train=0.15)] * 2, "mlp")
    same = replicated_run([summary(final_test=0.40, final_train=0.15)] * 2, "mlp_dropout", 0.25)
    better = replicated_run([summary(final_test=0.2, final_train=0.15)] * 2, "mlp_dropout", 0.25)
    claim = "Dropout lowers the MLP's final test loss"
    status = verdicts_by_claim({"mlp": base, "mlp_dropout": same})[claim].status
    assert status == "does not hold (0 of 2 hold)"
    verdict = verdicts_by_claim({"mlp": base, "mlp_dropout": better})[claim]
    assert (
        verdict.status == "holds (2 of 2 hold)" and "-0.2000 [-0.2000, -0.2000]" in verdict.evidence
    )


def test_runs_whose_members_have_other_seeds_are_not_compared():
    base = replicated_run([summary(seed=s) for s in (0, 11)], "mlp")
    drop = replicated_run([summary(final_test=0.2, seed=s) for s in (0, 12)], "mlp_dropout", 0.25)
    verdict = verdicts_by_claim({"mlp": base, "mlp_dropout": drop})[
        "Dropout lowers the MLP's final test loss"
    ]
    assert verdict.status == "not checked (members do not pair)"
    assert verdict.evidence.startswith("member 1 does not pair (mlp: seed 11, None steps;")
    assert "mlp_dropout: seed 12" in verdict.evidence and "\n" not in verdict.evidence


def test_curve_claims_read_each_replicas_own_curves():
    """Over-fitting needs replica k's train-loss curve: each replica's view reads its own."""
    base = replicated_run([summary()] * 3, "mlp")
    assert [r.curve("train_loss") is not None for r in base.members()] == [True] * 3
    verdict = verdicts_by_claim({"mlp": base})[
        "The MLP without dropout over-fits (train loss falls, test loss rises)"
    ]
    assert verdict.status == "holds (3 of 3 hold)"


# --------------------------------------------------------------------------- verdict words


def _checks(effects, region=(-math.inf, -0.01)):
    return [Check(e <= region[1], f"effect {e}", e, region) for e in effects]


def test_all_replicas_holding_with_an_interval_across_the_threshold_is_undecided():
    # The MLP's round-2 numbers: every replica lowers the loss, the mean's interval reaches +.
    verdict = verdicts.summarize_checks("c", _checks([-0.0395, -0.012, -0.011]), "by", "nats")
    assert verdict.status.startswith("undecided (3 of 3 hold)")
    stats = replicas.statistics([-0.0395, -0.012, -0.011])
    assert "straddles -0.0100: not distinguishable at R = 3" in verdict.evidence
    needed = verdicts.replicas_needed(stats, (-math.inf, -0.01))
    assert f"about {needed} replicas would decide it" in verdict.evidence

    # The smallest n whose interval at this mean and spread clears -0.01, and not n - 1.
    def half(n):
        return replicas.t_quantile(0.95, n - 1) * stats["std"] / math.sqrt(n)

    distance = abs(stats["mean"] + 0.01)
    assert half(needed) < distance <= half(needed - 1)


def test_an_interval_inside_the_region_holds_and_one_outside_does_not():
    holds = verdicts.summarize_checks("c", _checks([-0.05, -0.06, -0.055]), "by", "nats")
    assert (
        holds.status == "holds (3 of 3 hold)" and "clears the threshold -0.0100" in holds.evidence
    )
    fails = verdicts.summarize_checks("c", _checks([0.02, 0.03, 0.025]), "by", "nats")
    assert fails.status == "does not hold (0 of 3 hold)"
    assert "wrong side of -0.0100" in fails.evidence
    # A two-sided region: "about the same" within +-1 point.
    same = verdicts.summarize_checks(
        "c", _checks([0.001, -0.002, 0.0], (-0.01, 0.01)), "by", "points"
    )
    assert same.status == "holds (3 of 3 hold)"


def test_decide_reads_the_interval_against_the_region():
    assert verdicts.decide((-0.05, -0.02), (-math.inf, -0.01)) == verdicts.HOLDS
    assert verdicts.decide((-0.05, 0.002), (-math.inf, -0.01)) == verdicts.UNDECIDED
    assert verdicts.decide((0.0, 0.1), (-math.inf, -0.01)) == verdicts.FAILS
    assert verdicts.decide((0.005, 0.015), (0.0, 0.02)) == verdicts.HOLDS
    assert verdicts.decide((-0.005, 0.015), (0.0, 0.02)) == verdicts.UNDECIDED


# --------------------------------------------------------------------------- attack noise


def attack(median_l1, success=1.0, seed=0, method="minl1"):
    """A fabricated attack summary.json of one replica."""
    result = {"median_l1": median_l1, "success_rate": success}
    return {"methods": {method: result}, "seed": seed, "num_images": 200, "slow_images": 200}


def attack_verdicts(base, dropout):
    found = verdicts.check_claims({}, None, {"cnn": base, "cnn_dropout": dropout})
    return {v.claim.split("(")[1].split(";")[0]: v for v in found if "ℓ1 noise" in v.claim}


def test_attack_noise_claim_pairs_replica_k_and_reads_the_relative_change_interval():
    base = [attack(5.0), attack(5.2), attack(4.8)]
    up = attack_verdicts(base, [attack(5.5), attack(5.6), attack(5.4)])["minl1"]
    assert up.status == "holds (3 of 3 hold)" and (up.held, up.total) == (3, 3)
    assert "dropout changes the median ℓ1 by +10.1% [+4.1%, +16.0%]" in up.evidence
    assert "median L1 5 without dropout, 5.5 with (+10.0%)" in up.evidence
    mixed = attack_verdicts(base, [attack(5.5), attack(5.3), attack(4.7)])["minl1"]
    assert mixed.status == "undecided (2 of 3 hold)"
    down = attack_verdicts(base, [attack(4.0), attack(4.1), attack(3.9)])["minl1"]
    assert down.status == "does not hold (0 of 3 hold)"
    # the exercise's rule has no result in these summaries
    assert attack_verdicts(base, base)["exercise"].status == verdicts.NOT_CHECKED_INCOMPLETE


def test_attack_noise_claim_without_the_attacks_or_on_other_images_is_not_checked():
    (v,) = [v for v in verdicts.check_claims({}, None) if "minl1" in v.claim]
    assert v.status == verdicts.NOT_CHECKED_MISSING_RUN and "make study" in v.evidence
    other = attack_verdicts([attack(5.0)], [attack(5.0, seed=1)])["minl1"]
    assert other.status == verdicts.NOT_CHECKED_INCOMPLETE
    assert "attacked on different images" in other.evidence
