"""Event files: the HParams session TensorBoard reads at the workdir, the test metrics beside
it, and a resumed run that keeps every scalar it had logged (progress scalars too), once."""

import json

import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import metadata as hparams_metadata
from tensorboard.util import tensor_util

from fmnist_jax import config as config_lib
from fmnist_jax import events, train


def _accumulator(folder):
    acc = event_accumulator.EventAccumulator(str(folder), size_guidance={"tensors": 0})
    acc.Reload()
    return acc


def _scalars(folder, tag):
    return [
        (e.step, float(tensor_util.make_ndarray(e.tensor_proto)))
        for e in _accumulator(folder).Tensors(tag)
    ]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """mlp:test with CLU's progress every 4 steps: straight, and stopped at 16 then resumed."""
    root = tmp_path_factory.mktemp("events")
    cfg = config_lib.load_experiment("mlp", "test")
    cfg.progress_every_steps, cfg.steps_per_chunk = 4, 1  # rates are per chunk: chunks of 1
    train.train_and_evaluate(cfg, root / "straight")
    cfg.num_train_steps = 16
    train.train_and_evaluate(cfg, root / "resumed")
    with open(root / "resumed" / "scalars.jsonl", "a") as f:  # logged past the checkpoint
        f.write(json.dumps({"collection": "train", "step": 20, "steps_per_sec": 1.0}) + "\n")
    cfg.num_train_steps = 24
    train.train_and_evaluate(cfg, root / "resumed")
    return root


def test_the_hparams_session_is_at_the_workdir_and_tensorboard_reads_it(runs):
    content = _accumulator(runs / "straight").PluginTagToContent(hparams_metadata.PLUGIN_NAME)
    session = hparams_metadata.parse_session_start_info_plugin_data(
        content[hparams_metadata.SESSION_START_INFO_TAG]
    )
    assert session.hparams["model"].string_value == "mlp"
    assert session.hparams["learning_rate"].number_value == pytest.approx(1e-3)
    assert session.hparams["regression.num_features"].number_value == 20
    # The dashboard's metrics are the session's sub-runs' tags: test/loss, test/accuracy.
    summary = json.loads((runs / "straight" / "summary.json").read_text())
    assert _scalars(runs / "straight" / "test", "loss")[-1] == (
        24,
        pytest.approx(summary["replicas"][0]["final_test_loss"], rel=1e-6),
    )
    assert _scalars(runs / "straight" / "test", "accuracy")[-1][0] == 24
    train_tags = _accumulator(runs / "straight" / "train").Tags()["tensors"]
    assert hparams_metadata.SESSION_START_INFO_TAG not in train_tags  # no second session


def test_a_resumed_run_keeps_its_progress_scalars_each_step_once(runs):
    for tag in ("steps_per_sec", "uptime", "loss"):
        straight = [s for s, _ in _scalars(runs / "straight" / "train", tag)]
        resumed = [s for s, _ in _scalars(runs / "resumed" / "train", tag)]
        assert resumed == sorted(set(resumed)), tag  # each step once
        assert straight == resumed, tag
    resumed = dict(_scalars(runs / "resumed" / "train", "steps_per_sec"))
    assert sorted(resumed) == [4, 8, 12, 16, 20, 24]
    assert resumed[20] != 1.0  # the line logged past the checkpoint was dropped, not replayed
    kept = events.kept_scalars(runs / "resumed", 24)
    assert [e["step"] for e in kept] == [4, 8, 12, 16, 20, 24]
    assert all({"steps_per_sec", "uptime"} <= set(e) for e in kept)


def test_a_resumed_runs_total_wall_time_adds_the_earlier_processes(runs):
    """The first process's last uptime (step 16) plus the second's wall time; a run trained in
    one process: its own wall time."""
    first = {e["step"]: e["uptime"] for e in events.kept_scalars(runs / "resumed", 16)}[16]
    assert events.earlier_seconds(runs / "resumed", 16) == pytest.approx(first)
    resumed = json.loads((runs / "resumed" / "summary.json").read_text())
    assert resumed["resumed_from_step"] == 16 and first > 0
    assert resumed["wall_time_total_s"] == pytest.approx(resumed["wall_time_s"] + first, abs=0.01)
    straight = json.loads((runs / "straight" / "summary.json").read_text())
    assert straight["wall_time_total_s"] == straight["wall_time_s"]
    assert events.earlier_seconds(runs / "straight", 0) == 0.0


def test_earlier_seconds_adds_each_process_last_uptime(tmp_path):
    lines = [(4, 10.0), (8, 20.0), (12, 3.0), (16, 9.0), (20, 2.0)]  # three processes
    with open(tmp_path / events.SCALARS_FILE, "w") as f:
        f.writelines(
            json.dumps({"collection": "train", "step": step, "uptime": uptime}) + "\n"
            for step, uptime in lines
        )
    assert events.earlier_seconds(tmp_path, 20) == pytest.approx(20.0 + 9.0 + 2.0)
    assert events.earlier_seconds(tmp_path, 12) == pytest.approx(20.0 + 3.0)


def test_each_replica_is_a_tensorboard_run_of_its_own(tmp_path):
    cfg = config_lib.load_experiment("mlp", "test")
    cfg.num_replicas = 2
    train.train_and_evaluate(cfg, tmp_path / "two")
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert not (tmp_path / "two" / "test").exists()
    finals = []
    for k in range(2):
        loss = _scalars(tmp_path / "two" / f"replica_{k}" / "test", "loss")
        assert [s for s, _ in loss] == [8, 16, 24]
        assert loss[-1][1] == pytest.approx(summary["replicas"][k]["final_test_loss"], rel=1e-6)
        finals.append(loss[-1][1])
    assert finals[0] != finals[1]
    # CLU's progress scalars go with the first replica's train writer only.
    assert (
        "steps_per_sec" in _accumulator(tmp_path / "two" / "replica_0" / "train").Tags()["tensors"]
    )
    assert (
        "steps_per_sec"
        not in _accumulator(tmp_path / "two" / "replica_1" / "train").Tags()["tensors"]
    )


def test_each_population_member_is_an_hparams_session_with_its_values(tmp_path):
    cfg = config_lib.load_experiment("mlp", "test")
    cfg.grid = "dropout_rate=0,0.5"
    train.train_and_evaluate(cfg, tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert not list(tmp_path.glob("events.out.tfevents.*"))  # no session over all members
    for member in summary["replicas"]:
        folder = tmp_path / f"dropout_rate={member['dropout_rate']:g},seed={member['seed']}"
        content = _accumulator(folder).PluginTagToContent(hparams_metadata.PLUGIN_NAME)
        session = hparams_metadata.parse_session_start_info_plugin_data(
            content[hparams_metadata.SESSION_START_INFO_TAG]
        )
        assert session.hparams["dropout_rate"].number_value == member["dropout_rate"]
        assert session.hparams["seed"].number_value == member["seed"]
        loss = _scalars(folder / "test", "loss")
        assert loss[-1][1] == pytest.approx(member["final_test_loss"], rel=1e-6)
