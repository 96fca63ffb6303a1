"""Tests of fmnist_jax.declarations: what the five exercise experiments declare, and that a new
experiment file starting from one of them (cnn_bn from cnn) changes none of the exercise's
figures, claims or sweep unless it declares its own."""

import shutil
from pathlib import Path

import pytest

from fmnist_jax import config as config_lib
from fmnist_jax import declarations, verdicts
from fmnist_jax.errors import ConfigError
from fmnist_jax.rundir import Run

CNN_BN = """
from fmnist_jax.config import load_experiment, with_variant


def get_config(variant=""):
    c = load_experiment("cnn")
    c.name = "cnn_bn"
    c.hidden_size = 256  # stands for another model
    {report}
    return with_variant(c, variant)
"""
OWN_REPORT = (
    'c.report = {"experiment": "cnn_bn", "label": "BN ConvNet", "figure": "fig8_cnn_bn.png",'
    ' "title": "Figure 8: ConvNet with batch norm", "claims": "overfits", "sweep_rates": "0,0.5"}'
)


def experiments_copy(tmp_path: Path, monkeypatch) -> Path:
    """A copy of experiments/ without cnn_bn.py (the tests write their own), from which the
    experiments are read from now on."""
    folder = tmp_path / "experiments"
    shutil.copytree(config_lib.experiments_dir(), folder)
    (folder / "cnn_bn.py").unlink(missing_ok=True)
    monkeypatch.setattr(config_lib, "experiments_dir", lambda: folder)
    return folder


@pytest.fixture
def experiments_dir(tmp_path, monkeypatch):
    return experiments_copy(tmp_path, monkeypatch)


def add_cnn_bn(folder: Path, report: str = "") -> None:
    (folder / "cnn_bn.py").write_text(CNN_BN.format(report=report))


def test_the_exercise_experiments_declare_figures_2_to_6_claims_and_sweep():
    found = declarations.experiments()
    names = ["linreg", "mlp", "mlp_dropout", "cnn", "cnn_dropout", "cnn_bn"]
    assert [d.name for d in found] == names
    assert found[-1] == declarations.Declared("cnn_bn")  # experiments/cnn_bn.py declares nothing
    figures = [(d.figure, d.runs) for d in declarations.figures(found)]
    assert figures == [
        ("fig2_linreg_loss.png", ("linreg",)),
        ("fig3_mlp.png", ("mlp",)),
        ("fig4_cnn.png", ("cnn",)),
        ("fig5_mlp_dropout.png", ("mlp", "mlp_dropout")),
        ("fig6_cnn_dropout.png", ("cnn", "cnn_dropout")),
    ]
    assert [d.name for d in found if d.sweep_rates] == ["mlp", "cnn"]
    assert found[4].claims[-1] == verdicts.ATTACK_NOISE and found[1].claims == ("overfits",)


def test_a_derived_experiment_inherits_no_declaration(experiments_dir):
    before = declarations.experiments()
    claims_before = [v.claim for v in verdicts.check_claims({}, None)]
    add_cnn_bn(experiments_dir)
    after = declarations.experiments()
    assert after[:-1] == before and after[-1] == declarations.Declared("cnn_bn")
    assert [v.claim for v in verdicts.check_claims({}, None)] == claims_before
    assert config_lib.load_experiment("cnn_bn").report.figure == "fig4_cnn.png"  # inherited


def test_a_derived_experiment_declaring_its_own_block_gets_its_figure_and_claims(experiments_dir):
    add_cnn_bn(experiments_dir, OWN_REPORT)
    found = declarations.experiments()
    assert found[-1].name == "cnn_bn" and found[-1].sweep_rates == ("0", "0.5")
    assert declarations.figures(found)[-1].figure == "fig8_cnn_bn.png"
    claims = [v.claim for v in verdicts.check_claims({}, None)]
    assert "The BN ConvNet without dropout over-fits (train loss falls, test loss rises)" in claims


def test_a_runs_recorded_block_is_read_before_the_experiment_file():
    recorded = {"report": {"experiment": "mlp", "figure": "other.png", "title": "Figure 9: x"}}
    found = declarations.experiments({"mlp": Run(Path("mlp"), recorded, [], None)})
    (mlp,) = [d for d in found if d.name == "mlp"]
    assert (mlp.figure, mlp.claims) == ("other.png", ())
    # figure 9: after the others, its dropout variant with it
    assert [d.name for d in found if d.figure][-2:] == ["mlp", "mlp_dropout"]
    # A block the run did not declare as its own (cnn's config trained in cnn_dropout's folder)
    # leaves the experiment file's.
    other = Run(Path("cnn_dropout"), {"report": {"experiment": "cnn", "figure": "x.png"}}, [], None)
    found = declarations.experiments({"cnn_dropout": other})
    assert [d.figure for d in found if d.name == "cnn_dropout"] == ["fig6_cnn_dropout.png"]


@pytest.mark.parametrize(
    "report, words",
    [
        ('c.report = {"experiment": "cnn_bn", "claims": "overfit"}', "unknown claim 'overfit'"),
        ('c.report = {"experiment": "cnn_bn", "claims": "dropout_gap"}', "needs report.dropout_of"),
        ('c.report = {"experiment": "cnn_bn", "dropout_of": "cnn_b"}', "'cnn_b' is no experiment"),
    ],
)
def test_a_bad_declaration_is_a_config_error_naming_the_experiment(experiments_dir, report, words):
    add_cnn_bn(experiments_dir, report)
    with pytest.raises(ConfigError, match=f"experiment 'cnn_bn': .*{words}"):
        verdicts.check_claims({}, None)
