"""The package as pip builds and installs it: what the wheel holds and requires, that the pins of
the requirements files lie inside its ranges, and that its commands run outside the checkout."""

import email.parser
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from email.message import Message
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from fmnist_jax import runtime
from tests.conftest import REPO

SOURCES = ("pyproject.toml", "README.md", "fmnist_jax", "experiments")
RUNTIME = (
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "clu",
    "orbax-checkpoint",
    "ml-collections",
    "tensorflow-datasets",
    "tensorboard",
    "matplotlib",
    "numpy",
    "absl-py",
)
# platform -> the TensorFlow build that has wheels there (checked on PyPI for 2.21.0)
TENSORFLOW = {
    ("linux", "x86_64"): "tensorflow-cpu",
    ("linux", "aarch64"): "tensorflow",
    ("darwin", "arm64"): "tensorflow",
}


def _run(cmd: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    environ.update(TF_CPP_MIN_LOG_LEVEL="3", **env)
    return subprocess.run(
        cmd, check=False, cwd=cwd, env=environ, capture_output=True, text=True, timeout=300
    )


def _build_requirements_installed() -> bool:
    """Whether pyproject.toml's build-system requirements are installed here (then the wheel is
    built offline, without an isolated build environment)."""
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["build-system"]["requires"]
    for req in map(Requirement, requires):
        try:
            if importlib.metadata.version(req.name) not in req.specifier:
                return False
        except importlib.metadata.PackageNotFoundError:
            return False
    return True


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel pip builds from a copy of the checkout's sources (a build writes build/ and
    *.egg-info beside them: not into the checkout); offline when setuptools is installed."""
    tmp = tmp_path_factory.mktemp("wheel")
    for name in SOURCES:
        src, dst = REPO / name, tmp / "src" / name
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dst)
    isolation = ["--no-build-isolation"] if _build_requirements_installed() else []
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-w", str(tmp / "dist")]
    out = _run([*cmd, str(tmp / "src")], cwd=tmp)
    assert out.returncode == 0, out.stdout + out.stderr
    (built,) = (tmp / "dist").glob("fmnist_jax-*.whl")
    return built


@pytest.fixture(scope="module")
def metadata(wheel) -> Message:
    with zipfile.ZipFile(wheel) as z:
        (name,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        return email.parser.Parser().parsestr(z.read(name).decode())


def _requires(metadata, extra: str = "") -> dict[str, Requirement]:
    """Requires-Dist by name: the runtime ones, or those of one extra."""
    out = {}
    for line in metadata.get_all("Requires-Dist"):
        req = Requirement(line)
        in_extra = bool(extra) and req.marker is not None and f'extra == "{extra}"' in str(req)
        if in_extra or (not extra and (req.marker is None or "extra" not in str(req.marker))):
            out[req.name] = req
    return out


def _pins(path: Path) -> list[Requirement]:
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return [Requirement(line) for line in lines if line]


def test_wheel_holds_every_module_and_the_experiments_inside_the_package(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"fmnist_jax/experiments/cnn.py", "fmnist_jax/experiments/__init__.py"} <= names
    expected = {
        f"fmnist_jax/{p.relative_to(REPO / 'fmnist_jax').as_posix()}"
        for p in (REPO / "fmnist_jax").rglob("*.py")
        if "__pycache__" not in p.parts
    }
    expected |= {f"fmnist_jax/experiments/{p.name}" for p in (REPO / "experiments").glob("*.py")}
    missing = sorted(expected - names)
    packages = sorted({"fmnist_jax." + ".".join(Path(n).parts[1:-1]) for n in missing})
    assert not missing, f"not in the wheel: {missing}; add {packages} to pyproject.toml's packages"
    assert not {n.split("/")[0] for n in names} & {"experiments", "tests", "benchmarks"}


def test_metadata_requires_the_stack_with_a_tensorflow_per_platform(metadata):
    assert metadata["Name"] == "fmnist-jax" and metadata["Requires-Python"] == ">=3.11"
    requires = _requires(metadata)
    assert set(RUNTIME) <= set(requires)
    for pinned in ("0.10.2", "0.11.2", "0.12.0.1"):  # requirements*.txt, the GPU image
        assert pinned in requires["jax"].specifier and pinned in requires["jaxlib"].specifier
    assert "0.13.0" not in requires["jax"].specifier and "0.10.1" not in requires["jax"].specifier
    assert requires["jax"].specifier == SpecifierSet(">={},<{}".format(*runtime.SUPPORTED_JAX))
    for (system, machine), build in TENSORFLOW.items():
        env = {"sys_platform": system, "platform_machine": machine}
        chosen = [n for n in ("tensorflow", "tensorflow-cpu") if requires[n].marker.evaluate(env)]
        assert chosen == [build], (system, machine)
    extras = {e: _requires(metadata, e) for e in ("dev", "bench", "cuda12", "cuda13", "tpu")}
    dev = {"pytest", "pytest-xdist", "ruff", "nbclient", "nbformat", "ipykernel"}
    assert set(extras["dev"]) == dev
    assert set(extras["bench"]) == {"torch", "torchattacks"}
    for extra in ("cuda12", "cuda13", "tpu"):
        assert extras[extra]["jax"].extras == {extra}


@pytest.mark.parametrize(
    "path, extra",
    [
        ("requirements.txt", ""),
        ("requirements-latest.txt", ""),
        ("requirements-dev.txt", "dev"),
        ("benchmarks/requirements.txt", "bench"),
    ],
)
def test_pinned_versions_lie_inside_the_declared_ranges(metadata, path, extra):
    requires = _requires(metadata, extra)
    for pin in _pins(REPO / path):
        (version,) = [s.version for s in pin.specifier if s.operator == "=="]
        assert pin.name in requires, f"{path}: {pin.name} is not declared in pyproject.toml"
        assert version in requires[pin.name].specifier, (
            f"{path}: {pin} outside {requires[pin.name]}"
        )


def test_installed_wheel_runs_and_finds_the_experiments_from_any_folder(wheel, tmp_path):
    target, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    pip = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet"]
    out = _run([*pip, "--target", str(target), str(wheel)], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    out = _run(
        [sys.executable, "-m", "fmnist_jax.main", "--help"], elsewhere, PYTHONPATH=str(target)
    )
    assert out.returncode == 0, out.stderr
    probe = (
        "import json, fmnist_jax\n"
        "from fmnist_jax import config\n"
        "c = config.load_experiment('cnn_dropout', 'test')\n"
        "print(json.dumps([fmnist_jax.__file__, config.experiment_names(), c.name]))\n"
    )
    out = _run([sys.executable, "-c", probe], elsewhere, PYTHONPATH=str(target))
    assert out.returncode == 0, out.stderr
    package, names, name = json.loads(out.stdout.strip().splitlines()[-1])
    assert Path(package).is_relative_to(target)
    assert names == sorted(p.stem for p in (REPO / "experiments").glob("[!_]*.py"))
    assert name == "cnn_dropout"


EDITABLE_PROBE = """
import importlib.metadata, json
try:
    url = json.loads(importlib.metadata.distribution("fmnist-jax").read_text("direct_url.json"))
except (importlib.metadata.PackageNotFoundError, TypeError):
    url = None
if url and url.get("dir_info", {}).get("editable"):
    import fmnist_jax, fmnist_jax.experiments
    print(json.dumps([url, fmnist_jax.__file__, fmnist_jax.experiments.__file__]))
else:
    print(json.dumps([url, None, None]))
"""


def test_editable_install_of_make_env_runs_from_any_folder(tmp_path):
    out = _run([sys.executable, "-c", EDITABLE_PROBE], tmp_path)  # site-packages only
    assert out.returncode == 0, out.stderr
    url, package, experiments = json.loads(out.stdout.strip().splitlines()[-1])
    if package is None:
        what = "not installed" if url is None else "installed, but not editable"
        pytest.skip(f"fmnist-jax is {what} in this environment (make env installs it editable)")
    assert Path(package).parent == REPO / "fmnist_jax", f"installed editable from {url['url']}"
    assert Path(experiments).parent == REPO / "experiments"
    out = _run([sys.executable, "-m", "fmnist_jax.main", "--help"], tmp_path)
    assert out.returncode == 0, out.stderr
