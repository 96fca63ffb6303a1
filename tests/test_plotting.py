"""Tests of fmnist_jax.plotting: TensorBoard smoothing, reading event files, the figures."""

import json
import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
from clu import metric_writers

from fmnist_jax import plotting

STEPS = [10, 20, 30, 40, 50, 60]
STEPS_PER_EPOCH = 20


def write_scalars(workdir, collection, rows):
    """Writes {step: {tag: value}} into workdir/collection with a CLU writer, as train.py does."""
    writer = metric_writers.create_default_writer(
        str(workdir), collection=collection, asynchronous=False
    )
    for step, scalars in rows.items():
        writer.write_scalars(step, scalars)
    writer.flush()
    writer.close()


def write_run(workdir, loss_offset=0.0, accuracy=True, dropout_rate=0.0):
    """A tiny fake run: six evaluations, summary.json and config.json."""
    for collection, shift in (("train", 0.0), ("test", 0.1)):
        rows = {}
        for i, step in enumerate(STEPS):
            rows[step] = {"loss": 1.0 / (i + 1) + shift + loss_offset}
            if accuracy:
                rows[step]["accuracy"] = 0.5 + 0.05 * i - shift
        write_scalars(workdir, collection, rows)
    summary = {"name": workdir.name, "dropout_rate": dropout_rate, "steps_per_epoch": 20}
    (workdir / "summary.json").write_text(json.dumps(summary))
    (workdir / "config.json").write_text(json.dumps({"batch_size": 32}))


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    """runs/ with linreg, mlp, mlp_dropout and an empty cnn folder; cnn_dropout missing."""
    root = tmp_path_factory.mktemp("runs")
    write_run(root / "linreg", accuracy=False)
    write_run(root / "mlp")
    write_run(root / "mlp_dropout", loss_offset=0.05, dropout_rate=0.25)
    (root / "cnn").mkdir()
    return root


# --------------------------------------------------------------------------- smoothing


def test_smoothing_matches_hand_computed_values():
    # w = 0.6: last = 0.4, 1.04, 1.824; debias by 0.4, 0.64, 0.784.
    smoothed = plotting.tensorboard_smooth([1.0, 2.0, 3.0], 0.6)
    np.testing.assert_allclose(smoothed, [1.0, 1.625, 1.824 / 0.784])


def test_smoothing_first_point_is_debiased_to_the_raw_value():
    # Without debiasing the first point would be (1 - w) * v = 1.6 instead of 4.
    assert plotting.tensorboard_smooth([4.0, 0.0], 0.6)[0] == pytest.approx(4.0)
    assert plotting.tensorboard_smooth([4.0, 0.0], 0.6)[1] == pytest.approx(0.96 / 0.64)


def test_smoothing_passes_nan_through_and_skips_it_in_the_average():
    smoothed = plotting.tensorboard_smooth([1.0, math.nan, 3.0, math.inf], 0.6)
    assert smoothed[0] == pytest.approx(1.0)
    assert math.isnan(smoothed[1])
    # Only two finite values so far: last = 0.4 * 0.6 + 0.4 * 3 = 1.44, debias 1 - 0.36.
    assert smoothed[2] == pytest.approx(1.44 / 0.64)
    assert smoothed[3] == math.inf


def test_smoothing_edge_weights_and_constant_series():
    values = [3.0, 1.0, 2.0]
    np.testing.assert_allclose(plotting.tensorboard_smooth(values, 0.0), values)
    np.testing.assert_allclose(plotting.tensorboard_smooth(values, -2.0), values)  # clamped to 0
    # TensorBoard's weight 1 never moves off its start at 0 (and does not debias).
    np.testing.assert_allclose(plotting.tensorboard_smooth(values, 1.5), [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(plotting.tensorboard_smooth([0.3] * 4, 0.9), [0.3] * 4)
    assert plotting.tensorboard_smooth([], 0.6).size == 0


# --------------------------------------------------------------------------- reading


def test_dedupe_keeps_the_last_written_value_per_step():
    curve = plotting.dedupe_by_step([(2, 5.0, 0.7), (1, 1.0, 0.9), (2, 3.0, 0.8), (3, 6.0, 0.6)])
    np.testing.assert_array_equal(curve.steps, [1, 2, 3])
    np.testing.assert_allclose(curve.values, [0.9, 0.7, 0.6])


def test_read_scalars_dedupes_a_step_logged_again_after_a_resume(tmp_path):
    write_scalars(tmp_path, "train", {10: {"loss": 1.0}, 20: {"loss": 0.8}})
    write_scalars(tmp_path, "train", {20: {"loss": 0.5}, 30: {"loss": 0.4}})  # resumed run
    curves = plotting.read_scalars(tmp_path / "train")
    assert len(plotting.event_files(tmp_path / "train")) == 2
    np.testing.assert_array_equal(curves["loss"].steps, [10, 20, 30])
    np.testing.assert_allclose(curves["loss"].values, [1.0, 0.5, 0.4])


def test_load_run_reads_curves_summary_and_config(runs_dir):
    run = plotting.load_run(runs_dir / "mlp")
    np.testing.assert_array_equal(run.curve("test", "accuracy").steps, STEPS)
    np.testing.assert_allclose(run.curve("train", "loss").values[:2], [1.0, 0.5], rtol=1e-6)
    assert run.curve("train", "nonexistent") is None
    assert plotting.steps_per_epoch(run) == STEPS_PER_EPOCH
    assert plotting.dropout_rate(plotting.load_run(runs_dir / "mlp_dropout")) == 0.25


def test_load_run_says_clearly_what_is_wrong(runs_dir):
    with pytest.raises(plotting.RunError, match="missing"):
        plotting.load_run(runs_dir / "cnn_dropout")
    with pytest.raises(plotting.RunError, match="no TensorBoard event files"):
        plotting.load_run(runs_dir / "cnn")


# --------------------------------------------------------------------------- figures


def test_accuracy_and_loss_figure_has_raw_and_smoothed_train_and_test(runs_dir):
    fig = plotting.plot_accuracy_and_loss([plotting.load_run(runs_dir / "mlp")], "MLP")
    axes = fig.get_axes()
    assert [ax.get_ylabel() for ax in axes] == ["accuracy", "loss"]
    for ax in axes:
        assert len(ax.get_lines()) == 4  # (raw, smoothed) x (train, test)
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["train", "test"]
        raw, smoothed = ax.get_lines()[:2]
        assert raw.get_alpha() == plotting.RAW_ALPHA and smoothed.get_alpha() is None
    loss_smoothed = axes[1].get_lines()[1].get_ydata()
    np.testing.assert_allclose(loss_smoothed[0], 1.0, rtol=1e-6)  # debiased start


def test_dropout_figure_has_four_curves_in_the_shared_colours(runs_dir):
    runs = [plotting.load_run(runs_dir / n) for n in ("mlp", "mlp_dropout")]
    fig = plotting.plot_accuracy_and_loss(runs, "MLP, dropout")
    for ax in fig.get_axes():
        assert len(ax.get_lines()) == 8
        colours = [line.get_color() for line in ax.get_lines()[1::2]]
        assert colours == ["tab:blue", "tab:orange", "tab:green", "tab:pink"]
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert labels[2:] == ["train, dropout 0.25", "test, dropout 0.25"]


def test_linreg_figure_is_per_epoch(runs_dir):
    fig = plotting.plot_linreg_loss(plotting.load_run(runs_dir / "linreg"))
    (ax,) = fig.get_axes()
    assert len(ax.get_lines()) == 4
    assert ax.get_xlabel() == "epoch"
    np.testing.assert_allclose(ax.get_lines()[0].get_xdata(), np.array(STEPS) / STEPS_PER_EPOCH)


def test_make_figures_writes_pngs_and_skips_missing_runs(runs_dir, tmp_path, capsys):
    assert (
        plotting.main(["--runs", str(runs_dir), "--out", str(tmp_path), "--smoothing", "0.3"]) == 0
    )
    written = sorted(p.name for p in tmp_path.glob("*.png"))
    assert written == ["fig2_linreg_loss.png", "fig3_mlp.png", "fig5_mlp_dropout.png"]
    assert all((tmp_path / n).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for n in written)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line]
    assert len(warnings) == 2
    assert warnings[0].startswith("warning: skipping fig4_cnn.png")
    assert "no TensorBoard event files" in warnings[0]
    assert "fig6_cnn_dropout.png" in warnings[1]
