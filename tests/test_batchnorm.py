"""A model with variables beside its params (cnn_bn: BatchNorm's batch_stats) through every
path: train, resume, members vmapped and unrolled, a population, restore, predict, the attack;
and a run's identity: a changed config or a checkpoint of another structure is refused in one
line, nothing renamed."""

import json

import jax
import numpy as np
import pytest

import fmnist_jax as fj
from fmnist_jax import checkpoints, models, replicas, train
from fmnist_jax.errors import RunError
from tests.conftest import assert_curves_close, metrics_lines, tiny_config


def stats(variables) -> list[np.ndarray]:
    return [np.asarray(v) for v in jax.tree.leaves(variables["batch_stats"])]


@pytest.fixture(scope="module")
def bn_run(tmp_path_factory):
    """cnn_bn's test variant, trained once: (workdir, final state)."""
    workdir = tmp_path_factory.mktemp("bn") / "run"
    state, _ = train.train_and_evaluate(tiny_config("cnn_bn"), workdir)
    return workdir, state


def test_batch_stats_train_checkpoint_and_restore(bn_run):
    workdir, state = bn_run
    fresh = models.create_model(tiny_config("cnn_bn")).init(
        jax.random.key(0), np.zeros((1, 28, 28, 1), np.float32)
    )
    trained = fj.restore(workdir)
    assert sorted(trained.variables) == ["batch_stats", "params"]
    for got, kept, initial in zip(
        stats(trained.variables), stats(state.model_state), stats(fresh), strict=True
    ):
        np.testing.assert_array_equal(got, kept)  # the checkpoint holds the trained statistics
        assert not np.allclose(got, initial)  # which training moved


def test_predict_and_the_attack_use_the_running_statistics(bn_run):
    workdir, _ = bn_run
    trained = fj.restore(workdir)
    images = np.random.default_rng(0).random((3, 28, 28, 1), dtype=np.float32)
    expected = jax.nn.softmax(trained.model.apply(trained.variables, images, train=False))
    np.testing.assert_allclose(fj.predict(trained, images), expected, rtol=1e-5, atol=1e-6)
    result = fj.attack(trained, images, targets=[1, 2, 3], max_steps=5)
    adversarial = np.asarray(result.adversarial)
    assert adversarial.shape == images.shape and np.isfinite(adversarial).all()


def test_resume_continues_the_same_curves(bn_run, tmp_path):
    straight, _ = bn_run
    cfg = tiny_config("cnn_bn", num_train_steps=16)
    train.train_and_evaluate(cfg, tmp_path)
    cfg.num_train_steps = 24  # more steps: allowed
    train.train_and_evaluate(cfg, tmp_path)
    assert metrics_lines(tmp_path)[-3:] == metrics_lines(straight)[-3:]


@pytest.mark.parametrize("how", ["vmap", "unroll"])
def test_members_carry_their_own_statistics_and_member_0_is_the_plain_run(bn_run, tmp_path, how):
    workdir, plain = bn_run
    state, _ = train.train_and_evaluate(
        tiny_config("cnn_bn", num_replicas=2, replica_map=how), tmp_path
    )
    first, second = (stats({"batch_stats": replicas.take(state.model_state, m)}) for m in (0, 1))
    assert not np.allclose(first[0], second[0], atol=0.05)
    # vmap's grouped convolutions sum in another order: differences grow over 24 Adam steps.
    tolerance = 1e-4 if how == "unroll" else 2e-2
    for a, b in zip(first, stats(plain.model_state), strict=True):
        np.testing.assert_allclose(a, b, rtol=tolerance, atol=tolerance)
    assert_curves_close(metrics_lines(tmp_path, 0), metrics_lines(workdir), rel=tolerance)
    restored = fj.restore(tmp_path, member=1)
    for a, b in zip(stats(restored.variables), second, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_population_member_trains_as_the_plain_run_of_its_point(tmp_path):
    state, _ = train.train_and_evaluate(
        tiny_config("cnn_bn", grid="dropout_rate=0,0.25"), tmp_path / "pop"
    )
    train.train_and_evaluate(tiny_config("cnn_bn", dropout_rate=0.25), tmp_path / "plain")
    assert jax.tree.leaves(state.model_state)[0].shape[0] == 2
    # A traced dropout rate rounds differently from a constant one (3.5e-4 at step 8, jax 0.12).
    pop, plain = metrics_lines(tmp_path / "pop", 1), metrics_lines(tmp_path / "plain")
    assert_curves_close(pop, plain, 2e-3)


def test_a_weight_decay_grid_trains_each_member_as_its_plain_run(tmp_path):
    adamw = {"optimizer": "adamw", "optimizer_kwargs": {"weight_decay": 0.0}}
    train.train_and_evaluate(tiny_config(grid="weight_decay=0,0.5", **adamw), tmp_path / "pop")
    plain = tiny_config(optimizer="adamw", optimizer_kwargs={"weight_decay": 0.5})
    train.train_and_evaluate(plain, tmp_path / "plain")
    assert_curves_close(metrics_lines(tmp_path / "pop", 1), metrics_lines(tmp_path / "plain"), 1e-4)
    first, second = (metrics_lines(tmp_path / "pop", m)[-1]["train_loss"] for m in (0, 1))
    assert first != second


@pytest.mark.parametrize(
    "change, words",
    [
        ({"dropout_rate": 0.25}, "dropout_rate=0.0 there, 0.25 here"),
        ({"learning_rate": 3e-4, "seed": 1}, "learning_rate=0.001 there, 0.0003 here; seed=0"),
        ({"batch_size": 16}, "batch_size=32 there, 16 here"),
        ({"optimizer_kwargs": {"b2": 0.95}}, "optimizer_kwargs={} there, {'b2': 0.95} here"),
    ],
)
def test_resuming_with_a_field_that_changes_the_model_is_refused(bn_run, change, words):
    workdir, _ = bn_run
    before = sorted(p.name for p in (workdir / "checkpoints").iterdir())
    with pytest.raises(RunError, match="holds a run trained with another config") as e:
        train.train_and_evaluate(tiny_config("cnn_bn", **change), workdir)
    assert words in str(e.value) and "\n" not in str(e.value)
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == before


def test_the_cli_refuses_the_other_experiment_in_the_same_workdir_in_one_line(tmp_path):
    from tests.conftest import assert_one_clear_line, train_command

    first = train_command("--config=experiments/cnn.py:test", f"--workdir={tmp_path}")
    assert first.returncode == 0, first.stderr[-2000:]
    again = train_command("--config=experiments/cnn_dropout.py:test", f"--workdir={tmp_path}")
    assert_one_clear_line(again, "dropout_rate=0.0 there, 0.25 here")
    assert json.loads((tmp_path / "config.json").read_text())["dropout_rate"] == 0.0


def test_a_checkpoint_of_another_structure_is_reported_not_renamed(bn_run, monkeypatch):
    workdir, _ = bn_run
    before = sorted(p.name for p in (workdir / "checkpoints").iterdir())

    class Wider(models.ConvNetBN):  # the code changed: the same config builds another tree
        @models.nn.compact
        def __call__(self, x, train=False, dropout_rate=None):
            return models.nn.Dense(self.num_classes)(super().__call__(x, train, dropout_rate))

    monkeypatch.setitem(models.MODELS, "cnn_bn", Wider)
    with pytest.raises(RunError, match="written by another version of the code or model") as e:
        train.train_and_evaluate(tiny_config("cnn_bn"), workdir)
    assert "not in the checkpoint" in str(e.value)
    with pytest.raises(RunError, match="written by another version"):
        checkpoints.load_trained(workdir)
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == before
