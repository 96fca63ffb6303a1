"""Replicas: R models differing only in their seeds, trained as one program. Replica 0 is the
plain run, the replicas differ, resume and 8 devices give the same curves, each replica can be
restored, and the statistics over replicas are the textbook ones."""

import json

import jax
import numpy as np
import pytest

import fmnist_jax as fj
from fmnist_jax import data, distributed, replicas, rundir, steps, summary, train
from fmnist_jax.errors import TrainingError, UsageError
from fmnist_jax.plotting import curves
from tests.conftest import assert_curves_close, metrics_lines, tiny_config, train_on_devices

# --------------------------------------------------------------------------- seeds, statistics


def test_replica_0_keeps_the_seed_and_the_others_are_distinct_and_reproducible():
    assert replicas.replica_seed(7, 0) == 7
    seeds = replicas.seeds(7, 5)
    assert len(set(seeds)) == 5 and seeds == replicas.seeds(7, 5)
    # Not seed + k: replica 1 of seed 7 is not replica 0 of seed 8.
    assert replicas.replica_seed(7, 1) != 8
    assert replicas.replica_seed(8, 1) not in seeds


def test_the_interval_is_the_student_t_interval_of_the_mean():
    low, high = replicas.interval([1.0, 2.0, 3.0, 4.0])
    half = 3.182446305284263 * np.std([1, 2, 3, 4], ddof=1) / 2  # t(0.975, 3 dof)
    assert (low, high) == pytest.approx((2.5 - half, 2.5 + half), rel=1e-12)
    stats = replicas.statistics([0.30, 0.32, 0.31])
    assert stats["mean"] == pytest.approx(0.31) and stats["std"] == pytest.approx(0.01)
    assert stats["interval"] == pytest.approx([0.31 - 0.0248414, 0.31 + 0.0248414], rel=1e-5)
    assert (stats["min"], stats["max"], stats["n"]) == (0.30, 0.32, 3)
    one = replicas.statistics([0.5])
    assert one["interval"] == [0.5, 0.5] and one["std"] == 0.0
    assert replicas.statistics([0.5, None]) is None


def test_the_summary_lists_each_replica_and_its_statistics():
    cfg = tiny_config("mlp_dropout", num_replicas=2)
    history = [
        {"step": s, "replica": k, "train_loss": 1.0, "test_loss": loss, "test_accuracy": acc}
        for s, per in ((8, ((0.5, 0.8), (0.7, 0.7))), (16, ((0.4, 0.9), (0.6, 0.8))))
        for k, (loss, acc) in enumerate(per)
    ]
    results = summary.replica_results(cfg, history)
    assert [r["seed"] for r in results] == replicas.seeds(cfg.seed, 2)
    assert [r["final_test_loss"] for r in results] == [0.4, 0.6]
    assert [r["best_test_accuracy"] for r in results] == [0.9, 0.8]
    stats = summary.field_statistics(results)
    assert stats["final_test_loss"]["mean"] == pytest.approx(0.5)
    assert stats["final_test_loss"]["interval"] == pytest.approx(replicas.interval([0.4, 0.6]))


def test_auto_unrolls_a_convolutional_program_on_a_cpu_only():
    assert replicas.choose_map("auto", True, "cpu", False) == "unroll"
    assert replicas.choose_map("auto", True, "gpu", False) == "vmap"
    assert replicas.choose_map("auto", False, "cpu", False) == "vmap"
    assert replicas.choose_map("vmap", True, "cpu", False) == "vmap"
    assert replicas.choose_map("auto", False, "cpu", True) == "unroll"
    assert replicas.choose_map("auto", False, "tpu", True) == "vmap"


def test_whether_a_program_holds_a_convolution_is_read_from_the_program():
    from fmnist_jax import models

    shape = (*data.IMAGE_SHAPE, 1)
    assert models.has_convolution(models.create_model(tiny_config("cnn")), shape)
    assert models.has_convolution(models.create_model(tiny_config("cnn_bn")), shape)
    assert not models.has_convolution(models.create_model(tiny_config("mlp")), shape)


def test_vmap_and_unroll_map_the_same_function():
    def f(x, y, shared):
        return {"sum": x.sum() + y[1], "shared": shared * x[0]}

    x, y, shared = np.arange(12.0).reshape(3, 4), np.arange(6.0).reshape(2, 3), 2.0
    expect = [f(x[r], y[:, r], shared) for r in range(3)]
    for how in ("vmap", "unroll"):
        got = replicas.over_members(f, 1, 3, (0, 1, None), how)(x, y, shared)
        for key in ("sum", "shared"):
            np.testing.assert_allclose(got[key], [e[key] for e in expect])


def test_the_mesh_splits_replicas_where_the_devices_allow():
    assert distributed.replica_axis_size(4, 8) == 4
    assert distributed.replica_axis_size(3, 8) == 1
    assert distributed.replica_axis_size(6, 8) == 2
    assert distributed.replica_axis_size(4, 8, num_processes=2) == 1
    mesh = distributed.make_mesh(3)
    assert mesh.axis_names == ("replica", "data") and mesh.size == jax.device_count()


# --------------------------------------------------------------------------- training


def test_one_replica_runs_the_unreplicated_step_bit_for_bit():
    cfg = tiny_config("mlp_dropout")
    dataset = data.load(cfg)
    s, state, rng = train.build(cfg, dataset.train["inputs"].shape[1:])
    batch = next(data.train_batches(dataset.train, cfg.batch_size, cfg.seed))
    plain = jax.jit(lambda st, b, r: steps.train_step(st, b, r, regression=False))
    expected, _ = plain(replicas.take(state, 0), batch, rng[0])
    got, _ = s.train(state, {k: v[None] for k, v in batch.items()}, rng, s.empty_accumulator())
    for a, b in zip(jax.tree.leaves(expected.params), jax.tree.leaves(got.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b)[0])


@pytest.mark.parametrize("chunk, how", [(1, "vmap"), (8, "vmap"), (1, "unroll"), (8, "unroll")])
def test_replica_0_of_3_is_the_plain_run_and_the_replicas_differ(tmp_path, chunk, how):
    train.train_and_evaluate(tiny_config("mlp_dropout", steps_per_chunk=chunk), tmp_path / "plain")
    state, history = train.train_and_evaluate(
        tiny_config("mlp_dropout", num_replicas=3, steps_per_chunk=chunk, replica_map=how),
        tmp_path / "three",
    )
    assert jax.tree.leaves(state.params)[0].shape[0] == 3
    assert [r["replica"] for r in history[:3]] == [0, 1, 2]
    assert_curves_close(
        metrics_lines(tmp_path / "three", 0), metrics_lines(tmp_path / "plain"), rel=1e-5
    )
    finals = [metrics_lines(tmp_path / "three", k)[-1]["test_loss"] for k in range(3)]
    assert len(set(finals)) == 3
    s = json.loads((tmp_path / "three" / "summary.json").read_text())
    assert [r["final_test_loss"] for r in s["replicas"]] == finals
    assert s["num_replicas"] == 3 and s["statistics"]["final_test_loss"]["n"] == 3


def test_a_resumed_run_of_replicas_continues_the_same_curves(tmp_path):
    train.train_and_evaluate(tiny_config("mlp_dropout", num_replicas=2), tmp_path / "straight")
    train.train_and_evaluate(
        tiny_config("mlp_dropout", num_replicas=2, num_train_steps=16), tmp_path / "resumed"
    )
    train.train_and_evaluate(tiny_config("mlp_dropout", num_replicas=2), tmp_path / "resumed")
    straight, resumed = metrics_lines(tmp_path / "straight"), metrics_lines(tmp_path / "resumed")
    assert [(r["step"], r["replica"]) for r in resumed] == [
        (s, k) for s in (8, 16, 24) for k in (0, 1)
    ]
    assert_curves_close(straight, resumed, rel=1e-6)


def test_eight_devices_with_replicas_match_one(tmp_path):
    """8 devices: the replica axis over 2 of them, each batch over 4."""
    one, eight = (
        train_on_devices(tmp_path / str(n), n, num_replicas=2, num_train_steps=16) for n in (1, 8)
    )
    assert_curves_close(one, eight, rel=1e-4)


def test_a_non_finite_loss_names_the_replica(tmp_path):
    cfg = tiny_config("mlp_dropout", num_replicas=2)
    dataset = data.load(cfg)
    inputs = dataset.train["inputs"].astype(np.float32)
    inputs[:] = np.nan
    poisoned = data.Dataset({**dataset.train, "inputs": inputs}, dataset.test, "poisoned", "t")
    with pytest.raises(
        TrainingError, match=r"member 0 \(seed=0\): the training loss became nan at step 1"
    ):
        train.train_and_evaluate(cfg, tmp_path, dataset=poisoned)


def test_each_replica_restores_on_its_own_and_a_missing_one_is_refused(tmp_path):
    state, _ = train.train_and_evaluate(tiny_config("mlp_dropout", num_replicas=2), tmp_path)
    plain, _ = train.train_and_evaluate(tiny_config("mlp_dropout"), tmp_path / "plain")
    assert jax.tree.leaves(plain.params)[0].ndim == jax.tree.leaves(state.params)[0].ndim - 1
    assert int(plain.step) == 24  # one replica: a plain run's state
    for k in range(2):
        restored = fj.restore(tmp_path, member=k)
        expected = jax.tree.leaves(replicas.take(state.params, k))
        for a, b in zip(expected, jax.tree.leaves(restored.variables["params"]), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(UsageError, match="holds members 0 to 1; member 2 does not"):
        fj.restore(tmp_path, member=2)


def test_the_run_reader_splits_replicas_into_runs_of_one(tmp_path):
    train.train_and_evaluate(tiny_config("mlp_dropout", num_replicas=2), tmp_path)
    run = rundir.read_run(tmp_path)
    assert run.num_members == 2
    one = run.member(1)
    assert [r["replica"] for r in one.history] == [1, 1, 1]
    assert one.summary["final_test_loss"] == run.summary["replicas"][1]["final_test_loss"]
    assert "replicas" not in one.summary
    # The figures' band: mean, min and max of the replicas' smoothed curves.
    loss = curves.replica_curves(run, "test_loss")
    assert len(loss) == 2 and not np.array_equal(loss[0].values, loss[1].values)
    np.testing.assert_array_equal(loss[1].values, [r["test_loss"] for r in one.history])
    steps_, _, mean, low, high = curves.band(loss, 0.6)
    smoothed = np.stack([curves.tensorboard_smooth(c.values, 0.6) for c in loss])
    np.testing.assert_array_equal(steps_, [8, 16, 24])
    np.testing.assert_allclose(mean, smoothed.mean(0))
    np.testing.assert_allclose(low, smoothed.min(0))
    np.testing.assert_allclose(high, smoothed.max(0))
