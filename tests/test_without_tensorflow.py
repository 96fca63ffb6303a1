"""TensorFlow only where it is needed: a run trains, the attack, figures and report run where
TensorFlow is not installed (one warning line says the event files need it); processes other
than 0 of a multi-process run never import it; a missing optional dependency is one line with
the pip command that adds it.

"Not installed" is simulated in subprocesses by a `sitecustomize` that hides the modules named
in $HIDE_MODULES from every import finder (an `import` then fails exactly as when the package is
absent, and `importlib.util.find_spec` returns None), and that records at exit which of
TensorFlow and tensorboard the process had imported ($LOADED_LOG)."""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO
from tests.test_distributed import _free_port

SITECUSTOMIZE = textwrap.dedent(
    """
    import atexit, os, sys

    HIDDEN = tuple(n for n in os.environ.get("HIDE_MODULES", "").split(",") if n)


    class Hidden:
        def __init__(self, inner):
            self.inner = inner

        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in HIDDEN:
                return None
            return self.inner.find_spec(name, path, target)

        def __getattr__(self, name):
            return getattr(self.inner, name)


    sys.meta_path[:] = [Hidden(f) for f in sys.meta_path]


    @atexit.register
    def _record():
        if os.environ.get("LOADED_LOG"):
            roots = {m.split(".")[0] for m in sys.modules}
            with open(os.environ["LOADED_LOG"], "w") as f:
                f.write(",".join(sorted(roots & {"tensorflow", "tensorboard"})))
    """
)
HINT = "pip install tensorflow-cpu"
needs_tensorflow = pytest.mark.skipif(
    importlib.util.find_spec("tensorflow") is None, reason="TensorFlow is not installed"
)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    folder = tmp_path_factory.mktemp("site")
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return folder


def _env(site, hide: str = "tensorflow", loaded_log=None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    path = os.pathsep.join(p for p in (str(site), str(REPO), env.get("PYTHONPATH")) if p)
    env.update(PYTHONPATH=path, HIDE_MODULES=hide, JAX_PLATFORMS="cpu")
    if loaded_log:
        env["LOADED_LOG"] = str(loaded_log)
    return env


def _python(env, *args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=timeout, check=False,
    )  # fmt: skip


def test_the_hider_makes_tensorflow_look_uninstalled(site, tmp_path):
    script = (
        "import importlib.util; assert importlib.util.find_spec('tensorflow') is None\n"
        "try:\n    import tensorflow\nexcept ModuleNotFoundError as e:\n    print(e.name)\n"
    )
    result = _python(_env(site, loaded_log=tmp_path / "loaded"), "-c", script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["tensorflow"]
    assert (tmp_path / "loaded").read_text() == ""


@pytest.fixture(scope="module")
def run_without_tensorflow(site, tmp_path_factory):
    """mlp:test trained, attacked, plotted and reported where TensorFlow is not installed."""
    root = tmp_path_factory.mktemp("no_tf")
    runs, workdir = root / "runs", root / "runs" / "mlp"
    loaded = root / "loaded"
    env = _env(site, loaded_log=loaded)
    train = _python(env, "-m", "fmnist_jax.main", "--config", "mlp:test", f"--workdir={workdir}")
    imported = loaded.read_text()
    attack = _python(
        env, "-m", "fmnist_jax.adversarial", f"--workdir={workdir}",
        f"--output={root / 'attack'}", "--num_images=8", "--method=sign", "--max_steps=5",
    )  # fmt: skip
    figures = _python(env, "-m", "fmnist_jax.plotting", f"--runs={runs}", f"--out={root / 'fig'}")
    report = _python(
        env, "-m", "fmnist_jax.report", f"--runs={runs}", f"--figures={root / 'fig'}",
        f"--out={root / 'REPORT.md'}",
    )  # fmt: skip
    return root, workdir, imported, {"train": train, "attack": attack, "figures": figures,
                                     "report": report}  # fmt: skip


def test_training_writes_everything_but_event_files_and_says_so_once(run_without_tensorflow):
    _, workdir, imported, results = run_without_tensorflow
    train = results["train"]
    assert train.returncode == 0, train.stderr[-3000:]
    assert imported == ""  # not even tensorboard
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [8, 16, 24]
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["steps"] == 24 and summary["versions"]["tensorflow"]  # names what pip has
    assert (workdir / "config.json").is_file()
    assert (workdir / "checkpoints" / "24").is_dir()
    assert not list(workdir.rglob("events.out.tfevents.*"))
    warnings = [line for line in train.stderr.splitlines() if "TensorBoard" in line]
    assert len(warnings) == 1 and HINT in warnings[0], train.stderr[-3000:]
    assert "Traceback" not in train.stderr
    assert "steps/s" in train.stderr  # the progress lines, without CLU's periodic actions
    assert any("scalars" in p.name for p in workdir.iterdir())  # kept for a later replay


def test_the_attack_figures_and_report_run_without_tensorflow(run_without_tensorflow):
    root, _, _, results = run_without_tensorflow
    for name in ("attack", "figures", "report"):
        assert results[name].returncode == 0, (name, results[name].stderr[-3000:])
        assert "tensorflow" not in results[name].stderr.lower(), name
    assert (root / "attack" / "summary.json").is_file()
    assert (root / "REPORT.md").is_file()


@needs_tensorflow
def test_a_resumed_run_with_tensorflow_replays_what_the_run_without_it_logged(tmp_path, site):
    workdir = tmp_path / "run"
    first = _python(
        _env(site), "-m", "fmnist_jax.main", "--config", "mlp:test", f"--workdir={workdir}",
        "--config.num_train_steps=16", "--config.progress_every_steps=4",
    )  # fmt: skip
    assert first.returncode == 0, first.stderr[-3000:]
    assert not list(workdir.rglob("events.out.tfevents.*"))
    second = _python(
        _env(site, hide=""), "-m", "fmnist_jax.main", "--config", "mlp:test",
        f"--workdir={workdir}", "--config.progress_every_steps=4",
    )  # fmt: skip
    assert second.returncode == 0, second.stderr[-3000:]
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(str(workdir / "test"), size_guidance={"tensors": 0})
    acc.Reload()
    assert [e.step for e in acc.Tensors("loss")] == [8, 16, 24]
    train = event_accumulator.EventAccumulator(str(workdir / "train"), {"tensors": 0})
    train.Reload()
    assert 8 in [e.step for e in train.Tensors("steps_per_sec")]  # logged by the first run


@needs_tensorflow
def test_processes_other_than_0_never_import_tensorflow(tmp_path, site):
    """Two processes on 127.0.0.1; only process 0 imports TensorFlow, for its event files."""
    address = f"127.0.0.1:{_free_port()}"
    workdir = tmp_path / "run"
    procs = []
    for i in (0, 1):
        env = _env(site, hide="", loaded_log=tmp_path / f"loaded_{i}")
        env["JAX_NUM_CPU_DEVICES"] = "1"
        cmd = [
            sys.executable, "-m", "fmnist_jax.main", "--config", "mlp_dropout:test",
            "--config.num_train_steps=8", f"--workdir={workdir}",
            f"--coordinator_address={address}", "--num_processes=2", f"--process_id={i}",
            "--initialization_timeout=60", "--heartbeat_timeout_seconds=10",
        ]  # fmt: skip
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True))
    errors = [p.communicate(timeout=240)[1] for p in procs]
    for p, err in zip(procs, errors, strict=True):
        assert p.returncode == 0, err[-3000:]
    assert "tensorflow" in (tmp_path / "loaded_0").read_text()
    assert (tmp_path / "loaded_1").read_text() == ""
    assert list((workdir / "test").glob("events.out.tfevents.*"))


def test_the_tfds_source_without_tensorflow_is_one_line_with_the_pip_command(tmp_path, site):
    env = _env(site, hide="tensorflow,tensorflow_datasets")
    env.pop("FMNIST_DATA_DIR", None)
    result = _python(
        env, "-m", "fmnist_jax.main", "--config", "mlp", f"--workdir={tmp_path / 'run'}",
        "--config.data_dir=", "--config.num_train_steps=1",
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    assert "the tfds source needs tensorflow" in line and HINT in line
    assert "Traceback" not in result.stderr


def test_bench_without_torch_is_one_line_with_the_pip_command(tmp_path, site):
    env = _env(site, hide="torch,torchattacks")
    result = _python(env, "benchmarks/bench.py", "--models=mlp", "--steps=1", "--repeats=1")
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: the PyTorch rows need torch, not installed here")
    assert "pip install -r benchmarks/requirements.txt" in line
