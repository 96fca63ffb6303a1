"""Every script in benchmarks/ still imports against today's package and answers `--help` with
exit status 0 (a benchmark nobody can start is dead code). Each runs in its own process, all
of them at once: their start-up (importing JAX) dominates, not the work."""

import ast
import importlib.util
import os
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO

SCRIPTS = sorted((REPO / "benchmarks").glob("*.py"))
NEEDS = {"torch_models.py": "torch"}  # benchmarks/requirements.txt, installed by `make bench`
TIMEOUT = 120  # seconds for all of them together; each takes a few on an idle core


@pytest.fixture(scope="module")
def answers():
    """name -> (exit status, stdout, stderr) of `python benchmarks/NAME --help`."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    procs = {
        path.name: subprocess.Popen(
            [sys.executable, str(path), "--help"],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for path in SCRIPTS
        if importlib.util.find_spec(NEEDS.get(path.name, "os")) is not None
    }
    deadline, out = time.monotonic() + TIMEOUT, {}
    for name, proc in procs.items():
        try:
            stdout, stderr = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
            stderr += f"\n(killed: no answer within {TIMEOUT} s)"
        out[name] = proc.returncode, stdout, stderr
    return out


def test_the_benchmarks_are_the_ones_this_test_knows():
    assert {p.name for p in SCRIPTS} >= {"bench.py", "workers.py", "attack_workers.py"}
    assert not (REPO / "benchmarks" / "explore.py").exists()


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_imports_and_answers_help(answers, path):
    if path.name not in answers:
        pytest.skip(f"{path.name} needs {NEEDS[path.name]}, not installed here")
    code, stdout, stderr = answers[path.name]
    assert code == 0, stderr[-3000:]
    source = path.read_text()
    if 'if __name__ == "__main__":' in source:  # a command: its help says what it measures
        first_line = source.split('"""')[1].strip().splitlines()[0]
        assert " ".join(first_line.split()) in " ".join(stdout.split()), (stdout, stderr)
    assert "Traceback" not in stderr


def test_no_benchmark_imports_another_that_imports_it_back():
    """`attack_workers.py` uses `workers.py`'s helpers; `workers.py` never imports it back."""
    stems = {p.stem for p in SCRIPTS}
    imports = {}
    for path in SCRIPTS:
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):  # lazy imports in functions too
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level:
                found.add(node.module)
        imports[path.stem] = found & stems
    for a, targets in imports.items():
        for b in targets:
            assert a not in imports[b], f"{a}.py and {b}.py import each other"
