"""Tests of fmnist_jax.report: loading runs through the run directory, the data's provenance
(official files by checksum), the markdown report and its command line; no TensorFlow."""

import hashlib
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from fmnist_jax import replicas, report, rundir, splits
from fmnist_jax.errors import RunError
from tests.conftest import REPO
from tests.test_declarations import add_cnn_bn, experiments_copy

STEPS = np.arange(1000, 20001, 1000)
V_LOSS = np.abs(STEPS - 10_000) / 10_000 + 0.3  # lowest at step 10,000
FALLING = np.linspace(0.8, 0.1, len(STEPS))
IDX_NAMES = tuple(splits.OFFICIAL_SHA256)
ADVERSARIAL = {  # the shape the attack writes
    "methods": {
        "gd": {"success_rate": 0.8, "mean_p_target": 0.97, "median_l1": 12.5, "note": "x"},
        "fgsm": {"success_rate": 0.2, "median_steps": 40},
    },
    "default_method": "gd",
    "threshold": 0.95,
    "num_images": 100,
}


def idx_folder(path: Path, content: bytes = b"idx") -> dict[str, str]:
    """Four stand-in IDX files in `path`; returns their sha256."""
    path.mkdir(parents=True)
    for name in IDX_NAMES:
        (path / name).write_bytes(content + name.encode())
    return {name: hashlib.sha256((path / name).read_bytes()).hexdigest() for name in IDX_NAMES}


def write_run(run_dir, data_dir, curves=True, **fields):
    """A finished run as plain files: config.json, metrics.jsonl (when `curves`), summary.json."""
    run_dir.mkdir(parents=True)
    rundir.write_config(run_dir, {"model": fields.get("model", "mlp"), "batch_size": 64})
    for step, train, test in zip(STEPS, FALLING, V_LOSS, strict=True) if curves else ():
        record = {"step": int(step), "replica": 0, "train_loss": float(train)}
        record["test_loss"] = float(test)
        rundir.append_record(run_dir, {**record, "train_accuracy": 0.9, "test_accuracy": 0.9})
    data = {"source": "idx", "location": str(data_dir), "num_train": 60000, "num_test": 10000}
    data["split"] = "offline-copy"  # the split data.load_idx recorded
    rundir.write_summary(
        run_dir,
        {
            "model": "mlp",
            "dropout_rate": 0.0,
            "steps": 20000,
            "steps_per_epoch": 938,
            "final_test_accuracy": 0.885,
            "best_test_accuracy": 0.893,
            "best_test_accuracy_step": 8000,
            "final_test_loss": 0.40,
            "min_test_loss": 0.30,
            "min_test_loss_step": 10_000,
            "final_train_loss": 0.15,
            "backend": "cpu",
            "device_kind": "cpu",
            "device_count": 1,
            "wall_time_s": 321.0,
            "images_per_sec": 900.0,
            "data": data,
            "versions": {"jax": "0.10.2", "flax": "0.12.8"},
            **fields,
        },
    )


def write_runs(root: Path) -> tuple[Path, Path]:
    """runs/ (mlp, mlp_dropout, cnn, the attack; cnn_dropout missing) and figures/ (fig3)."""
    runs, figures, data = root / "runs", root / "figures", root / "data"
    idx_folder(data)
    write_run(runs / "mlp", data)
    dropout = {"final_test_loss": 0.33, "final_train_loss": 0.28, "dropout_rate": 0.25}
    write_run(runs / "mlp_dropout", data, curves=False, **dropout)
    write_run(runs / "cnn", data, model="cnn")
    (runs / "adversarial").mkdir()
    rundir.write_json(runs / "adversarial" / "summary.json", ADVERSARIAL)
    (runs / "adversarial" / "figure.png").write_bytes(b"png")
    figures.mkdir()
    (figures / "fig3_mlp.png").write_bytes(b"png")
    return runs, figures


@pytest.fixture
def offline_copy_checksums(tmp_path, monkeypatch):
    """The fabricated data folder's files stand for the offline copy."""
    monkeypatch.setattr(splits, "OFFLINE_COPY_SHA256", idx_folder(tmp_path / "copy"))
    return tmp_path / "copy"


@pytest.fixture
def report_text(tmp_path):
    runs, figures = write_runs(tmp_path)
    out = report.write_report(runs, figures, tmp_path / "docs" / "REPORT.md")
    return out.read_text()


# --------------------------------------------------------------------------- loading


def test_load_runs_reads_finished_runs_and_skips_missing_and_unfinished(tmp_path):
    runs, _ = write_runs(tmp_path)
    (runs / "linreg").mkdir()
    rundir.write_config(runs / "linreg", {})  # started, not finished: no summary.json
    loaded = report.load_runs(runs)
    assert [n for n, r in loaded.items() if r is not None] == ["mlp", "mlp_dropout", "cnn"]
    assert loaded["linreg"] is None and loaded["cnn_dropout"] is None
    assert loaded["mlp"].curve("test_loss").steps[0] == 1000
    assert report.load_adversarial(runs) == ADVERSARIAL
    assert report.load_adversarial(tmp_path / "nowhere") is None


def test_a_finished_run_with_invalid_json_is_an_error_not_a_missing_run(tmp_path):
    runs, _ = write_runs(tmp_path)
    (runs / "cnn" / "summary.json").write_text('{"final_test_loss": ')
    with pytest.raises(RunError, match="summary.json: not valid JSON"):
        report.load_runs(runs)


# --------------------------------------------------------------------------- provenance


def test_idx_files_with_the_official_checksums_are_the_official_split(tmp_path, monkeypatch):
    folder = tmp_path / "official"
    monkeypatch.setattr(splits, "OFFICIAL_SHA256", idx_folder(folder))
    assert splits.idx_split(folder) == "official"
    text = splits.provenance({"source": "idx", "split": splits.idx_split(folder)})
    assert text.startswith("measured on Fashion-MNIST, the official split")
    assert "non-official" not in text


def test_idx_files_without_the_official_checksums_are_not_the_official_split(tmp_path):
    folder = tmp_path / "other"
    idx_folder(folder)
    assert splits.idx_split(folder) == "non-official"
    text = splits.provenance({"source": "idx", "split": splits.idx_split(folder)})
    assert "not the official Fashion-MNIST files" in text and "not known to be the official" in text


def test_the_offline_copy_is_named_with_its_own_split(offline_copy_checksums):
    assert splits.idx_split(offline_copy_checksums) == "offline-copy"
    text = splits.provenance({"source": "idx", "split": splits.idx_split(offline_copy_checksums)})
    assert "offline copy" in text and "non-official split" in text


def test_unreadable_idx_files_leave_the_split_unknown(tmp_path):
    assert splits.idx_split(tmp_path / "gone") is None
    assert "official or not is unknown" in splits.provenance({"source": "idx", "split": None})


def test_a_split_recorded_in_the_summary_is_taken_as_is(tmp_path):
    idx_folder(tmp_path / "data")  # non-official files: the recorded split wins, none re-read
    recorded = {"source": "idx", "location": str(tmp_path / "data"), "split": "official"}
    assert "the official split" in splits.provenance(recorded)


def test_report_links_figures_relative_to_itself(report_text):
    assert "![Figure 3: Multi-Layer-Perceptron" in report_text
    assert "](../figures/fig3_mlp.png)" in report_text
    assert "](../runs/adversarial/figure.png)" in report_text
    assert "fig4_cnn.png" not in report_text  # not drawn: a note instead of a broken link
    assert "not drawn yet: needs runs cnn, then `make figures`" in report_text


def test_report_has_the_results_table_and_provenance(report_text):
    assert "| run | model | dropout | replicas | steps | final test acc |" in report_text
    row = (
        "| mlp | mlp | 0 | 1 | 20,000 | 88.50% | 89.30% (step 8,000) | 0.4000"
        " | 0.3000 (step 10,000)"
    )
    assert row + " | 0.1500 | 0.2500 |" in report_text
    assert "non-official split: per class the first 1,000 of 7,000 are test" in report_text
    assert "60,000 train / 10,000 test" in report_text
    assert "| cpu | cpu × 1 | 1 | 321 | 900 |" in report_text and "jax 0.10.2" in report_text
    assert "| gd | 0.8 | 0.97 | 12.5 | — |" in report_text
    assert "`summary.json` and `metrics.jsonl`" in report_text


def test_report_gives_each_claim_a_verdict(report_text):
    lines = {line.split(" | ")[0]: line for line in report_text.splitlines() if "| **" in line}
    one = "**holds (1 run)**"
    assert one in lines["| The MLP without dropout over-fits (train loss falls, test loss rises)"]
    turn = lines["| The ConvNet's test loss turns after about 10,000 iterations"]
    assert one in turn and "step 11,000 (epoch 11.7)" in turn
    assert one in lines["| Dropout 0.25 reduces the MLP's final train–test loss gap"]
    cnn_gap = lines["| Dropout 0.25 reduces the ConvNet's final train–test loss gap"]
    assert "**not checked (run missing)**" in cnn_gap and "missing: cnn_dropout" in cnn_gap
    assert "**holds (1 model)**" in lines["| Adversarial examples reach p(target) ≥ 0.95"]


def test_a_run_of_replicas_shows_each_number_as_mean_and_interval():
    results = [
        {"final_test_accuracy": a, "final_test_loss": l, "final_train_loss": 0.1}
        for a, l in ((0.90, 0.30), (0.92, 0.32), (0.91, 0.31))
    ]
    stats = {
        "final_test_accuracy": replicas.statistics([0.90, 0.92, 0.91]),
        "final_test_loss": replicas.statistics([0.30, 0.32, 0.31]),
    }
    s = {"model": "mlp", "num_replicas": 3, "replicas": results, "statistics": stats}
    row = report.summary_row("mlp", s)
    half = 4.302652729911275 * 0.01 / np.sqrt(3)  # t(0.975, 2) * std / sqrt(3)
    assert row[3] == "3"
    assert row[5] == f"91.00% [{0.91 - half:.2%}, {0.91 + half:.2%}]"
    assert row[7] == f"0.3100 [{0.31 - half:.4f}, {0.31 + half:.4f}]"
    assert row[10] == f"0.2100 [{0.21 - half:.4f}, {0.21 + half:.4f}]"  # gaps 0.20, 0.22, 0.21


def test_figure_7s_caption_names_the_method_its_budget_and_l1_reading():
    adversarial = {
        "default_method": "exercise",
        "methods": {"exercise": {"max_steps": 3000, "l1_reduction": "mean"}},
    }
    caption = report.fig7_caption(adversarial)
    assert "by the method 'exercise', at most 3,000 steps, L1 read as its mean" in caption


def test_the_theory_section_shows_make_theorys_numbers():
    theory = {
        "jaxpr_equations": {"naive": 10, "custom": 4},
        "fold_differences": {"MLP, 3 hidden layers": 9.4e-16, "ConvNet, SAME, padded with 0": 0.48},
        "max_difference_exact": 9.4e-16,
        "same_padding_conv1_gap": {"interior": 1.8e-15, "border": 2.01},
        "same_padding_prediction_error": 3e-16,
        "sigmoid_tail_gradients": {"-1000.0": [float("nan"), 0.0]},
    }
    text = report.theory_section(theory)
    assert "ConvNet, SAME, padded with 0" in text and "0.48" in text
    assert "border" in text and "2.01" in text and "3e-16" in text
    lines = text.splitlines()
    assert any("naive" in line and line.rstrip().endswith(" 10") for line in lines)
    assert any("sigma - sigma^2" in line and line.rstrip().endswith(" 4") for line in lines)
    assert any(line.split()[:3] == ["x", "=", "-1000"] and "nan" in line for line in lines)
    assert "Not run yet" in report.theory_section(None)


def sections(text: str) -> dict[str, str]:
    return {part.split("\n", 1)[0]: part for part in text.split("\n## ")}


def test_a_new_experiment_adds_its_row_and_changes_no_claim_or_figure(tmp_path, monkeypatch):
    runs, figures = write_runs(tmp_path)
    before = sections(report.write_report(runs, figures, tmp_path / "before.md").read_text())
    add_cnn_bn(experiments_copy(tmp_path, monkeypatch))
    write_run(runs / "cnn_bn", tmp_path / "data", model="cnn")
    after = sections(report.write_report(runs, figures, tmp_path / "after.md").read_text())
    for name in ("Claims of the exercise", "Figures", "Adversarial examples"):
        assert after[name] == before[name]
    rows = after["Results"].splitlines()
    assert rows[:-1] == before["Results"].splitlines() and rows[-1].startswith("| cnn_bn | cnn |")


# --------------------------------------------------------------------------- no TensorFlow, CLI


def python(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], check=False, cwd=REPO, capture_output=True, text=True, timeout=300
    )


def test_figures_and_report_import_no_tensorflow(tmp_path):
    script = f"""
        import sys
        from pathlib import Path

        from fmnist_jax import report
        from fmnist_jax.plotting import curves
        from tests.test_report import write_runs
        from tests.test_plotting_curves import write_run

        root = Path({str(tmp_path)!r})
        runs, figures = write_runs(root)
        write_run(runs / "linreg", accuracy=False)
        written = curves.make_figures(runs, figures)
        assert sorted(written) == ["cnn", "linreg", "mlp"], written
        text = report.write_report(runs, figures, root / "REPORT.md").read_text()
        assert "](figures/fig4_cnn.png)" in text
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "tensorboard"))
        assert not loaded, loaded
        print("ok")
    """
    result = python("-c", textwrap.dedent(script))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ok"]


def test_cli_help_exits_0():
    result = python("-m", "fmnist_jax.report", "--help")
    assert result.returncode == 0, result.stderr
    assert "python -m fmnist_jax.report --runs runs --figures figures --out REPORT.md" in (
        result.stdout
    )


def test_cli_writes_the_report_and_warns_of_missing_runs(tmp_path):
    runs, figures = write_runs(tmp_path)
    out = tmp_path / "REPORT.md"
    result = python(
        "-m", "fmnist_jax.report", "--runs", str(runs), "--figures", str(figures), "--out", str(out)
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"wrote {out} and {tmp_path / 'results.json'}"
    assert f"warning: run {runs / 'cnn_dropout'} missing (no summary.json)" in result.stderr
    assert out.read_text().startswith("# Fashion-MNIST ConvNets: reproduction report")


BLOCK_MATPLOTLIB = """
import runpy, sys
sys.modules["matplotlib"] = None  # as if it were not installed
sys.argv = sys.argv[1:]
runpy.run_module(sys.argv[0], run_name="__main__")
"""


def test_without_matplotlib_the_report_is_written_and_the_figures_are_one_line(tmp_path):
    runs, figures = write_runs(tmp_path)
    out = tmp_path / "REPORT.md"
    flags = ("--runs", str(runs), "--figures", str(figures), "--out", str(out))
    result = python("-c", BLOCK_MATPLOTLIB, "fmnist_jax.report", *flags)
    assert result.returncode == 0, result.stderr
    assert "](figures/fig3_mlp.png)" in out.read_text()
    figures_out = tmp_path / "new"
    flags = ("--runs", str(runs), "--out", str(figures_out))
    result = python("-c", BLOCK_MATPLOTLIB, "fmnist_jax.plotting", *flags)
    assert result.returncode == 2 and not figures_out.exists()
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: the figures need matplotlib")
    assert "pip install matplotlib" in line


def test_cli_turns_an_invalid_run_into_one_line_and_exit_2(tmp_path):
    runs, _ = write_runs(tmp_path)
    (runs / "mlp" / "summary.json").write_text("{")
    result = python("-m", "fmnist_jax.report", "--runs", str(runs), "--out", str(tmp_path / "r"))
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and "summary.json: not valid JSON" in line


def test_the_device_table_gives_a_resumed_runs_time_over_all_its_processes():
    from fmnist_jax.rundir import Run

    timing = {"num_replicas": 1, "wall_time_s": 40.0, "wall_time_total_s": 100.0}
    table = report.device_section({"cnn": Run(Path("cnn"), {}, [], timing)})
    assert "| 100 |" in table and "| 40 |" not in table
