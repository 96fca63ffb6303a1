"""The run directory: JSON files, the metrics history, finished checkpoints, the reader."""

import json

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from fmnist_jax import rundir
from fmnist_jax.errors import RunError


def _record(step, loss):
    return {"step": step, "epoch": step / 10, "train_loss": loss, "test_loss": loss + 0.1}


def test_read_json_missing_is_none_and_invalid_is_one_clear_error(tmp_path):
    assert rundir.read_json(tmp_path / "summary.json") is None
    (tmp_path / "summary.json").write_text('{"steps": 24,')
    with pytest.raises(RunError, match=r"summary.json: not valid JSON .*delete or repair it"):
        rundir.read_json(tmp_path / "summary.json")


def test_write_json_replaces_atomically_and_leaves_no_temporary(tmp_path):
    rundir.write_json(tmp_path / "config.json", {"a": 1})
    rundir.write_json(tmp_path / "config.json", {"a": 2})
    assert json.loads((tmp_path / "config.json").read_text()) == {"a": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_history_keeps_each_step_once_skips_a_cut_line_and_truncates(tmp_path):
    for step, loss in ((8, 1.0), (16, 0.5), (24, 0.3)):
        rundir.append_record(tmp_path, _record(step, loss))
    with open(tmp_path / rundir.METRICS_FILE, "a") as f:
        f.write(json.dumps(_record(16, 0.4)) + "\n" + '{"step": 32, "tra')  # resumed, then cut
    history = rundir.read_history(tmp_path)
    assert [r["step"] for r in history] == [8, 16, 24]
    assert history[1]["train_loss"] == 0.4  # the later line of a step wins
    assert [r["step"] for r in rundir.read_history(tmp_path, up_to_step=16)] == [8, 16]
    rundir.write_history(tmp_path, history[:1])
    assert rundir.read_history(tmp_path) == history[:1]


def test_read_run_gives_config_history_curves_and_summary(tmp_path):
    rundir.write_config(tmp_path, {"name": "mlp", "batch_size": 64})
    for step, loss in ((8, 1.0), (16, 0.5)):
        rundir.append_record(tmp_path, _record(step, loss))
    run = rundir.read_run(tmp_path)
    assert run.config["batch_size"] == 64 and run.name == tmp_path.name
    assert not run.finished and run.summary is None
    curve = run.curve("test_loss")
    np.testing.assert_array_equal(curve.steps, [8, 16])
    np.testing.assert_allclose(curve.values, [1.1, 0.6])
    assert run.curve("test_accuracy") is None
    rundir.write_summary(tmp_path, {"steps": 16})
    assert rundir.read_run(tmp_path).summary == {"steps": 16}


def test_read_run_refuses_a_missing_folder_or_one_without_config(tmp_path):
    with pytest.raises(RunError, match="missing"):
        rundir.read_run(tmp_path / "nope")
    with pytest.raises(RunError, match="no config.json here"):
        rundir.read_run(tmp_path)


def test_a_workdir_of_another_run_is_refused(tmp_path):
    rundir.write_config(tmp_path, {"model": "cnn"})
    rundir.check_same_run(tmp_path, {"model": "cnn"}, ["model"])
    with pytest.raises(RunError, match="holds a run with model='cnn', but this config has"):
        rundir.check_same_run(tmp_path, {"model": "mlp"}, ["model"])


def test_only_checkpoints_orbax_finished_count_and_the_others_are_set_aside(tmp_path):
    with rundir.checkpoint_manager(tmp_path) as manager:
        for step in (8, 16):
            manager.save(step, args=ocp.args.StandardSave({"w": jnp.ones(3) * step}))
    folder = tmp_path / rundir.CHECKPOINT_DIR
    (folder / "24").mkdir()  # empty: orbax would list it as a step
    (folder / "32.orbax-checkpoint-tmp-1234").mkdir()  # a save cut short by a kill
    assert rundir.finished_steps(tmp_path) == [8, 16]
    rundir.set_aside_unfinished(tmp_path)
    assert (folder / "24.incomplete").is_dir() and not (folder / "24").exists()
    with rundir.checkpoint_manager(tmp_path) as manager:
        assert manager.latest_step() == 16
    assert rundir.finished_steps(tmp_path / "elsewhere") == []
