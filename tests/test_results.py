"""Tests of fmnist_jax.results: the file `make report` writes beside REPORT.md (provenance and
every number the report quotes) and the rule that finds the numbers a text quotes."""

import datetime
import importlib.metadata
import json
import re
import subprocess

import pytest

from fmnist_jax import report, results
from tests.conftest import REPO
from tests.test_report import ADVERSARIAL, write_runs


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """REPORT.md and results.json of the synthetic runs of test_report."""
    root = tmp_path_factory.mktemp("report")
    runs, figures = write_runs(root)
    out = report.write_report(runs, figures, root / "REPORT.md")
    return out.read_text(), json.loads((root / results.RESULTS_FILE).read_text())


def test_the_file_names_the_commit_date_and_machine_that_wrote_it(written):
    _, found = written
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], check=False, cwd=REPO, capture_output=True, text=True
    )
    p = found["provenance"]
    assert p["commit"] == (head.stdout.strip() if head.returncode == 0 else "unknown")
    assert p["dirty"] in (True, False, None)
    written_at = datetime.datetime.fromisoformat(p["date"])
    assert written_at.utcoffset() == datetime.timedelta(0)
    assert abs(datetime.datetime.now(datetime.UTC) - written_at).total_seconds() < 600
    assert p["machine"]["cores"] >= 1 and "backend" not in p["machine"]
    assert p["machine"]["jax"] == importlib.metadata.version("jax") and p["machine"]["cpu"]


def test_outside_a_checkout_the_commit_is_unknown(monkeypatch):
    monkeypatch.setattr(results, "_git", lambda *args: None)
    p = results.provenance()
    assert (p["commit"], p["dirty"]) == ("unknown", None)


def test_the_file_holds_the_runs_verdicts_and_attack_the_report_quotes(written):
    text, found = written
    assert list(found["runs"]) == ["mlp", "mlp_dropout", "cnn"]  # cnn_dropout did not run
    mlp = found["runs"]["mlp"]
    assert (mlp["final_test_accuracy"], mlp["min_test_loss"], mlp["min_test_loss_step"]) == (
        0.885,
        0.30,
        10_000,
    )
    assert mlp["final_gap"]["mean"] == pytest.approx(0.25)
    for v in found["verdicts"]:  # the same verdicts as the report's claims table
        assert f"| {v['claim']} | **{v['status']}** | {v['evidence']} |" in text
    assert found["adversarial"]["methods"] == ADVERSARIAL["methods"]
    assert found["sweep"] is None and found["theory"] is None  # not run


def test_every_number_of_the_reports_results_table_is_in_the_file(written):
    text, found = written
    table = results.section(text, "Results")
    assert results.quoted_numbers(table) and results.unquoted(table, found) == []


def test_the_numbers_a_text_quotes():
    text = (
        "accuracy 89.93 % [89.54, 90.32]; loss 0.2843 at step 5,500; change −0.0027 and +27.5 %;"
        " jax 0.12.8, rates 0,0.25, `--config.lr=0.1`, 200 images, 95 % interval, 2026-12-07."
    )
    found = results.quoted_numbers(text)
    assert found == ["89.93", "89.54", "90.32", "0.2843", "5,500", "−0.0027", "+27.5"]


def test_a_number_matches_at_its_own_precision_as_itself_or_a_percentage():
    file = {"runs": {"a": {"acc": 0.89934, "loss": -0.00271, "step": 5500}}, "v": ["l1 +27.5 %"]}
    assert results.unquoted("89.93 % 0.8993 −0.0027 5,500 +27.5 27.50", file) == ["27.50"]
    assert results.unquoted("89.94 %", file) == ["89.94"]
    assert results.unquoted("0.0027", file) == ["0.0027"]  # the sign counts
    assert results.unquoted("0.25 and 1,000", None) == ["0.25", "1,000"]


def test_a_section_ends_at_the_next_heading():
    markdown = "# T\n\n## Results\n\nsome 0.25\n\n### sub\n\n1.5\n\n## Next\n\n2.5\n"
    assert results.section(markdown, "Results") == "\nsome 0.25\n\n### sub\n\n1.5\n\n"
    assert results.section(markdown, "Missing") == ""
    assert re.search("2.5", results.section(markdown, "Next"))
