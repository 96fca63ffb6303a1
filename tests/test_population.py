"""Populations: member (h, k) of a grid x seeds run trains as the plain run of h with seed k
(host feed and device chunks, vmap and unroll, 1 and 8 devices, resumed), a one-point grid is
today's program, and a grid that cannot work is refused in one line."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fmnist_jax as fj
from fmnist_jax import config as config_lib
from fmnist_jax import population, replicas, rundir, train
from fmnist_jax.errors import ConfigError, RunError, TrainingError
from tests.conftest import assert_curves_close, metrics_lines, tiny_config, train_on_devices

GRID = "dropout_rate=0,0.25;learning_rate=1e-3,3e-4"
POINTS = [(0.0, 1e-3), (0.0, 3e-4), (0.25, 1e-3), (0.25, 3e-4)]


# --------------------------------------------------------------------------- the grid


def test_points_are_the_product_in_order_and_members_point_major():
    cfg = tiny_config(grid=GRID, num_replicas=2)
    assert [tuple(p.values()) for p in population.points(cfg)] == POINTS
    members = population.members(cfg)
    assert len(members) == population.num_members(cfg) == 8
    seeds = replicas.seeds(cfg.seed, 2)
    assert [(m["point"], m["replica"], m["seed"]) for m in members[:3]] == [
        (0, 0, seeds[0]),
        (0, 1, seeds[1]),
        (1, 0, seeds[0]),
    ]
    assert (
        population.member_name(members[5])
        == f"dropout_rate=0.25,learning_rate=0.001,seed={seeds[1]}"
    )


def test_the_api_takes_a_grid_as_a_dict():
    cfg = fj.get_config("mlp", "test", grid={"dropout_rate": [0, 0.5]})
    assert cfg.grid == "dropout_rate=0,0.5" and population.num_points(cfg) == 2


@pytest.mark.parametrize(
    "grid, message",
    [
        ("batch_size=32,64", "batch_size cannot vary per member.*dropout_rate, learning_rate"),
        ("hidden_size=8,16", "config.hidden_size cannot vary per member"),
        ("droput_rate=0,0.5", "'droput_rate' names no config field nor argument of optax.adam"),
        ("weight_decay=0,1e-4", "'weight_decay' names no config field nor argument of optax.adam"),
        ("dropout_rate=", "dropout_rate has an empty value"),
        ("dropout_rate=0,,0.5", "dropout_rate has an empty value"),
        ("learning_rate=1e-3,fast", "learning_rate='fast' is not a number"),
        ("dropout_rate=0,1.0", r"config.grid: dropout_rate must lie in \[0, 1\), got 1.0"),
        ("learning_rate=1e-3,0", "config.grid: learning_rate must be a finite number > 0"),
        ("dropout_rate=0;dropout_rate=0.5", "names dropout_rate twice"),
    ],
)
def test_a_grid_that_cannot_work_is_one_config_error(grid, message):
    with pytest.raises(ConfigError, match=message):
        config_lib.validate(tiny_config(grid=grid))


# --------------------------------------------------------------------------- training


@pytest.mark.parametrize(
    "model, how, chunk", [("mlp", "vmap", 1), ("mlp", "unroll", 8), ("cnn", "unroll", 8)]
)
def test_each_member_trains_as_the_plain_run_of_its_point_and_seed(tmp_path, model, how, chunk):
    common = {"num_replicas": 2, "replica_map": how, "steps_per_chunk": chunk}
    state, history = train.train_and_evaluate(
        tiny_config(model, grid=GRID, **common), tmp_path / "population"
    )
    assert jax.tree.leaves(state.params)[0].shape[0] == 8
    assert {(r["point"], r["dropout_rate"], r["learning_rate"]) for r in history} == {
        (g, p, lr) for g, (p, lr) in enumerate(POINTS)
    }
    for g, (rate, lr) in enumerate(POINTS):
        plain = tmp_path / f"plain{g}"
        train.train_and_evaluate(
            tiny_config(model, dropout_rate=rate, learning_rate=lr, **common), plain
        )
        for k in range(2):
            assert_curves_close(
                metrics_lines(tmp_path / "population", 2 * g + k), metrics_lines(plain, k), 2e-5
            )
    summary = rundir.read_json(tmp_path / "population" / "summary.json")
    assert summary["num_members"] == 8 and "statistics" not in summary
    point = summary["points"][3]
    assert (point["dropout_rate"], point["learning_rate"], point["members"]) == (0.25, 3e-4, [6, 7])
    finals = [summary["replicas"][m]["final_test_loss"] for m in (6, 7)]
    assert point["statistics"]["final_test_loss"]["mean"] == pytest.approx(np.mean(finals))


def test_a_one_point_grid_is_the_plain_program_bit_for_bit(tmp_path):
    train.train_and_evaluate(tiny_config("mlp_dropout"), tmp_path / "plain")
    train.train_and_evaluate(
        tiny_config("mlp_dropout", grid="dropout_rate=0.25"), tmp_path / "grid"
    )
    plain = (tmp_path / "plain" / "metrics.jsonl").read_text()
    assert (tmp_path / "grid" / "metrics.jsonl").read_text() == plain
    summary = rundir.read_json(tmp_path / "plain" / "summary.json")
    assert summary["final_test_loss"] == summary["replicas"][0]["final_test_loss"]


def test_a_resumed_population_continues_the_same_curves_and_refuses_another_grid(tmp_path):
    cfg = tiny_config(grid="learning_rate=1e-3,3e-4", num_replicas=2)
    train.train_and_evaluate(cfg, tmp_path / "straight")
    short = tiny_config(grid=cfg.grid, num_replicas=2, num_train_steps=16)
    train.train_and_evaluate(short, tmp_path / "resumed")
    train.train_and_evaluate(cfg, tmp_path / "resumed")
    assert_curves_close(
        metrics_lines(tmp_path / "straight"), metrics_lines(tmp_path / "resumed"), 1e-6
    )
    with pytest.raises(RunError, match="grid='learning_rate=1e-3,3e-4'.*use another --workdir"):
        other = tiny_config(grid="learning_rate=1e-3,1e-4", num_replicas=2)
        train.train_and_evaluate(other, tmp_path / "resumed")


def test_a_non_finite_member_is_named_by_its_values(tmp_path):
    cfg = tiny_config(grid="learning_rate=1e-3,1e30", optimizer="sgd")
    with pytest.raises(TrainingError, match=rf"member 1 \(learning_rate=1e\+30,seed={cfg.seed}\)"):
        train.train_and_evaluate(cfg, tmp_path)


def test_a_member_restores_with_its_values(tmp_path):
    state, _ = train.train_and_evaluate(tiny_config(grid="dropout_rate=0,0.5"), tmp_path)
    trained = fj.restore(tmp_path, member=1)
    assert trained.config.dropout_rate == 0.5 and trained.config.grid == ""
    for a, b in zip(
        jax.tree.leaves(replicas.take(state.params, 1)),
        jax.tree.leaves(trained.variables["params"]),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    run = rundir.read_run(tmp_path)
    assert run.num_members == 2 and run.member(1).config["dropout_rate"] == 0.5


GRID2 = "dropout_rate=0,0.25"


def test_eight_devices_with_a_population_match_one(tmp_path):
    """8 devices: the points over 2 of them, each batch over 4."""
    one, eight = (
        train_on_devices(tmp_path / str(n), n, num_replicas=2, num_train_steps=16, grid=GRID2)
        for n in (1, 8)
    )
    assert_curves_close(one, eight, 1e-4)


def test_the_progress_line_names_members_and_the_leading_one():
    from fmnist_jax import progress

    records = [
        {"step": 8, "epoch": 1.0, "replica": m, "point": m, "seed": 0, "dropout_rate": rate,
         "train_loss": 1.0, "test_loss": loss}
        for m, (rate, loss) in enumerate([(0.0, 0.5), (0.25, 0.4)])
    ]  # fmt: skip
    line = progress.format_records(records, 24)
    assert "2 members, mean (range): train_loss 1.0000 (1.0000-1.0000)," in line
    assert "seed" not in line.split(";")[0] and "dropout_rate 0" not in line
    assert line.endswith("lowest test_loss 0.4000: dropout_rate=0.25,seed=0")


@pytest.mark.parametrize(
    "optimizer, kwargs, injected",
    [
        ("adam", {}, ("learning_rate",)),
        ("sgd", {"momentum": 0.9}, ("learning_rate",)),
        ("sgd", {}, ("learning_rate",)),
        ("adamw", {"weight_decay": 1e-2}, ("learning_rate", "weight_decay")),
    ],
)
def test_a_members_injected_hyperparameters_update_bit_for_bit_as_the_plain_optimizer(
    optimizer, kwargs, injected
):
    import optax

    from fmnist_jax import optimizers

    cfg = tiny_config(optimizer=optimizer, optimizer_kwargs=kwargs, learning_rate=1e-3)
    params = {"w": jax.random.normal(jax.random.PRNGKey(0), (50, 20))}
    results = []
    for varied in ((), injected):
        tx, p = optimizers.create_optimizer(cfg, varied), params
        state = tx.init(p)
        for i in range(50):
            grads = jax.tree.map(lambda w, i=i: jnp.sin(w * (i + 1.0)), p)
            updates, state = jax.jit(tx.update)(grads, state, p)
            p = optax.apply_updates(p, updates)
        results.append(np.asarray(p["w"]))
    np.testing.assert_array_equal(results[0], results[1])
