"""Checkpoints with a checksum: a checkpoint whose bytes changed after it was written is set
aside and the previous one used; readers refuse it; with none left, one clear error."""

import json
from pathlib import Path

import numpy as np
import pytest

import fmnist_jax as fj
from fmnist_jax import checkpoints, train
from fmnist_jax import config as config_lib
from fmnist_jax.errors import RunError
from tests.conftest import metrics_lines


def flip_a_byte(workdir: Path, step: int) -> Path:
    """Flips one byte in the middle of checkpoint `step`'s largest file (the parameters)."""
    files = [p for p in (workdir / "checkpoints" / str(step)).rglob("*") if p.is_file()]
    biggest = max(files, key=lambda p: p.stat().st_size)
    data = bytearray(biggest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    biggest.write_bytes(bytes(data))
    return biggest


@pytest.fixture
def run16(tmp_path):
    cfg = config_lib.load_experiment("mlp", "test")
    cfg.num_train_steps = 16
    train.train_and_evaluate(cfg, tmp_path / "run")
    return cfg, tmp_path / "run"


def test_every_checkpoint_has_the_checksum_of_what_it_restores(run16):
    _, workdir = run16
    table = json.loads((workdir / checkpoints.CHECKSUM_FILE).read_text())
    assert sorted(table) == ["16", "8"] and all(len(v) == 64 for v in table.values())


def test_a_damaged_latest_checkpoint_is_set_aside_and_training_resumes_from_the_previous(
    run16, tmp_path, caplog
):
    cfg, workdir = run16
    flip_a_byte(workdir, 16)
    cfg.num_train_steps = 24
    with caplog.at_level("WARNING"):
        train.train_and_evaluate(cfg, workdir)
    assert json.loads((workdir / "summary.json").read_text())["resumed_from_step"] == 8
    assert (workdir / "checkpoints" / "16.damaged").is_dir()
    assert any("checkpoints/16 is damaged" in r.getMessage() for r in caplog.records)
    train.train_and_evaluate(cfg, tmp_path / "straight")
    assert metrics_lines(workdir) == metrics_lines(tmp_path / "straight")


def test_readers_skip_a_damaged_checkpoint_and_refuse_it_when_asked_for(run16):
    _, workdir = run16
    good = fj.restore(workdir, step=8).variables["params"]
    flip_a_byte(workdir, 16)
    latest = fj.restore(workdir).variables["params"]  # the latest intact one: step 8
    for a, b in zip(
        np.asarray(good["Dense_0"]["kernel"]), np.asarray(latest["Dense_0"]["kernel"]), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(RunError, match="that checkpoint is damaged"):
        fj.restore(workdir, step=16)
    assert (workdir / "checkpoints" / "16").is_dir()  # readers rename nothing


def test_with_every_checkpoint_damaged_training_stops_with_one_clear_error(run16):
    cfg, workdir = run16
    for step in (8, 16):
        flip_a_byte(workdir, step)
    with pytest.raises(RunError, match="every checkpoint is damaged"):
        fj.restore(workdir)
    with pytest.raises(RunError, match="every checkpoint is damaged"):
        train.train_and_evaluate(cfg, workdir)
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == [
        "16.damaged",
        "8.damaged",
    ]


def test_a_checkpoint_orbax_cannot_read_is_set_aside_like_a_damaged_one(run16, tmp_path):
    cfg, workdir = run16
    files = [p for p in (workdir / "checkpoints" / "16" / "state").rglob("*") if p.is_file()]
    max(files, key=lambda p: p.stat().st_size).write_bytes(b"")  # a half-copied folder
    cfg.num_train_steps = 24
    train.train_and_evaluate(cfg, workdir)
    assert json.loads((workdir / "summary.json").read_text())["resumed_from_step"] == 8
    assert (workdir / "checkpoints" / "16.damaged").is_dir()
    train.train_and_evaluate(cfg, tmp_path / "straight")
    assert metrics_lines(workdir) == metrics_lines(tmp_path / "straight")
