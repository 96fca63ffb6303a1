"""The training command line: flags, experiment names, one-line mistakes, kill -9 then resume."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from fmnist_jax import config as config_lib
from fmnist_jax import data, main
from fmnist_jax.errors import UsageError
from tests.conftest import REPO, assert_one_clear_line, metrics_lines, train_command


def test_help_exits_0_and_lists_the_flags():
    result = train_command("--help")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--config" in result.stdout and "--workdir" in result.stdout


def test_experiment_names_resolve_to_their_files():
    argv = ["prog", "--config", "cnn:test", "--workdir=w", "--config=mlp"]
    resolved = main.resolve_experiment(argv)
    assert resolved[2] == f"{config_lib.experiment_path('cnn')}:test"
    assert resolved[4] == f"--config={config_lib.experiment_path('mlp')}"
    assert main.resolve_experiment(["prog", "--config=experiments/cnn.py:test"])[1] == (
        "--config=experiments/cnn.py:test"
    )
    with pytest.raises(UsageError, match="config file nope not found; experiments are cnn"):
        main.resolve_experiment(["prog", "--config=nope"])


@pytest.mark.parametrize(
    "args, words",
    [
        (["--config.lerning_rate=0.1"], "unknown config field 'lerning_rate' (did you mean"),
        (["--config.learning_rate=-1"], "learning_rate must be a finite number > 0"),
        (["--config.batch_size=abc"], "flag --config.batch_size=abc: invalid literal"),
        (["--config=experiments/nope.py"], "config file experiments/nope.py not found"),
    ],
)
def test_config_mistakes_end_in_one_line(tmp_path, args, words):
    result = train_command("--config", "experiments/mlp.py:test", "--workdir", str(tmp_path), *args)
    assert_one_clear_line(result, words)
    assert not (tmp_path / "config.json").exists()


def test_missing_required_flag_ends_in_one_line(tmp_path):
    assert_one_clear_line(train_command("--config", "mlp:test"), "Flag --workdir must have a value")


def test_bad_data_folder_is_named(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / data.IDX_FILES["train"][0]).write_bytes(b"not gzip at all")
    result = train_command(
        "--config", "experiments/mlp.py", "--workdir", str(tmp_path / "run"),
        env={data.ENV_DATA_DIR: str(folder)},
    )  # fmt: skip
    assert_one_clear_line(result, "train-images-idx3-ubyte.gz: not a gzip file")


def _events(run_dir):
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(str(run_dir), size_guidance={"tensors": 0})
    acc.Reload()
    return [e.step for e in acc.Tensors("loss")]


def test_kill_during_training_then_rerun_resumes_exactly(tmp_path):
    args = [
        "--config", "mlp_dropout:test",
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
    rerun = train_command(*args, "--workdir", str(killed))
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    summary = json.loads((killed / "summary.json").read_text())
    assert summary["resumed_from_step"] > 0
    straight = train_command(*args, "--workdir", str(tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr[-2000:]
    assert metrics_lines(killed) == metrics_lines(tmp_path / "straight")
    for sub in ("train", "test"):
        assert _events(killed / sub) == list(range(20, 601, 20))


def test_a_misspelled_variant_is_one_line_naming_the_known_ones(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "fmnist_jax.main", "--config=cnn:tset", f"--workdir={tmp_path}"],
        check=False, cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    path = REPO / "experiments" / "cnn.py"
    expected = (
        f"error: flag --config={path}:tset: Error whilst parsing config file: unknown config"
        " variant 'tset'; variants are test"
    )
    assert proc.stderr.strip().splitlines() == [expected]
    assert not (tmp_path / "metrics.jsonl").exists()
