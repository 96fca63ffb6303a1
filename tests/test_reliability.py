"""Bad input gives one clear line; NaN stops training; kill -9 then rerun resumes exactly."""

import json
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest

from fmnist_jax import config as config_lib
from fmnist_jax import data, train
from tests.conftest import REPO


def _cli(*args, env=None, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "fmnist_jax.main", *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _assert_one_clear_line(result, words):
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and words in last, last


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("model", "resnet", "config.model='resnet' is unknown"),
        ("optimizer", "adamw", "config.optimizer='adamw' is unknown"),
        ("learning_rate", 0.0, "learning_rate must be a finite number > 0"),
        ("learning_rate", float("nan"), "learning_rate must be a finite number > 0"),
        ("batch_size", 0, "batch_size must be a positive integer"),
        ("eval_every_steps", -5, "eval_every_steps must be a positive integer"),
        ("checkpoint_every_steps", 0, "checkpoint_every_steps must be a positive integer"),
        ("checkpoint_every_steps", 12, "must be a multiple of config.eval_every_steps=8"),
        ("dropout_rate", 1.0, "dropout_rate must lie in [0, 1)"),
        ("dropout_rate", -0.1, "dropout_rate must lie in [0, 1)"),
        ("dataset", "linear_regression", "cannot train on"),
    ],
)
def test_bad_config_fields_are_named(field, value, words):
    cfg = config_lib.load_experiment("mlp", "test")
    cfg[field] = value
    with pytest.raises(config_lib.ConfigError) as e:
        config_lib.validate(cfg)
    assert words in str(e.value)


def test_batch_not_divisible_by_devices_is_refused():
    cfg = config_lib.load_experiment("cnn", "test")
    cfg.batch_size = 30
    with pytest.raises(config_lib.ConfigError, match="not divisible by the 8 devices"):
        train.check_divisible(cfg, SimpleNamespace(size=8))
    cfg.batch_size = 32
    train.check_divisible(cfg, SimpleNamespace(size=8))


def test_workdir_of_another_model_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model": "cnn", "name": "cnn"}))
    cfg = config_lib.load_experiment("mlp", "test")
    with pytest.raises(train.TrainingError, match="holds a run with model='cnn'"):
        train.train_and_evaluate(cfg, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model"] == "cnn"


def test_unknown_experiment_name():
    with pytest.raises(config_lib.ConfigError, match="no experiment 'cnnn'"):
        config_lib.load_experiment("cnnn")


# --------------------------------------------------------------------------- the command line


@pytest.mark.parametrize(
    "args, words",
    [
        (["--config.lerning_rate=0.1"], "unknown config field 'lerning_rate' (did you mean"),
        (["--config.learning_rate=-1"], "learning_rate must be a finite number > 0"),
        (["--config.batch_size=abc"], "flag --config.batch_size=abc: invalid literal"),
        (["--config=experiments/nope.py"], "config file experiments/nope.py not found"),
    ],
)
def test_cli_config_mistakes(tmp_path, args, words):
    result = _cli("--config", "experiments/mlp.py:test", "--workdir", str(tmp_path), *args)
    _assert_one_clear_line(result, words)
    assert not (tmp_path / "config.json").exists()


def test_cli_bad_data_folder(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / data.IDX_FILES["train"][0]).write_bytes(b"not gzip at all")
    result = _cli(
        "--config", "experiments/mlp.py", "--workdir", str(tmp_path / "run"),
        env={data.ENV_DATA_DIR: str(folder)},
    )  # fmt: skip
    _assert_one_clear_line(result, "train-images-idx3-ubyte.gz: not a gzip file")


# --------------------------------------------------------------------------- NaN


def _poisoned(dataset: data.Dataset) -> data.Dataset:
    inputs = dataset.train["inputs"].astype(np.float32)
    inputs[:] = np.nan
    return data.Dataset({**dataset.train, "inputs": inputs}, dataset.test, "poisoned", "test")


def test_non_finite_loss_stops_at_once_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = config_lib.load_experiment("mlp", "test")
    cfg.num_train_steps = 16
    train.train_and_evaluate(cfg, tmp_path)
    cfg.num_train_steps = 32
    with pytest.raises(train.TrainingError, match="became nan at step 17"):
        train.train_and_evaluate(cfg, tmp_path, dataset=_poisoned(data.load(cfg)))
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [8, 16]
    _, _, params = train.load_trained(tmp_path)
    assert all(np.isfinite(np.asarray(p)).all() for p in __import__("jax").tree.leaves(params))


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


# --------------------------------------------------------------------------- kill -9 and resume


def _events(run_dir):
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(str(run_dir), size_guidance={"tensors": 0})
    acc.Reload()
    return [e.step for e in acc.Tensors("loss")]


def test_kill_during_training_then_rerun_resumes_exactly(tmp_path):
    args = [
        "--config", "experiments/mlp_dropout.py:test",
        "--config.num_train_steps=600", "--config.eval_every_steps=20",
        "--config.checkpoint_every_steps=40",
    ]  # fmt: skip
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fmnist_jax.main", *args, "--workdir", str(killed)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        done = [p for p in (killed / "checkpoints").glob("*") if p.name.isdigit()]
        if len(done) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed"
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    rerun = _cli(*args, "--workdir", str(killed))
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    summary = json.loads((killed / "summary.json").read_text())
    assert summary["resumed_from_step"] > 0
    straight = _cli(*args, "--workdir", str(tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr[-2000:]

    def history(d):
        return [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]

    assert history(killed) == history(tmp_path / "straight")
    for sub in ("train", "test"):
        assert _events(killed / sub) == list(range(20, 601, 20))


def test_checkpoint_of_another_architecture_is_refused_when_loading(tmp_path):
    cfg = config_lib.load_experiment("cnn", "test")
    cfg.num_train_steps = 8
    train.train_and_evaluate(cfg, tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**saved, "model": "mlp"}))
    with pytest.raises(train.TrainingError, match="cannot be restored into this config's model"):
        train.load_trained(tmp_path)


def test_loading_a_workdir_without_checkpoints_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model": "cnn"}))
    with pytest.raises(train.TrainingError, match="no finished checkpoint here; train first"):
        train.load_trained(tmp_path)
