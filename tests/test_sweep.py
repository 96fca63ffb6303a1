"""The dropout-rate sweep's verdicts on fabricated numbers (both ways), its table and figure,
and the command line end to end on the :test-sized MLP."""

import json
import re
import subprocess
import sys
import types
from importlib.metadata import version

import pytest

from fmnist_jax import population, rundir, runtime, sweep
from fmnist_jax.errors import UsageError
from tests.conftest import REPO


def per_rate(losses: dict, accuracies: dict) -> dict:
    """{rate: {field: per-replica values}} as `collect` builds it."""
    return {
        rate: {
            "final_test_loss": losses[rate],
            "min_test_loss": [v - 0.01 for v in losses[rate]],
            "final_test_accuracy": accuracies[rate],
        }
        for rate in losses
    }


def test_0_25_best_by_the_lowest_mean_loss_with_small_differences():
    v = sweep.model_verdict(
        per_rate(
            {0.0: [0.40, 0.41, 0.42], 0.25: [0.30, 0.31, 0.29], 0.5: [0.32, 0.33, 0.31]},
            {0.0: [0.89] * 3, 0.25: [0.900, 0.902, 0.898], 0.5: [0.897] * 3},
        )
    )
    assert v["best_rate"] == 0.25 and v["exercise_rate"] == "the best"
    assert v["accuracy_spread"] == pytest.approx(0.003) and v["differences_small"]


def test_0_25_within_the_noise_of_the_best_when_the_paired_interval_holds_0():
    # Rate 0.4 is best on the mean, but 0.25 - 0.4 is +0.01, -0.01, +0.005 replica by replica.
    v = sweep.model_verdict(
        per_rate(
            {0.25: [0.31, 0.29, 0.305], 0.4: [0.30, 0.30, 0.30]}, {0.25: [0.9] * 3, 0.4: [0.9] * 3}
        )
    )
    assert v["best_rate"] == 0.4 and v["exercise_rate"] == "within the noise of the best"
    low, high = v["difference_interval"]
    assert low < 0 < high


def test_0_25_worse_than_the_best_and_large_differences():
    v = sweep.model_verdict(
        per_rate(
            {0.1: [0.30, 0.31, 0.29], 0.25: [0.35, 0.36, 0.345]},
            {0.1: [0.91] * 3, 0.25: [0.89] * 3},
        )
    )
    assert v["best_rate"] == 0.1 and v["exercise_rate"] == "worse than the best"
    assert v["difference_interval"][0] > 0
    assert v["accuracy_spread"] == pytest.approx(0.02) and not v["differences_small"]
    line = sweep.verdict_line(v)
    assert "0.25 is worse than the best (+0.0517 [+0.0445, +0.0588] nats" in line
    assert "span 2.00 points: not small" in line


def flags(models="", rates="", replicas=(), steps=()):
    return types.SimpleNamespace(
        models=models, rates=rates, replicas=list(replicas), num_train_steps=list(steps)
    )


def test_the_plan_sweeps_the_experiments_declaring_rates_with_their_sizes():
    declared = (0.0, 0.1, 0.25, 0.4, 0.5)
    assert sweep.plan(flags()) == {"mlp": (list(declared), 3, 0), "cnn": (list(declared), 3, 0)}
    f = flags("cnn", "0,0.25", ["2", "cnn=1"], ["cnn=3000"])
    assert sweep.plan(f) == {"cnn": ([0.0, 0.25], 1, 3000)}
    f = flags(replicas=["cnn=2,5", "4"], steps=["100", "mlp=0"])  # one experiment's wins
    assert sweep.plan(f) == {"mlp": (list(declared), 4, 0), "cnn": (list(declared), 2, 100)}


@pytest.mark.parametrize(
    "f, words",
    [
        (flags("linreg"), "--models 'linreg': choose from mlp, cnn"),
        (flags(replicas=["0"]), "--replicas '0': give N or <experiment>=N for mlp, cnn"),
        (flags(steps=["cnn_bn=5"]), "--num_train_steps 'cnn_bn=5'"),
        (flags(rates="0,1"), "--rates '0,1': give comma-separated numbers in [0, 1)"),
    ],
)
def test_a_bad_plan_is_a_usage_error(f, words):
    with pytest.raises(UsageError, match=re.escape(words)):
        sweep.plan(f)


def test_the_sweep_command_trains_every_rate_and_writes_table_verdict_and_figure(tmp_path):
    """mlp:test-sized runs through the real command (its experiment config at 16 steps)."""
    out = tmp_path / "sweep"
    cmd = [
        sys.executable, "-m", "fmnist_jax.sweep", f"--runs={out}", "--models=mlp",
        "--rates=0,0.25", "--replicas=2", "--num_train_steps=16",
    ]  # fmt: skip
    # --synthetic: random images instead of Fashion-MNIST, to keep the test small.
    proc = subprocess.run(
        [*cmd, "--synthetic"], check=False, cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((out / "sweep" / sweep.RESULT_FILE).read_text())
    model = result["models"]["mlp"]
    assert model["num_replicas"] == 2 and list(model["rates"]) == ["0", "0.25"]
    # At a length of its own no experiment's run is a point: one program, rates x seeds.
    assert result["sources"] == {"mlp": {"0": "sweep/mlp", "0.25": "sweep/mlp"}}
    run = rundir.read_run(out / "sweep" / "mlp")
    assert run.num_members == 4 and run.config["grid"] == "dropout_rate=0,0.25"
    finals = [r["final_test_loss"] for r in run.summary["replicas"] if r["dropout_rate"] == 0.25]
    assert model["rates"]["0.25"]["final_test_loss"]["mean"] == pytest.approx(sum(finals) / 2)
    assert run.config["num_train_steps"] == 16
    assert "4 members, mean (range)" in proc.stderr
    # The sweep's process has the settings every command line gets (it once lacked the flag).
    flag = runtime.tuned_xla_flags("", version("jaxlib"), runtime.installed_plugins())
    assert flag in run.summary["runtime"]["XLA_FLAGS"]
    assert (out / "sweep" / sweep.FIGURE_FILE).stat().st_size > 10_000
    assert result["num_train_steps"] == {"mlp": 16}
    assert (
        "| mlp | 16 | 0.25 | 2 |" in proc.stdout
        and "**mlp**: lowest mean final test" in proc.stdout
    )


def test_bad_rates_are_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "fmnist_jax.sweep", f"--runs={tmp_path}", "--rates=0.25,1.5"],
        check=False, cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --rates '0.25,1.5'")


def test_the_experiments_at_rates_0_and_0_25_are_points_of_their_models_population():
    assert sweep.family("cnn") == {0.0: "cnn", 0.25: "cnn_dropout"}
    assert sweep.family("mlp") == {0.0: "mlp", 0.25: "mlp_dropout"}
    assert sweep.sources("cnn", [0.0, 0.1, 0.25], 0) == {
        0.0: "cnn",
        0.1: "sweep/cnn",
        0.25: "cnn_dropout",
    }
    assert set(sweep.sources("cnn", [0.0, 0.25], 3000).values()) == {"sweep/cnn"}


def test_each_member_is_trained_once_where_the_experiment_keeps_it(tmp_path, monkeypatch):
    from fmnist_jax import train

    trained = []
    monkeypatch.setattr(
        train, "train_and_evaluate", lambda c, w: trained.append((c.name, c.grid, w))
    )
    sweep.train_all(tmp_path, {"cnn": ([0.0, 0.1, 0.25, 0.5], 3, 0)})
    assert trained == [
        ("cnn", "", tmp_path / "cnn"),
        ("cnn_dropout", "", tmp_path / "cnn_dropout"),
        ("cnn_sweep", "dropout_rate=0.1,0.5", tmp_path / "sweep" / "cnn"),
    ]


def fake_run(path, config: dict, seeds, losses, rates=None):
    """A finished run folder: one summary row per member (with its rate in a population)."""
    rows = [
        {"seed": seed, "final_test_loss": loss, "min_test_loss": loss - 0.01}
        | {"final_test_accuracy": 0.9}
        | ({"dropout_rate": rates[i]} if rates else {})
        for i, (seed, loss) in enumerate(zip(seeds, losses, strict=True))
    ]
    path.mkdir(parents=True)
    rundir.write_config(
        path, {"num_train_steps": 100, "seed": 0, "num_replicas": len(seeds)} | config
    )
    rundir.write_summary(path, {"replicas": rows})


def test_the_sweep_reads_each_rate_where_it_was_trained_and_pairs_the_seeds(tmp_path):
    fake_run(tmp_path / "mlp", {"dropout_rate": 0.0}, [0, 7], [0.40, 0.42])
    fake_run(tmp_path / "mlp_dropout", {"dropout_rate": 0.25}, [0, 7], [0.30, 0.31])
    grid = population.format_grid({"dropout_rate": [0.1, 0.5]})
    members = {"dropout_rate": 0.0, "grid": grid, "num_replicas": 2}
    losses = [0.37, 0.38, 0.35, 0.36]
    fake_run(tmp_path / "sweep" / "mlp", members, [0, 7] * 2, losses, rates=[0.1, 0.1, 0.5, 0.5])
    result = sweep.collect(tmp_path, {"mlp": ([0.0, 0.1, 0.25, 0.5], 2, 0)})
    rates = result["models"]["mlp"]["rates"]
    assert rates["0"]["final_test_loss"]["mean"] == pytest.approx(0.41)
    assert rates["0.1"]["final_test_loss"]["mean"] == pytest.approx(0.375)
    assert rates["0.25"]["final_test_loss"]["mean"] == pytest.approx(0.305)
    assert rates["0.5"]["final_test_loss"]["mean"] == pytest.approx(0.355)
    assert result["models"]["mlp"]["verdict"]["best_rate"] == 0.25
    assert result["sources"]["mlp"] == {
        "0": "mlp", "0.1": "sweep/mlp", "0.25": "mlp_dropout", "0.5": "sweep/mlp"
    }  # fmt: skip


def test_members_that_do_not_pair_are_one_line(tmp_path):
    fake_run(tmp_path / "mlp", {"dropout_rate": 0.0}, [0, 7], [0.40, 0.42])
    fake_run(tmp_path / "mlp_dropout", {"dropout_rate": 0.25, "seed": 5}, [5, 9], [0.3, 0.31])
    told = r"mlp: member 0 does not pair \(rate 0 \(.*/mlp\): seed 0, .*rate 0.25 \(.*: seed 5,"
    with pytest.raises(UsageError, match=told):
        sweep.collect(tmp_path, {"mlp": ([0.0, 0.25], 2, 0)})
