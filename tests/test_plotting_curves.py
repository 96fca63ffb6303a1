"""Tests of fmnist_jax.plotting.curves (figures 2–6, TensorBoard smoothing) and of the figures'
command line `python -m fmnist_jax.plotting`, on run directories written as plain files."""

import math
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest

from fmnist_jax import rundir, smoothing
from fmnist_jax.errors import RunError
from fmnist_jax.plotting import curves
from tests.conftest import REPO

STEPS = [10, 20, 30, 40, 50, 60]
STEPS_PER_EPOCH = 20
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_run(workdir, loss_offset=0.0, accuracy=True, dropout_rate=0.0, summary=True):
    """A tiny fake run as the train loop leaves it: config.json, six evaluation records in
    metrics.jsonl and (when `summary`) summary.json."""
    workdir.mkdir(parents=True)
    rundir.write_config(workdir, {"batch_size": 32, "dropout_rate": dropout_rate})
    for i, step in enumerate(STEPS):
        record = {"step": step, "replica": 0, "epoch": step / STEPS_PER_EPOCH}
        for collection, shift in (("train", 0.0), ("test", 0.1)):
            record[f"{collection}_loss"] = 1.0 / (i + 1) + shift + loss_offset
            if accuracy:
                record[f"{collection}_accuracy"] = 0.5 + 0.05 * i - shift
        rundir.append_record(workdir, record)
    if summary:
        fields = {"name": workdir.name, "dropout_rate": dropout_rate, "steps_per_epoch": 20}
        rundir.write_summary(workdir, fields)


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    """runs/ with linreg, mlp, mlp_dropout and a cnn with no evaluation yet; cnn_dropout missing."""
    root = tmp_path_factory.mktemp("runs")
    write_run(root / "linreg", accuracy=False)
    write_run(root / "mlp")
    write_run(root / "mlp_dropout", loss_offset=0.05, dropout_rate=0.25)
    (root / "cnn").mkdir()
    rundir.write_config(root / "cnn", {"batch_size": 32})
    return root


# --------------------------------------------------------------------------- smoothing


def test_smoothing_matches_hand_computed_values():
    # w = 0.6: last = 0.4, 1.04, 1.824; debias by 0.4, 0.64, 0.784.
    smoothed = smoothing.tensorboard_smooth([1.0, 2.0, 3.0], 0.6)
    np.testing.assert_allclose(smoothed, [1.0, 1.625, 1.824 / 0.784])


def test_smoothing_first_point_is_debiased_to_the_raw_value():
    # Without debiasing the first point would be (1 - w) * v = 1.6 instead of 4.
    assert smoothing.tensorboard_smooth([4.0, 0.0], 0.6)[0] == pytest.approx(4.0)
    assert smoothing.tensorboard_smooth([4.0, 0.0], 0.6)[1] == pytest.approx(0.96 / 0.64)


def test_smoothing_passes_nan_through_and_skips_it_in_the_average():
    smoothed = smoothing.tensorboard_smooth([1.0, math.nan, 3.0, math.inf], 0.6)
    assert smoothed[0] == pytest.approx(1.0)
    assert math.isnan(smoothed[1])
    # Only two finite values so far: last = 0.4 * 0.6 + 0.4 * 3 = 1.44, debias 1 - 0.36.
    assert smoothed[2] == pytest.approx(1.44 / 0.64)
    assert smoothed[3] == math.inf


def test_smoothing_clamps_the_weight_and_keeps_a_constant_series():
    values = [3.0, 1.0, 2.0]
    np.testing.assert_allclose(smoothing.tensorboard_smooth(values, 0.0), values)
    np.testing.assert_allclose(smoothing.tensorboard_smooth(values, -2.0), values)  # clamped to 0
    # TensorBoard's weight 1 never moves off its start at 0 (and does not debias).
    np.testing.assert_allclose(smoothing.tensorboard_smooth(values, 1.5), [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(smoothing.tensorboard_smooth([0.3] * 4, 0.9), [0.3] * 4)
    assert smoothing.tensorboard_smooth([], 0.6).size == 0


# --------------------------------------------------------------------------- reading


def test_load_run_reads_curves_summary_and_config(runs_dir):
    run = rundir.read_run(runs_dir / "mlp")
    np.testing.assert_array_equal(run.curve("test_accuracy").steps, STEPS)
    np.testing.assert_allclose(run.curve("train_loss").values[:2], [1.0, 0.5], rtol=1e-6)
    assert run.curve("train_nonexistent") is None
    assert curves.steps_per_epoch(run) == STEPS_PER_EPOCH
    assert curves.dropout_rate(rundir.read_run(runs_dir / "mlp_dropout")) == 0.25


def test_an_unfinished_run_takes_steps_per_epoch_and_dropout_from_records_and_config(tmp_path):
    write_run(tmp_path / "running", dropout_rate=0.5, summary=False)
    run = rundir.read_run(tmp_path / "running")
    assert run.summary is None
    assert curves.steps_per_epoch(run) == STEPS_PER_EPOCH
    assert curves.dropout_rate(run) == 0.5


def test_a_step_logged_again_after_a_resume_is_drawn_once_with_its_later_value(tmp_path):
    workdir = tmp_path / "resumed"
    workdir.mkdir()
    rundir.write_config(workdir, {})
    for step, loss in ((10, 1.0), (20, 0.8), (20, 0.5), (30, 0.4)):  # 20 again after a resume
        rundir.append_record(workdir, {"step": step, "replica": 0, "train_loss": loss})
    fig = curves.plot_loss(rundir.read_run(workdir), smoothing=0.0)
    raw = fig.get_axes()[0].get_lines()[0]
    np.testing.assert_array_equal(raw.get_xdata(), [10, 20, 30])
    np.testing.assert_allclose(raw.get_ydata(), [1.0, 0.5, 0.4])


def test_load_run_says_clearly_what_is_wrong(runs_dir):
    with pytest.raises(RunError, match="missing"):
        rundir.read_run(runs_dir / "cnn_dropout")
    with pytest.raises(RunError, match="no evaluation in .*metrics.jsonl yet"):
        curves.load_plottable(runs_dir / "cnn")


# --------------------------------------------------------------------------- figures


def test_accuracy_and_loss_figure_has_raw_and_smoothed_train_and_test(runs_dir):
    fig = curves.plot_accuracy_and_loss([rundir.read_run(runs_dir / "mlp")], "MLP")
    axes = fig.get_axes()
    assert [ax.get_ylabel() for ax in axes] == ["accuracy", "loss"]
    for ax in axes:
        assert len(ax.get_lines()) == 4  # (raw, smoothed) x (train, test)
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["train", "test"]
        raw, smoothed = ax.get_lines()[:2]
        assert raw.get_alpha() == curves.RAW_ALPHA and smoothed.get_alpha() is None
    loss_smoothed = axes[1].get_lines()[1].get_ydata()
    np.testing.assert_allclose(loss_smoothed[0], 1.0, rtol=1e-6)  # debiased start


def test_dropout_figure_has_four_curves_in_the_shared_colours(runs_dir):
    runs = [rundir.read_run(runs_dir / n) for n in ("mlp", "mlp_dropout")]
    fig = curves.plot_accuracy_and_loss(runs, "MLP, dropout")
    for ax in fig.get_axes():
        assert len(ax.get_lines()) == 8
        colours = [line.get_color() for line in ax.get_lines()[1::2]]
        assert colours == ["tab:blue", "tab:orange", "tab:green", "tab:pink"]
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert labels[2:] == ["train, dropout 0.25", "test, dropout 0.25"]


def test_linreg_figure_is_per_epoch(runs_dir):
    fig = curves.plot_loss(rundir.read_run(runs_dir / "linreg"))
    (ax,) = fig.get_axes()
    assert len(ax.get_lines()) == 4
    assert ax.get_xlabel() == "epoch"
    np.testing.assert_allclose(ax.get_lines()[0].get_xdata(), np.array(STEPS) / STEPS_PER_EPOCH)


def test_make_figures_writes_pngs_and_skips_runs_missing_or_without_evaluations(
    runs_dir, tmp_path, capsys
):
    written = curves.make_figures(runs_dir, tmp_path, smoothing=0.3)
    assert sorted(written) == ["linreg", "mlp", "mlp_dropout"]
    names = sorted(p.name for p in tmp_path.glob("*.png"))
    assert names == ["fig2_linreg_loss.png", "fig3_mlp.png", "fig5_mlp_dropout.png"]
    assert all((tmp_path / n).read_bytes()[:8] == PNG_MAGIC for n in names)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line]
    assert len(warnings) == 2
    assert warnings[0].startswith("warning: skipping fig4_cnn.png")
    assert "no evaluation in" in warnings[0]
    assert "fig6_cnn_dropout.png" in warnings[1] and "missing" in warnings[1]


# --------------------------------------------------------------------------- command line


def figures_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "fmnist_jax.plotting", *args],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_help_exits_0_and_shows_the_flags():
    result = figures_cli("--help")
    assert result.returncode == 0, result.stderr
    assert "python -m fmnist_jax.plotting --runs runs --out figures" in result.stdout
    assert "--smoothing" in result.stdout


def test_cli_draws_the_figures_it_can(runs_dir, tmp_path):
    result = figures_cli("--runs", str(runs_dir), "--out", str(tmp_path), "--smoothing", "0.3")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"wrote {tmp_path / name}"
        for name in ("fig2_linreg_loss.png", "fig3_mlp.png", "fig5_mlp_dropout.png")
    ]


def test_cli_exits_1_when_no_figure_can_be_drawn_and_2_on_a_bad_flag(tmp_path):
    result = figures_cli("--runs", str(tmp_path / "none"), "--out", str(tmp_path / "figs"))
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1].startswith("error: no figure drawn")
    result = figures_cli("--smoothing", "2")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: flag --smoothing=2: 2.0 is not a number in the range [0.0, 1.0]"
    ]
