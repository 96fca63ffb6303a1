"""`import fmnist_jax`: no side effects, the API resolved lazily, errors.py importing nothing."""

import subprocess
import sys

import pytest

import fmnist_jax as fj
from tests.conftest import REPO

NO_SIDE_EFFECTS = """
import os, sys
before = dict(os.environ)
import fmnist_jax
assert before == dict(os.environ), set(os.environ.items()) ^ set(before.items())
assert "jax" not in sys.modules, "importing the package imported jax"
"""


def test_importing_the_package_changes_no_environment_and_starts_no_jax():
    out = subprocess.run(
        [sys.executable, "-c", NO_SIDE_EFFECTS], cwd=REPO, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]


def test_errors_module_imports_nothing_of_the_package():
    code = (
        "import sys, fmnist_jax.errors;"
        " print(sorted(m for m in sys.modules if m.startswith('fmnist_jax')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
        check=True,
    )  # fmt: skip
    assert out.stdout.strip() == "['fmnist_jax', 'fmnist_jax.errors']"


def test_package_exports_resolve_lazily():
    assert callable(fj.fit) and callable(fj.configure_cpu)
    assert fj.CLASS_NAMES[0] == "T-shirt/top" and len(fj.CLASS_NAMES) == 10
    assert set(fj.__all__) <= set(dir(fj))
    with pytest.raises(AttributeError, match="no attribute 'trian'"):
        fj.trian  # noqa: B018
