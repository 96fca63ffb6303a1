"""Tests of fmnist_jax.report: the claim checks on fabricated logs, and the markdown report."""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import numpy as np
import pytest

from fmnist_jax import report
from fmnist_jax.plotting import Curve

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


def run_data(s, train=FALLING, test=V_LOSS):
    return report.RunData(s, {"train/loss": Curve(STEPS, train), "test/loss": Curve(STEPS, test)})


# --------------------------------------------------------------------------- single claims


def test_overfitting_holds_when_test_loss_rises_while_train_loss_falls():
    holds, evidence = report.check_overfits(summary(), Curve(STEPS, FALLING))
    assert holds
    # Train loss at the test minimum (step 10,000, index 9) is 0.8 - 9 * 0.7 / 19.
    assert "+33.3%" in evidence and "0.4684 → 0.1500" in evidence


def test_overfitting_does_not_hold_for_a_small_rise_or_a_train_loss_that_stopped_falling():
    flat = summary(final_test=0.31)  # +3.3 %: under the 5 % margin
    holds, evidence = report.check_overfits(flat, Curve(STEPS, FALLING))
    assert not holds and "+3.3%" in evidence
    stalled = summary(final_train=0.5)  # train loss ends above its value at the test minimum
    assert not report.check_overfits(stalled, Curve(STEPS, FALLING))[0]


def test_turn_step_is_found_on_the_smoothed_curve():
    noisy = np.array([1.0, 0.8, 0.3, 0.9, 0.6, 0.55, 0.5, 0.7, 0.8])
    steps = np.arange(1, 10) * 1000
    # The raw minimum is a one-eval dip at step 3,000; the smoothed one is at 7,000.
    assert report.loss_turn_step(Curve(steps, noisy)) == 7000
    assert report.loss_turn_step(Curve(steps, noisy), smoothing=0.0) == 3000


def test_turn_step_near_10000_holds_and_far_or_absent_does_not():
    holds, evidence = report.check_turn_step(Curve(STEPS, V_LOSS), steps_per_epoch=1000)
    assert holds and "lowest at step 11,000 (epoch 11.0) of 20,000" in evidence
    early = np.abs(STEPS - 3000) / 10_000 + 0.3
    assert not report.check_turn_step(Curve(STEPS, early))[0]
    holds, evidence = report.check_turn_step(Curve(STEPS, FALLING))  # never turns
    assert not holds and "lowest at step 20,000 of 20,000" in evidence


def test_dropout_gap_and_test_loss():
    base = summary(final_test=0.40, final_train=0.15)  # gap 0.25
    better = summary(final_test=0.33, final_train=0.28, dropout_rate=0.25)  # gap 0.05
    holds, evidence = report.check_dropout_gap(base, better)
    assert holds and "0.2500 without dropout, 0.0500 with dropout 0.25" in evidence
    assert report.check_dropout_test_loss(base, better)[0]
    barely = summary(final_test=0.395, final_train=0.15)  # gap down by 0.005 < 0.01
    assert not report.check_dropout_gap(base, barely)[0]
    assert not report.check_dropout_test_loss(base, barely)[0]


ADVERSARIAL = {
    "methods": {
        "descent": {"success_rate": 0.8, "mean_p_target": 0.97, "median_l1": 12.5, "note": "x"},
        "fgsm": {"success_rate": 0.2, "median_steps": 40},
    }
}


def test_adversarial_claim_reads_the_default_method():
    holds, evidence = report.check_adversarial(ADVERSARIAL)
    assert holds
    assert "'descent': success rate 80.0%" in evidence and "mean p(target) 0.97" in evidence
    assert not report.check_adversarial({**ADVERSARIAL, "default_method": "fgsm"})[0]


# --------------------------------------------------------------------------- all claims


def test_check_claims_marks_missing_runs_not_checked():
    base = run_data(summary())
    dropout = run_data(summary(final_test=0.33, final_train=0.28, dropout_rate=0.25))
    runs = {"mlp": base, "mlp_dropout": dropout, "cnn": run_data(summary()), "cnn_dropout": None}
    verdicts = {v.claim: v for v in report.check_claims(runs, adversarial=None)}
    statuses = [v.status for v in verdicts.values()]
    assert statuses == ["holds"] * 5 + ["not checked (run missing)"] * 3
    gap = verdicts["Dropout 0.25 reduces the ConvNet's final train–test loss gap"]
    assert gap.evidence == "missing: cnn_dropout"


def test_check_claims_without_event_files_is_not_checked():
    runs = {"mlp": report.RunData(summary(), {}), "cnn": run_data(summary(final_test=0.301))}
    verdicts = report.check_claims(runs, adversarial={"methods": {}})
    assert verdicts[0].status == "not checked (incomplete data)"
    assert "no train/loss in the event files" in verdicts[0].evidence
    assert verdicts[3].status == "does not hold"  # cnn's test loss rose by 0.3 % only
    assert verdicts[-1].status == "not checked (incomplete data)"  # no methods listed


# --------------------------------------------------------------------------- the report


def write_summary(run_dir, **fields):
    run_dir.mkdir(parents=True)
    data = {"source": "idx", "location": "/data/fmnist", "num_train": 60000, "num_test": 10000}
    full = {
        "model": "mlp",
        "dropout_rate": 0.0,
        "steps": 20000,
        "steps_per_epoch": 938,
        "final_test_accuracy": 0.885,
        "best_test_accuracy": 0.893,
        "best_test_accuracy_step": 8000,
        "backend": "cpu",
        "device_kind": "cpu",
        "device_count": 1,
        "wall_time_s": 321.0,
        "images_per_sec": 900.0,
        "data": data,
        "versions": {"jax": "0.10.2", "flax": "0.12.8"},
        **summary(),
        **fields,
    }
    (run_dir / "summary.json").write_text(json.dumps(full))


def write_events(run_dir, train, test):
    from clu import metric_writers

    for collection, values in (("train", train), ("test", test)):
        w = metric_writers.create_default_writer(
            str(run_dir), collection=collection, asynchronous=False
        )
        for step, value in zip(STEPS, values, strict=True):
            w.write_scalars(int(step), {"loss": float(value), "accuracy": 0.9})
        w.close()


@pytest.fixture
def report_text(tmp_path):
    runs, figures = tmp_path / "runs", tmp_path / "figures"
    write_summary(runs / "mlp")
    write_events(runs / "mlp", FALLING, V_LOSS)
    write_summary(
        runs / "mlp_dropout", final_test_loss=0.33, final_train_loss=0.28, dropout_rate=0.25
    )
    write_summary(runs / "cnn", model="cnn")
    write_events(runs / "cnn", FALLING, V_LOSS)
    (runs / "adversarial").mkdir()
    (runs / "adversarial" / "summary.json").write_text(json.dumps(ADVERSARIAL))
    (runs / "adversarial" / "figure.png").write_bytes(b"png")
    figures.mkdir()
    (figures / "fig3_mlp.png").write_bytes(b"png")
    out = report.write_report(runs, figures, tmp_path / "docs" / "REPORT.md")
    return out.read_text()


def test_report_links_figures_relative_to_itself(report_text):
    assert "![Figure 3: Multi-Layer-Perceptron" in report_text
    assert "](../figures/fig3_mlp.png)" in report_text
    assert "](../runs/adversarial/figure.png)" in report_text
    assert "fig4_cnn.png" not in report_text  # not drawn: a note instead of a broken link
    assert "not drawn yet: needs runs cnn, then `make figures`" in report_text


def test_report_has_the_results_table_and_provenance(report_text):
    assert "| run | model | dropout | steps | final test acc |" in report_text
    row = "| mlp | mlp | 0 | 20,000 | 88.50% | 89.30% (step 8,000) | 0.4000 | 0.3000 (step 10,000)"
    assert row + " | 0.1500 | 0.2500 |" in report_text
    assert "non-official split: per class the first 1,000 of 7,000 are test" in report_text
    assert "60,000 train / 10,000 test" in report_text
    assert "| cpu | cpu × 1 | 321 | 900 |" in report_text and "jax 0.10.2" in report_text
    assert "| descent | 0.8 | 0.97 | 12.5 | — |" in report_text


def test_report_gives_each_claim_a_verdict(report_text):
    lines = {line.split(" | ")[0]: line for line in report_text.splitlines() if "| **" in line}
    assert (
        "**holds**"
        in lines["| The MLP without dropout over-fits (train loss falls, test loss rises)"]
    )
    turn = lines["| The ConvNet's test loss turns after about 10,000 iterations"]
    assert "**holds**" in turn and "step 11,000 (epoch 11.7)" in turn
    assert "**holds**" in lines["| Dropout 0.25 reduces the MLP's final train–test loss gap"]
    cnn_gap = lines["| Dropout 0.25 reduces the ConvNet's final train–test loss gap"]
    assert "**not checked (run missing)**" in cnn_gap and "missing: cnn_dropout" in cnn_gap
    assert "**holds**" in lines["| Adversarial examples reach p(target) ≥ 0.95"]
