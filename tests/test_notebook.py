"""notebooks/colab.ipynb: stored clean, and runs headless from the first cell to the last on 8
CPU devices with a tiny step count and synthetic data (the study an accelerator runs)."""

import os
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import nbformat
import pytest

from tests.conftest import REPO

NOTEBOOK = REPO / "notebooks" / "colab.ipynb"
# Prepended to the executed copy: which interpreter the kernel runs.
PROBE = "import sys\nprint(sys.prefix)"


def _read():
    return nbformat.read(NOTEBOOK, as_version=4)


def test_notebook_is_valid_and_stored_without_outputs():
    nb = _read()
    nbformat.validate(nb)
    assert nb.nbformat == 4
    assert nb.metadata.kernelspec.name == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "no code cells"
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]
    sources = "\n".join(c.source for c in code)
    needed = ("REPO_URL", "FMNIST_NOTEBOOK_", "fj.fit(", "runner.run(", "jax.devices()")
    needed += ('"load_ext", "tensorboard"', '"tensorboard", f"--logdir {RUNS}"')
    for word in needed:
        assert word in sources, word
    opens = sources.index('"tensorboard", f"--logdir {RUNS}"')
    assert opens < sources.index("fj.fit("), "TensorBoard opens before training"


def _first_code_cell() -> str:
    return next(c.source for c in _read().cells if c.cell_type == "code")


@pytest.mark.parametrize("old_jax", [False, True])
def test_first_cell_on_colab_keeps_a_supported_jax(old_jax, monkeypatch, capsys):
    """On Colab (faked; pip recorded, not run) the first cell keeps a jax within the tested range
    (this environment's) and installs no jax, so no restart; an older one it replaces by the
    jax of the stack tested on this Python. Its last line says what it found."""
    from fmnist_jax import runtime

    calls = []
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append(cmd))
    if old_jax:
        real = runtime.installed_version
        monkeypatch.setattr(
            runtime, "installed_version", lambda n: "0.4.30" if n == "jax" else real(n)
        )
    monkeypatch.chdir(REPO)
    exec(compile(_first_code_cell(), "colab.ipynb, first code cell", "exec"), {})  # noqa: S102
    line = capsys.readouterr().out.strip().splitlines()[-1]
    args = [a for cmd in calls for a in cmd]
    jax_args = [a for a in args if a.startswith(("jax=", "jax[", "jaxlib="))]
    if old_jax:
        pins = "requirements-latest.txt" if sys.version_info >= (3, 12) else "requirements.txt"
        (pin,) = [x for x in (REPO / pins).read_text().splitlines() if x.startswith("jax==")]
        assert jax_args == [pin] and str(REPO / pins) in args
        assert line.startswith("found jax 0.4.30 replaced by") and "Restart session" in line
    else:
        assert jax_args == [] and "--no-deps" in args, calls
        version = runtime.installed_version("jax")
        assert line.startswith(f"found jax {version} (the runtime's, kept; tested >=0.10.2,<")


def _code_cell(starts: str) -> str:
    return next(c.source for c in _read().cells if c.source.startswith(starts))


@pytest.mark.parametrize(
    ("accelerator", "devices", "replicas"),
    [(True, 8, 8), (True, 1, 4), (True, 2, 4), (True, 3, 6), (True, 16, 16), (False, 1, 1)],
)
def test_parameters_fill_the_devices_on_an_accelerator(accelerator, devices, replicas, monkeypatch):
    """On an accelerator the whole exercise at its own length, its replicas a multiple of the
    device count (at least 4); on a CPU the two ConvNets, one seed, 2,000 steps."""
    for name in [k for k in os.environ if k.startswith("FMNIST_NOTEBOOK_")]:
        monkeypatch.delenv(name)
    fake_jax = types.SimpleNamespace(device_count=lambda: devices)
    found = {"os": os, "Path": Path, "jax": fake_jax, "ACCELERATOR": accelerator}
    exec(compile(_code_cell("def param("), "colab.ipynb, parameters", "exec"), found)  # noqa: S102
    assert found["REPLICAS"] == replicas and found["FULL"] == accelerator
    if accelerator:
        assert found["EXPERIMENTS"] == ["linreg", "mlp", "mlp_dropout", "cnn", "cnn_dropout"]
        assert (found["STEPS"], found["ATTACK_IMAGES"], found["ATTACK_METHODS"]) == (0, 1000, "")
    else:
        assert (found["EXPERIMENTS"], found["STEPS"]) == (["cnn", "cnn_dropout"], 2000)


@pytest.fixture
def venv_kernel(tmp_path, monkeypatch):
    """A "python3" kernelspec that runs this interpreter, found before any other."""
    from ipykernel import kernelspec
    from jupyter_client.kernelspec import KernelSpecManager

    kernelspec.install(kernel_name="python3", prefix=str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter" / "share" / "jupyter"))
    spec = KernelSpecManager().get_kernel_spec("python3")
    assert spec.argv[0] == sys.executable, spec.argv
    return "python3"


SIZES = {  # the study an accelerator runs, at a few steps: 2 replicas on a 2 x 4 mesh
    "FULL": "1",
    "STEPS": "10",
    "REPLICAS": "2",
    "DATASET": "synthetic",
    "ATTACK_IMAGES": "8",
    "ATTACK_METHODS": "exercise",
}


def test_notebook_runs_headless(venv_kernel, tmp_path, monkeypatch):
    from nbclient import NotebookClient

    from fmnist_jax import report, verdicts

    runs = tmp_path / "runs"
    for name, value in {**SIZES, "RUNS": str(runs)}.items():
        monkeypatch.setenv(f"FMNIST_NOTEBOOK_{name}", value)
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.setenv(  # the kernel shares the tests' persistent XLA cache
        "JAX_COMPILATION_CACHE_DIR",
        os.environ.get("JAX_COMPILATION_CACHE_DIR")
        or os.path.join(tempfile.gettempdir(), "fmnist-xla"),
    )
    nb = _read()
    nb.cells.insert(0, nbformat.v4.new_code_cell(PROBE))
    client = NotebookClient(
        nb,
        kernel_name=venv_kernel,
        timeout=600,
        resources={"metadata": {"path": str(REPO / "notebooks")}},
    )
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError naming the cell if any cell fails
    print(f"notebook executed in {time.perf_counter() - start:.1f} s")

    probe = nb.cells[0].outputs[0]["text"].strip()
    assert probe == sys.prefix, f"the kernel ran {probe}, not this environment {sys.prefix}"
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    text = "\n".join(o.get("text", "") for o in outputs)
    markdown = "\n".join(o.get("data", {}).get("text/markdown", "") for o in outputs)
    assert "full study: linreg, mlp, mlp_dropout, cnn, cnn_dropout; 10 steps, 2 replica(s)" in text
    assert "on 8 device(s)" in text
    assert f"TensorBoard: %load_ext tensorboard, then %tensorboard --logdir {runs}" in text
    for name in ("linreg", "mlp", "mlp_dropout", "cnn", "cnn_dropout"):
        assert f"{name}: trained 10 steps, 2 member(s)" in text, text[-3000:]
        summary = report.load_runs(runs)[name].summary
        assert (summary["num_replicas"], summary["device_count"]) == (2, 8)
    assert text.count("10/10 [") >= 5, text[-2000:]  # each run's live bar reached the last step
    assert "step 5 (epoch " in text and "exercise: success " in text
    # The verdicts shown are the report's, computed from the runs the notebook wrote.
    found = report.load_runs(runs)
    adversarial = report.load_adversarial(runs)
    table = report.claims_table(
        verdicts.check_claims(found, adversarial, report.load_attack_replicas(runs))
    )
    assert table in markdown and table in (runs / "REPORT.md").read_text()
    assert report.results_table(found) in markdown
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 6, "expected Figure 7 and figures 2-6"
    figures = sorted(p.name for p in (runs / "figures").glob("*.png"))
    assert figures == [f"fig{i}_{n}.png" for i, n in enumerate(FIGURES, 2)]
    assert (runs / "adversarial" / "summary.json").is_file()


FIGURES = ("linreg_loss", "mlp", "cnn", "mlp_dropout", "cnn_dropout")
