"""Tests of fmnist_jax.adversarial.runner and the package around it: records and summaries,
the image choice, the package's lazy re-exports, and the command line
(`python -m fmnist_jax.adversarial`) end to end in a subprocess."""

import csv
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from fmnist_jax import adversarial, train
from fmnist_jax.adversarial import presets, runner, search
from fmnist_jax.config import load_experiment
from fmnist_jax.errors import ConfigError, RunError, TrainingError, UsageError
from tests.conftest import REPO, assert_one_clear_line


def fake_result(n: int = 3) -> search.AttackResult:
    """An AttackResult of `n` samples with distinct, easily checked values."""
    i = np.arange(n)
    return search.AttackResult(
        adversarial=np.zeros((n, 28, 28, 1), np.float32),
        targets=(i + 1).astype(np.int32),
        steps=(10 * i).astype(np.int32),
        success=i % 2 == 0,
        p_target=np.linspace(0.96, 0.5, n).astype(np.float32),
        predicted=(i + 1).astype(np.int32),
        p_predicted=np.full(n, 0.9, np.float32),
        clean_predicted=i.astype(np.int32),
        clean_p_predicted=np.full(n, 0.99, np.float32),
        l0=(5 * i).astype(np.int32),
        l1=(1.5 * i).astype(np.float32),
        l2=(0.5 * i).astype(np.float32),
        linf=np.full(n, 0.07, np.float32),
        l1_weight=np.full(n, 0.25, np.float32),
    )


# --------------------------------------------------------------------------- records and summary


def test_records_hold_plain_values_one_row_per_image_and_round_trip_the_csv(tmp_path):
    indices, labels = np.array([40, 7, 19]), np.array([0, 1, 2])
    records = runner.to_records("sign", fake_result(), indices, labels)
    assert [r["index"] for r in records] == [40, 7, 19]
    first = records[0]
    assert list(first) == list(runner.RECORD_FIELDS)
    assert first["method"] == "sign" and first["label"] == 0 and first["target"] == 1
    assert first["success"] is True and records[1]["success"] is False
    assert all(type(v) in (str, int, float, bool) for r in records for v in r.values())
    assert records[2]["steps"] == 20 and records[2]["l1"] == pytest.approx(3.0)
    assert records[2]["l0"] == 10 and records[2]["l1_weight"] == 0.25
    no_weights = runner.to_records("sign", fake_result()._replace(l1_weight=None), indices, labels)
    assert no_weights[0]["l1_weight"] is None

    runner.write_records(tmp_path / "records.csv", records)
    with open(tmp_path / "records.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and tuple(rows[0]) == runner.RECORD_FIELDS
    assert [int(r["index"]) for r in rows] == [40, 7, 19] and rows[1]["success"] == "False"


def test_summary_counts_successful_samples_only():
    def record(success, steps, l1, clean=1):
        p = 0.96 if success else 0.5
        norms = {"l0": int(10 * l1), "l1": l1, "l2": l1 / 10, "linf": 0.1}
        return {
            "success": success,
            "steps": steps,
            "p_target": p,
            "label": 1,
            "clean_predicted": clean,
            **norms,
        }

    records = [record(True, 10, 4.0), record(True, 30, 8.0), record(False, 300, 50.0, clean=2)]
    s = runner.summarize(records, wall_time_s=2.0, compile_time_s=1.0)
    assert s["success_rate"] == pytest.approx(2 / 3)
    assert s["median_steps"] == 20 and s["mean_steps"] == 20
    assert s["median_l1"] == 6.0 and s["mean_l2"] == pytest.approx(0.6)
    assert s["median_l0"] == 60 and s["mean_l0"] == 60
    assert "L0 60" in runner.format_summary(s)
    assert s["mean_p_target"] == pytest.approx((0.96 * 2 + 0.5) / 3)
    assert s["clean_accuracy"] == pytest.approx(2 / 3)
    assert s["attacks_per_sec"] == 1.5 and s["compile_time_s"] == 1.0
    none = runner.summarize([record(False, 5, 1.0)], 1.0, 0.0)
    assert none["success_rate"] == 0 and none["median_l1"] is None
    assert "n/a" in runner.format_summary(none)  # the progress line survives no successes


# --------------------------------------------------------------------------- inputs


def test_images_are_distinct_follow_the_key_and_their_number_is_checked():
    a = runner.choose_images(jax.random.key(0), 100, 50)
    assert len(set(a.tolist())) == 50 and a.min() >= 0 and a.max() < 100
    np.testing.assert_array_equal(a, runner.choose_images(jax.random.key(0), 100, 50))
    assert not np.array_equal(a, runner.choose_images(jax.random.key(1), 100, 50))
    for bad in (0, 101):
        with pytest.raises(UsageError, match="--num_images must lie in 1..100"):
            runner.choose_images(jax.random.key(0), 100, bad)


def test_run_without_a_checkpoint_raises_before_writing_anything(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(load_experiment("cnn", "test").to_dict()))
    with pytest.raises((RunError, TrainingError), match="checkpoint"):
        adversarial.run(tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bad_method_or_override_raises_before_the_model_is_loaded(tmp_path):
    with pytest.raises(ConfigError, match="unknown method 'cw'"):
        runner.run(tmp_path / "missing", tmp_path / "out", methods=["cw"])
    with pytest.raises(ConfigError, match="threshold"):
        runner.run(tmp_path / "missing", tmp_path / "out", threshold=2.0)


# --------------------------------------------------------------------------- the package


def test_package_reexports_the_modules_public_names():
    assert adversarial.attack is search.attack and adversarial.make_attack is search.make_attack
    assert adversarial.AttackConfig is presets.AttackConfig and adversarial.run is runner.run
    assert adversarial.search is search  # the module; one search is search.search
    for name in adversarial.__all__:
        assert getattr(adversarial, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = adversarial.nope


def test_importing_the_package_loads_no_jax_defines_no_flags_and_leaves_the_environment():
    code = (
        "import os, sys, fmnist_jax; from absl import flags; env = dict(os.environ);"
        " import fmnist_jax.adversarial as a; a.DEFAULT_METHOD;"
        " print('jax' in sys.modules, 'workdir' in flags.FLAGS, env == dict(os.environ))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["False", "False", "True"]


# --------------------------------------------------------------------------- command line


def run_cli(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", TF_ENABLE_ONEDNN_OPTS="0")
    return subprocess.run(
        [sys.executable, "-m", "fmnist_jax.adversarial", *map(str, args)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


FLAG_NAMES = (
    "workdir", "output", "num_images", "seed", "method", "threshold", "max_steps", "epsilon",
    "l1_reduction", "pool_size", "slow_images",
)  # fmt: skip


def test_cli_help_exits_0_and_lists_the_flags():
    proc = run_cli("--help")
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in FLAG_NAMES:
        assert f"--{name}" in proc.stdout, name
    assert "--verbose" in proc.stdout and "python -m fmnist_jax.adversarial" in proc.stdout


def test_cli_without_workdir_exits_2_with_one_line(tmp_path):
    proc = run_cli("--output", tmp_path / "out")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "--workdir" in lines[0]


def test_cli_with_an_unknown_method_exits_2_with_one_line(tmp_path):
    proc = run_cli("--workdir", tmp_path, "--output", tmp_path / "out", "--method", "gd,cw")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "'cw'" in lines[0]


def test_cli_without_checkpoint_exits_with_one_line(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    config = load_experiment("cnn_dropout", "test")
    (workdir / "config.json").write_text(json.dumps(config.to_dict()))
    proc = run_cli("--workdir", workdir, "--output", tmp_path / "out")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "checkpoints" in lines[0]
    assert not (tmp_path / "out").exists()


def test_cli_refuses_an_output_that_is_a_file_before_any_work(tmp_path):
    """Before the model is loaded (this run has no checkpoint): one line naming the file."""
    workdir, output = tmp_path / "run", tmp_path / "taken"
    workdir.mkdir()
    (workdir / "config.json").write_text(json.dumps(load_experiment("cnn", "test").to_dict()))
    output.write_text("mine")
    for member in ("0", "all"):  # all: the members' folders would be made inside it
        proc = run_cli("--workdir", workdir, "--output", output, "--member", member)
        assert_one_clear_line(proc, f"--output {output} cannot be a folder: {output} is a file")
    assert output.read_text() == "mine"


SUMMARY_KEYS = {
    "success_rate", "median_steps", "mean_steps", "mean_l0", "median_l0", "mean_l1",
    "median_l1", "mean_l2", "num_images", "l1_reduction", "max_steps",
    "median_l2", "mean_linf", "median_linf", "mean_p_target", "clean_accuracy", "wall_time_s",
    "compile_time_s", "attacks_per_sec",
}  # fmt: skip


def test_cli_end_to_end(tmp_path):
    """A tiny ConvNet run (8 steps on synthetic data, so p(target) stays low: the threshold
    is lowered to 0.12 for some searches to succeed), then the command line on 16 images, the
    exercise's rule first and minl1 on the first 8 (the slow methods' images)."""
    workdir, output = tmp_path / "cnn_dropout", tmp_path / "adversarial"
    config = load_experiment("cnn_dropout", "test")
    config.num_train_steps = 8
    train.train_and_evaluate(config, workdir)
    methods = ["exercise", presets.DEFAULT_METHOD, "pgd", "minl1"]
    flags = [
        "--num_images=16",
        "--slow_images=8",
        "--max_steps=60",
        "--threshold=0.12",
        "--method=" + ",".join(methods),
    ]
    proc = run_cli(f"--workdir={workdir}", f"--output={output}", *flags)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "success" in proc.stderr  # the progress lines (absl logs to stderr)

    summary = json.loads((output / "summary.json").read_text())
    assert list(summary["methods"]) == methods
    assert summary["default_method"] == "exercise"
    assert summary["default_rule"].startswith("gradient descent, lr 0.001, CE(target) + 0.05")
    assert summary["num_images"] == 16 and summary["seed"] == 0 and summary["slow_images"] == 8
    assert summary["threshold"] == 0.12 and summary["workdir"] == str(workdir)
    assert summary["configs"]["pgd"]["max_steps"] == 60 and summary["pool_size"] == 32
    sizes = {name: 8 if name in presets.SLOW_METHODS else 16 for name in methods}
    for name, s in summary["methods"].items():
        assert SUMMARY_KEYS <= set(s), name
        assert s["num_images"] == sizes[name] and s["max_steps"] == 60, name
        assert s["attacks_per_sec"] > 0 and 0.0 <= s["clean_accuracy"] <= 1.0, name
        if name == "exercise":  # lr 0.001 for 60 steps: too little for the untrained model
            continue
        assert 0.0 < s["success_rate"] <= 1.0, name
        assert 0 < s["median_l1"] and 0 < s["median_linf"] <= 1.0
    assert summary["methods"]["exercise"]["l1_reduction"] == "mean"
    assert summary["methods"]["pgd"]["l1_reduction"] is None  # no L1 term
    assert summary["methods"]["pgd"]["median_linf"] <= 0.1 + 1e-6

    with open(output / "records.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == sum(sizes.values())
    assert all(r["target"] != r["label"] for r in rows)
    for r in rows:
        assert (r["success"] == "True") == (float(r["p_target"]) >= 0.12)
        assert int(r["steps"]) <= 60  # minl1: exactly 60 model calls
    by_method = {m: [(r["index"], r["target"]) for r in rows if r["method"] == m] for m in methods}
    for m in methods:  # the same images and targets for every method
        assert by_method[m] == by_method["sign"][: sizes[m]], m
    for name in ("figure.png", "figure-sign.png", "figure-pgd.png", "minl1.png", "curves.png"):
        assert (output / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (output / name).stat().st_size > 10_000


def test_figure7_is_the_first_method_titled_with_its_rule(tmp_path, monkeypatch):
    """write_figures: figure.png for the first method (the exercise's rule) with the rule in
    its title, figure-<name>.png for the others, minl1.png comparing the three."""
    from fmnist_jax.plotting import adversarial as plots

    drawn = []
    monkeypatch.setattr(plots, "plot_examples", lambda path, *a: drawn.append((path.name, a[-1])))
    monkeypatch.setattr(plots, "plot_comparison", lambda path, *a: drawn.append((path.name, a)))
    monkeypatch.setattr(plots, "plot_curves", lambda path, *a: drawn.append((path.name, a)))
    monkeypatch.setattr(runner, "replay", lambda *a: np.zeros((2, 1)))
    names = ["exercise", "sign", "minl1"]
    results = {m: fake_result() for m in names}
    configs = {m: presets.METHODS[m] for m in names}
    written = runner.write_figures(tmp_path, None, np.zeros((3, 28, 28, 1)), results, configs, {})
    assert written == [
        "figure.png",
        "figure-sign.png",
        "figure-minl1.png",
        "minl1.png",
        "curves.png",
    ]
    rule = "gradient descent, lr 0.001, CE(target) + 0.05 * ||x' - x||_1 (mean over pixels)"
    assert drawn[0] == ("figure.png", f"targeted adversarial search, exercise:\n{rule}")
    assert list(drawn[3][1][1]) == names  # minl1.png: the three methods' results
    np.testing.assert_array_equal(drawn[3][1][2], [0, 2])  # the images all three reached


def test_cli_attacks_every_member_on_the_same_images_and_targets(tmp_path):
    """--member all: each replica of a 2-replica run into --output/<k>, on the same images and
    targets, each with its own model (so its own outcomes); a bad --member is one line."""
    workdir, output = tmp_path / "cnn", tmp_path / "attacks"
    config = load_experiment("cnn", "test")
    config.num_train_steps, config.num_replicas = 8, 2
    train.train_and_evaluate(config, workdir)
    flags = ["--num_images=6", "--max_steps=20", "--threshold=0.12", "--method=minl1"]
    proc = run_cli(f"--workdir={workdir}", f"--output={output}", "--member=all", *flags)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {}
    for k in (0, 1):
        assert json.loads((output / str(k) / "summary.json").read_text())["member"] == k
        with open(output / str(k) / "records.csv") as f:
            rows[k] = list(csv.DictReader(f))
    assert [(r["index"], r["target"]) for r in rows[0]] == [
        (r["index"], r["target"]) for r in rows[1]
    ]
    assert [r["clean_p_predicted"] for r in rows[0]] != [r["clean_p_predicted"] for r in rows[1]]

    proc = run_cli(f"--workdir={workdir}", f"--output={output}", "--member=first", *flags)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: --member must be a member index (0, 1, ...) or all, got 'first'"
    )
    proc = run_cli(f"--workdir={workdir}", f"--output={output}", "--member=2", *flags)
    assert proc.returncode != 0 and "member 2 does not exist" in proc.stderr.splitlines()[-1]
