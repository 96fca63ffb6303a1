"""README.md's Results section quotes only numbers the committed results file it names holds
(results/<name>.json: a fresh clone's results.json, written by `make report`), and names that
file's commit and date; naming a file not committed, it quotes no number at all."""

import json
import re

from fmnist_jax import report, results
from tests.conftest import REPO
from tests.test_report import write_runs


def test_readmes_results_quote_only_the_committed_results_file():
    section = results.section((REPO / "README.md").read_text(), "Results")
    assert section.strip(), "README.md has no '## Results' section"
    named = re.findall(r"results/[\w.-]+\.json", section)  # where its numbers come from
    assert named, "README.md's Results section names no results/<name>.json"
    committed = REPO / named[0]
    found = json.loads(committed.read_text()) if committed.is_file() else None
    unquoted = results.unquoted(section, found)
    where = named[0] if found else f"no number until {named[0]} is committed"
    assert not unquoted, f"README.md's Results quote numbers not in {where}: {unquoted}"
    if found:
        provenance = found["provenance"]
        assert provenance["commit"][:7] in section and provenance["date"][:10] in section


def test_the_check_names_a_number_the_file_does_not_hold(tmp_path):
    """README-style quotes of a synthetic run set's results.json pass; one altered number is
    named, and only it."""
    runs, figures = write_runs(tmp_path)
    out = report.write_report(runs, figures, tmp_path / "REPORT.md")
    found = json.loads((out.parent / results.RESULTS_FILE).read_text())
    quote = (
        "| `mlp` | 1 | accuracy {acc} % (best 89.30 %); minimum test loss 0.3000 at step 10,000 |\n"
        "| `adversarial` | | 80.0 % of images reach p(target) ≥ 0.95, median L1 12.50 |\n"
        "Dropout changes the MLP's final test loss by -0.0700 nats."
    )
    assert results.unquoted(quote.format(acc="88.50"), found) == []
    assert results.unquoted(quote.format(acc="88.60"), found) == ["88.60"]


def test_a_row_is_checked_against_the_run_it_names(tmp_path):
    """The attack's median L1 is in the file, but not in the MLP's run: quoted on the MLP's row
    it is named; in prose, or on the attack's row, it passes."""
    runs, figures = write_runs(tmp_path)
    out = report.write_report(runs, figures, tmp_path / "REPORT.md")
    found = json.loads((out.parent / results.RESULTS_FILE).read_text())
    assert results.unquoted("| `mlp` | 1 | accuracy 88.50 %, L1 12.50 |", found) == ["12.50"]
    assert results.unquoted("| `adversarial` | | median L1 12.50 |", found) == []
    assert results.unquoted("The attack's median L1 is 12.50.", found) == []


def test_a_row_naming_a_run_the_file_lacks_is_told(tmp_path):
    """A row whose first cell names in `code` a run the file does not hold is told by that name,
    whatever its numbers; a row whose first cell is plain text is read against the whole file."""
    runs, figures = write_runs(tmp_path)
    out = report.write_report(runs, figures, tmp_path / "REPORT.md")
    found = json.loads((out.parent / results.RESULTS_FILE).read_text())
    assert results.unquoted("| `resnet` | 1 | accuracy 88.50 % |", found) == [
        "`resnet` (not in the file)"
    ]
    assert results.unquoted("| rate 0 | 1 | accuracy 88.50 % |", found) == []
    assert results.unquoted("| `resnet` | 1 | accuracy 88.50 % |", None) == ["88.50"]
