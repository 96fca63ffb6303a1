"""The run directory: JSON files, the metrics history, finished checkpoints, the reader, the
writer lock, the write check, disk-full detection."""

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from fmnist_jax import checkpoints, rundir
from fmnist_jax.errors import RunError


def _record(step, loss):
    record = {"step": step, "replica": 0, "epoch": step / 10, "train_loss": loss}
    return {**record, "test_loss": loss + 0.1}


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


def test_a_workdir_of_another_run_is_refused_naming_each_field_with_both_values(
    tmp_path, monkeypatch
):
    monkeypatch.delenv(rundir.MAKE_COMMAND, raising=False)
    saved = {"model": "cnn", "dropout_rate": 0.0, "seed": 0, "num_train_steps": 24}
    rundir.write_config(tmp_path, saved)
    rundir.check_same_run(tmp_path, {**saved, "num_train_steps": 48, "eval_every_steps": 4})
    with pytest.raises(RunError) as e:
        rundir.check_same_run(tmp_path, {**saved, "dropout_rate": 0.25, "seed": 1, "new": 2})
    other = tmp_path.parent / "dropout_rate0.25_new2_seed1" / tmp_path.name
    assert str(e.value).count("\n") == 0 and (
        "another config (dropout_rate=0.0 there, 0.25 here; new='(absent)' there, 2 here;"
        f" seed=0 there, 1 here); use another --workdir ({other}, say), or delete that one"
        f" (rm -rf {tmp_path}) to train this config there"
    ) in str(e.value)


def test_under_make_the_refusal_names_the_make_command_with_another_runs(tmp_path, monkeypatch):
    monkeypatch.setenv(rundir.MAKE_COMMAND, "make mlp REPLICAS=5 RUNS=runs")
    rundir.write_config(tmp_path, {"num_replicas": 3})
    with pytest.raises(RunError) as e:
        rundir.check_same_run(tmp_path, {"num_replicas": 5})
    assert str(e.value).endswith(
        "(num_replicas=3 there, 5 here); train this one elsewhere (make mlp REPLICAS=5"
        f" RUNS=runs/num_replicas5), or delete that one (rm -rf {tmp_path}) to train this"
        " config there"
    )


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize(
    "goal, runs, jobs, there, here",
    [("mlp", ["mlp"], 1, 3, 5), ("reproduce", ["cnn"], 1, 3, 8),
     ("reproduce", ["cnn", "cnn_dropout"], 2, 3, 8)],
)  # fmt: skip
def test_a_make_target_refused_names_itself_as_typed_with_another_runs(
    tmp_path, goal, runs, jobs, there, here
):
    """`make reproduce` trains its ConvNets first, in sub-makes (JOBS=2: two chains at once,
    each on a share of the cores): each line names the outer command. JOBS=1 trains one
    experiment at a time, so that one refusal ends it; with two chains both ConvNets are refused,
    so that neither trains."""
    from fmnist_jax import config as config_lib
    from fmnist_jax import population
    from tests.conftest import REPO

    for run in runs:
        (tmp_path / run).mkdir()
        trained = config_lib.load_experiment(run)
        trained.num_replicas = there
        rundir.write_config(tmp_path / run, population.resolved(trained).to_dict())
    typed = [goal, f"REPLICAS={here}", f"RUNS={tmp_path}", f"PYTHON={sys.executable}"]
    typed.append(f"JOBS={jobs}")
    outer = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")  # of a `make test` running this test
    env = {k: v for k, v in os.environ.items() if k not in outer}
    make = ["make", "-s", "-C", str(REPO), *typed]
    result = subprocess.run(make, env=env, capture_output=True, text=True, check=False, timeout=180)
    assert result.returncode == 2, result.stderr
    for run in runs:
        expected = (
            f"error: {tmp_path / run} holds a run trained with another config"
            f" (num_replicas={there} there, {here} here); train this one elsewhere (make {goal}"
            f" JOBS={jobs} PYTHON={sys.executable} REPLICAS={here}"
            f" RUNS={tmp_path}/num_replicas{here}), or delete that one"
            f" (rm -rf {tmp_path / run}) to train this config there"
        )
        assert expected in result.stderr.splitlines(), result.stderr


def test_only_checkpoints_orbax_finished_count_and_the_others_are_set_aside(tmp_path):
    with checkpoints.checkpoint_manager(tmp_path) as manager:
        for step in (8, 16):
            items = {name: {"w": jnp.ones(3) * step} for name in checkpoints.ITEMS}
            args = {k: ocp.args.StandardSave(v) for k, v in items.items()}
            manager.save(step, args=ocp.args.Composite(**args))
    folder = tmp_path / checkpoints.CHECKPOINT_DIR
    (folder / "24").mkdir()  # empty: orbax would list it as a step
    (folder / "32.orbax-checkpoint-tmp-1234").mkdir()  # a save cut short by a kill
    assert checkpoints.finished_steps(tmp_path) == [8, 16]
    checkpoints.set_aside_unfinished(tmp_path)
    assert (folder / "24.incomplete").is_dir() and not (folder / "24").exists()
    with checkpoints.checkpoint_manager(tmp_path) as manager:
        assert manager.latest_step() == 16
    assert checkpoints.finished_steps(tmp_path / "elsewhere") == []


# --------------------------------------------------------------------------- faults

HOLD_LOCK = """
import sys, time
from pathlib import Path
from fmnist_jax import rundir
with rundir.writer_lock(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_a_second_writer_is_refused_naming_the_holder_and_a_dead_holder_blocks_nothing(
    tmp_path,
):
    from tests.conftest import REPO

    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        refused = pytest.raises(RunError, match=f"is being trained by process {holder.pid} on ")
        with refused, rundir.writer_lock(tmp_path):
            pass
    finally:
        holder.kill()  # kill -9: the operating system releases the lock
        holder.wait()
    assert (tmp_path / rundir.LOCK_FILE).exists()  # left behind, and harmless:
    with rundir.writer_lock(tmp_path):
        assert f"process {os.getpid()} " in (tmp_path / rundir.LOCK_FILE).read_text()


def test_prepare_refuses_a_file_or_a_folder_that_cannot_be_written(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(RunError, match="afile is a file, not a folder"):
        rundir.prepare(tmp_path / "afile")
    with pytest.raises(RunError, match="cannot write there"):
        rundir.prepare(tmp_path / "afile" / "run")
    rundir.prepare(tmp_path / "new" / "run")
    assert (tmp_path / "new" / "run").is_dir() and not list((tmp_path / "new" / "run").iterdir())


def test_disk_full_is_recognised_through_chained_exceptions():
    full = OSError(errno.ENOSPC, "No space left on device")
    try:
        try:
            raise full
        except OSError as e:
            raise ValueError("orbax: commit failed") from e
    except ValueError as wrapped:
        assert rundir.disk_full(wrapped)
    assert rundir.disk_full(RuntimeError("write failed: No space left on device"))
    assert not rundir.disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not rundir.disk_full(None)


def test_a_damaged_json_file_is_one_clear_line_for_every_reader(tmp_path):
    """config.json that is not valid JSON: the attack, the report and fj.restore stop with one
    line saying so; the figures skip that run with one warning line saying so."""
    from tests.conftest import REPO

    run = tmp_path / "runs" / "cnn_dropout"
    run.mkdir(parents=True)
    (run / "config.json").write_text('{"model": "cnn", ')
    (run / "summary.json").write_text("{}")
    (run / "metrics.jsonl").write_text("")
    commands = [
        ["fmnist_jax.adversarial", f"--workdir={run}", f"--output={tmp_path / 'adv'}"],
        ["fmnist_jax.report", f"--runs={tmp_path / 'runs'}", f"--out={tmp_path / 'R.md'}"],
        ["fmnist_jax.plotting", f"--runs={tmp_path / 'runs'}", f"--out={tmp_path / 'figs'}"],
    ]
    for args in commands:
        out = subprocess.run(
            [sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True,
            timeout=120, check=False,
        )  # fmt: skip
        said = [line for line in out.stderr.splitlines() if "config.json: not valid JSON" in line]
        assert out.returncode != 0 and "Traceback" not in out.stderr, (args[0], out.stderr)
        assert len(said) == 1 and said[0].startswith(("error: ", "warning: ")), out.stderr
    import fmnist_jax as fj

    with pytest.raises(RunError, match="config.json: not valid JSON"):
        fj.restore(run)


def test_records_without_a_replica_are_one_clear_error_naming_the_file(tmp_path):
    (tmp_path / rundir.METRICS_FILE).write_text('{"step": 8, "train_loss": 1.0}\n')
    with pytest.raises(RunError, match="metrics.jsonl: records without 'replica'"):
        rundir.read_history(tmp_path)


def test_members_pair_by_seed_and_length_up_to_the_fewest():
    def run(name, seeds, steps=100):
        config = {"seed": 0, "num_replicas": len(seeds), "num_train_steps": steps}
        summary = {"replicas": [{"seed": s} for s in seeds]}
        return rundir.Run(Path(name), config, [], summary).members()

    assert rundir.unpaired({"a": run("a", [0, 7]), "b": run("b", [0, 7, 9])}) is None
    assert rundir.unpaired({"a": run("a", [0, 7]), "b": run("b", [0, 8])}) == (
        "member 1 does not pair (a: seed 7, 100 steps; b: seed 8, 100 steps): train them with"
        " the same seeds and steps"
    )
    told = rundir.unpaired({"a": run("a", [0]), "b": run("b", [0], steps=50)})
    assert told.startswith("member 0 does not pair (a: seed 0, 100 steps; b: seed 0, 50 steps)")
