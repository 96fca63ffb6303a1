"""The one train loop: every experiment end to end on tiny configs, resume, accuracy on the
offline copy, linear regression against least squares, 8 devices against 1, and the faults it
handles (non-finite loss, unreadable or foreign checkpoints, a workdir of another run)."""

import json
import re
import subprocess
from types import SimpleNamespace

import jax
import numpy as np
import pytest

from fmnist_jax import checkpoints, data, rundir, steps, train
from fmnist_jax import config as config_lib
from fmnist_jax.errors import ConfigError, RunError, TrainingError, UsageError
from tests.conftest import (
    assert_curves_close,
    assert_one_clear_line,
    metrics_lines,
    train_command,
    train_on_devices,
)

EXPERIMENTS = ["linreg", "mlp", "mlp_dropout", "cnn", "cnn_dropout"]


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """Each experiment's `test` variant, trained once for this module."""
    root = tmp_path_factory.mktemp("runs")
    for name in EXPERIMENTS:
        train.train_and_evaluate(config_lib.load_experiment(name, "test"), root / name)
    return root


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_trains_and_writes_its_files(tiny_runs, name):
    workdir = tiny_runs / name
    history = metrics_lines(workdir)
    assert [r["step"] for r in history] == [8, 16, 24]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    for sub in ("train", "test"):
        assert list((workdir / sub).glob("events.out.tfevents.*")), f"no events in {sub}/"
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["name"] == name and saved["num_train_steps"] == 24
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["steps"] == 24 and summary["name"] == name
    (results,) = summary["replicas"]
    assert summary["num_replicas"] == 1 and results["seed"] == 0
    assert results["final_test_loss"] == history[-1]["test_loss"]
    assert results["min_test_loss"] == min(r["test_loss"] for r in history)
    assert summary["statistics"]["final_test_loss"]["mean"] == results["final_test_loss"]
    assert summary["backend"] == jax.default_backend() and summary["device_count"] >= 1
    assert summary["data"]["source"] in ("synthetic", "linear_regression")
    if name != "linreg":
        assert results["best_test_accuracy"] == max(r["test_accuracy"] for r in history)


def test_event_files_hold_the_logged_scalars(tiny_runs):
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.util import tensor_util

    acc = event_accumulator.EventAccumulator(
        str(tiny_runs / "cnn" / "test"), size_guidance={"tensors": 0}
    )
    acc.Reload()
    losses = [float(tensor_util.make_ndarray(e.tensor_proto)) for e in acc.Tensors("loss")]
    expected = [r["test_loss"] for r in metrics_lines(tiny_runs / "cnn")]
    np.testing.assert_allclose(losses, expected, rtol=1e-6)
    assert [e.step for e in acc.Tensors("accuracy")] == [8, 16, 24]


def test_train_and_evaluate_returns_the_state_and_the_history(tmp_path):
    cfg = config_lib.load_experiment("mlp", "test")
    state, history = train.train_and_evaluate(cfg, tmp_path)
    assert int(state.step) == cfg.num_train_steps
    assert history == metrics_lines(tmp_path)


def test_checkpoints_and_load_trained(tiny_runs):
    workdir = tiny_runs / "cnn_dropout"
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [8, 16, 24]
    cfg, model, variables = checkpoints.load_trained(workdir)
    assert cfg.dropout_rate == 0.25 and list(variables) == ["params"]
    logits = model.apply(variables, np.zeros((2, 28, 28, 1), np.float32))
    assert logits.shape == (2, 10) and np.isfinite(logits).all()


def test_resume_continues_the_same_curves(tmp_path):
    cfg = config_lib.load_experiment("mlp_dropout", "test")
    straight = tmp_path / "straight"
    train.train_and_evaluate(cfg, straight)
    resumed = tmp_path / "resumed"
    cfg.num_train_steps = 16
    train.train_and_evaluate(cfg, resumed)
    cfg.num_train_steps = 24
    train.train_and_evaluate(cfg, resumed)
    assert json.loads((resumed / "summary.json").read_text())["resumed_from_step"] == 16
    assert metrics_lines(resumed) == metrics_lines(straight)


def test_same_seed_gives_identical_metrics(tmp_path):
    cfg = config_lib.load_experiment("cnn_dropout", "test")
    cfg.num_train_steps = 16
    for name in ("a", "b"):
        train.train_and_evaluate(cfg, tmp_path / name)
    assert metrics_lines(tmp_path / "a") == metrics_lines(tmp_path / "b")
    cfg.seed = 1
    train.train_and_evaluate(cfg, tmp_path / "c")
    assert metrics_lines(tmp_path / "a") != metrics_lines(tmp_path / "c")


def test_linear_regression_reaches_least_squares(tmp_path):
    cfg = config_lib.load_experiment("linreg", "test")
    cfg.learning_rate = 0.02  # the experiment's 1e-4 needs ~20k steps; same loop, faster here
    cfg.num_train_steps = 800
    cfg.eval_every_steps = cfg.checkpoint_every_steps = 400
    state, _ = train.train_and_evaluate(cfg, tmp_path / "lr")
    ds = data.load(cfg)
    x = np.c_[ds.train["inputs"], np.ones(len(ds.train["inputs"]))]
    solution, *_ = np.linalg.lstsq(x, ds.train["targets"], rcond=None)
    learned = np.r_[
        np.asarray(state.params["Dense_0"]["kernel"])[:, 0],
        np.asarray(state.params["Dense_0"]["bias"]),
    ]
    np.testing.assert_allclose(learned, solution, atol=0.03)


def test_convnet_on_the_offline_copy_passes_80_percent(offline_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(data.ENV_DATA_DIR, str(offline_dir))
    cfg = config_lib.load_experiment("cnn")
    cfg.num_train_steps = cfg.eval_every_steps = cfg.checkpoint_every_steps = 300
    train.train_and_evaluate(cfg, tmp_path / "cnn")
    summary = json.loads((tmp_path / "cnn" / "summary.json").read_text())
    assert summary["data"]["source"] == "idx"
    assert summary["replicas"][0]["final_test_accuracy"] > 0.80, summary


def test_eight_devices_match_one(tmp_path):
    one, eight = (train_on_devices(tmp_path / str(n), n, num_train_steps=16) for n in (1, 8))
    assert_curves_close(one, eight, rel=1e-4, abs=1e-5)


# --------------------------------------------------------------------------- faults


def test_batch_not_divisible_by_devices_is_refused():
    cfg = config_lib.load_experiment("cnn", "test")
    cfg.batch_size = 30
    with pytest.raises(ConfigError, match="not divisible by the 8 devices"):
        steps.check_divisible(cfg, SimpleNamespace(shape={"data": 8}))
    cfg.batch_size = 32
    steps.check_divisible(cfg, SimpleNamespace(shape={"data": 8}))


def test_workdir_of_another_model_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model": "cnn", "name": "cnn"}))
    cfg = config_lib.load_experiment("mlp", "test")
    with pytest.raises(RunError, match="another config .*model='cnn' there, 'mlp' here"):
        train.train_and_evaluate(cfg, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model"] == "cnn"


def _poisoned(dataset: data.Dataset) -> data.Dataset:
    inputs = dataset.train["inputs"].astype(np.float32)
    inputs[:] = np.nan
    return data.Dataset({**dataset.train, "inputs": inputs}, dataset.test, "poisoned", "test")


def test_non_finite_loss_stops_at_once_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = config_lib.load_experiment("mlp", "test")
    cfg.num_train_steps = 16
    train.train_and_evaluate(cfg, tmp_path)
    cfg.num_train_steps = 32
    with pytest.raises(TrainingError, match="became nan at step 17"):
        train.train_and_evaluate(cfg, tmp_path, dataset=_poisoned(data.load(cfg)))
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [8, 16]
    _, _, params = checkpoints.load_trained(tmp_path)
    assert all(np.isfinite(np.asarray(p)).all() for p in jax.tree.leaves(params))


def test_unreadable_latest_checkpoint_falls_back_to_an_older_one(tmp_path):
    cfg = config_lib.load_experiment("mlp", "test")
    cfg.num_train_steps = 16
    train.train_and_evaluate(cfg, tmp_path)
    (tmp_path / "checkpoints" / "24").mkdir()  # empty: counts as a step for orbax, but is junk
    cfg.num_train_steps = 24
    train.train_and_evaluate(cfg, tmp_path)
    assert json.loads((tmp_path / "summary.json").read_text())["resumed_from_step"] == 16
    assert (tmp_path / "checkpoints" / "24.incomplete").is_dir()
    assert (tmp_path / "checkpoints" / "24" / "_CHECKPOINT_METADATA").is_file()


def test_checkpoint_of_another_architecture_is_refused_when_loading(tmp_path):
    cfg = config_lib.load_experiment("cnn", "test")
    cfg.num_train_steps = 8
    train.train_and_evaluate(cfg, tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**saved, "model": "mlp"}))
    with pytest.raises(RunError, match="8 was written by another version of the code or model"):
        checkpoints.load_trained(tmp_path)
    assert checkpoints.finished_steps(tmp_path) == [8]  # reported, not renamed


def test_loading_a_workdir_without_checkpoints_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model": "cnn"}))
    with pytest.raises(RunError, match="no finished checkpoint here; train first"):
        checkpoints.load_trained(tmp_path)
    with pytest.raises(RunError, match="no config.json here"):
        checkpoints.load_trained(tmp_path / "nothing")


def test_profile_steps_write_a_trace_for_tensorboards_profile_plugin(tmp_path):
    cfg = config_lib.load_experiment("mlp", "test")
    cfg.profile_steps, cfg.profile_first_step = 3, 2
    train.train_and_evaluate(cfg, tmp_path)
    traces = list((tmp_path / "plugins" / "profile").glob("*/*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 1000
    with pytest.raises(ConfigError, match="profile_steps must be an integer >= 0"):
        cfg.profile_steps = -1
        config_lib.validate(cfg)


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MB tmpfs (CI runs as root); skipped with the reason where none can be mounted."""
    mount = tmp_path / "disk"
    mount.mkdir()
    out = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if out.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {out.stderr.strip() or out.returncode}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_ends_in_one_clear_error_and_keeps_the_last_checkpoint(small_disk):
    """The command line's screen: the one error line, none of the tracebacks orbax's writer
    threads and tensorstore's callbacks print as the save fails (those with --verbose)."""
    workdir = small_disk / "run"
    args = ["--config=mlp:test", f"--workdir={workdir}", "--config.max_checkpoints_to_keep=100"]
    args.append("--config.num_train_steps=200")  # ~5 MB a checkpoint: three fit
    result = train_command(*args)
    assert_one_clear_line(result, "no space left on device; the last finished checkpoint")
    assert "Exception ignored" not in result.stderr  # "Event loop is closed" in a callback
    orbax_errors = re.findall(r"^E\d{4} .*", result.stderr, re.MULTILINE)  # absl's ERROR lines
    assert not orbax_errors, orbax_errors
    kept = checkpoints.finished_steps(workdir)
    assert kept and kept[-1] < 200
    _, _, params = checkpoints.load_trained(workdir)  # the last finished one restores
    assert all(np.isfinite(np.asarray(p)).all() for p in jax.tree.leaves(params))
    history = [r["step"] for r in rundir.read_history(workdir)]
    assert history[: len(kept)] == [8 * (i + 1) for i in range(len(kept))]
    verbose = train_command(*args, "--verbose")  # resumes, fills the disk again
    assert verbose.returncode != 0 and "no space left on device" in verbose.stderr
    assert verbose.stderr.count("Traceback") >= 2, verbose.stderr[-3000:]  # the threads' too


def test_weights_that_blow_up_in_the_last_step_of_an_interval_are_never_saved(tmp_path):
    cfg = config_lib.load_experiment("mlp", "test")
    cfg.num_train_steps, cfg.eval_every_steps, cfg.learning_rate = 4, 1, 1e38
    cfg.checkpoint_every_steps = 1
    with pytest.raises(TrainingError, match="the run: the test loss became nan at step 1"):
        train.train_and_evaluate(cfg, tmp_path)  # step 1's loss is finite, its update is not
    assert checkpoints.finished_steps(tmp_path) == []
    assert rundir.read_history(tmp_path) == []


def test_rerunning_a_finished_run_changes_nothing(tmp_path):
    cfg = config_lib.load_experiment("linreg", "test")
    train.train_and_evaluate(cfg, tmp_path)
    before = (tmp_path / "summary.json").read_text(), (tmp_path / "metrics.jsonl").read_text()
    state, history = train.train_and_evaluate(cfg, tmp_path)
    after = (tmp_path / "summary.json").read_text(), (tmp_path / "metrics.jsonl").read_text()
    assert after == before and int(state.step) == 24 and [r["step"] for r in history] == [8, 16, 24]


def test_a_finished_workdir_rerun_with_fewer_steps_says_so(tmp_path):
    cfg = config_lib.load_experiment("mlp", "test")
    cfg.num_train_steps = 16
    train.train_and_evaluate(cfg, tmp_path)
    cfg.num_train_steps = 8
    with pytest.raises(
        UsageError, match="trained to step 16, past this config's num_train_steps=8"
    ):
        train.train_and_evaluate(cfg, tmp_path)
