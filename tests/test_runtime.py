"""Tests for `fmnist_jax.runtime`: which XLA flag and malloc tunable a process gets, and that
this jaxlib and glibc really honour them."""

import functools
import json
import os
import platform
import subprocess
import sys

import pytest

from fmnist_jax import runtime
from tests.conftest import REPO

FLAG = runtime.XLA_FLAG


@pytest.mark.parametrize(
    ("current", "version", "expected"),
    [
        ("", "0.10.2", FLAG),
        ("--xla_force_host_platform_device_count=8", "0.10.2",
         f"--xla_force_host_platform_device_count=8 {FLAG}"),
        ("", "0.12.0.1", FLAG),
        ("", "0.9.0", ""),  # not verified there: an unknown flag would abort XLA
        ("", "0.13.0", ""),
        ("", "", ""),  # jaxlib not installed
        ("--xla_cpu_experimental_ynn_fusion_type=", "0.10.2",
         "--xla_cpu_experimental_ynn_fusion_type="),  # the user's choice wins
    ],
)  # fmt: skip
def test_tuned_xla_flags(current, version, expected):
    assert runtime.tuned_xla_flags(current, version) == expected


def test_no_xla_flag_where_an_accelerator_plugin_is_installed():
    assert runtime.tuned_xla_flags("", "0.10.2", ["jax-cuda12-plugin"]) == ""
    assert runtime.tuned_xla_flags("--a=1", "0.10.2", ["libtpu"]) == "--a=1"


@pytest.mark.parametrize(
    ("current", "expected"),
    [
        ("", "glibc.malloc.hugetlb=1"),
        ("glibc.malloc.arena_max=2", "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"),
        ("glibc.malloc.hugetlb=0", "glibc.malloc.hugetlb=0"),
    ],
)
def test_tuned_glibc_tunables(current, expected):
    assert runtime.tuned_glibc_tunables(current) == expected


def test_configure_cpu_edits_only_the_given_environment(monkeypatch):
    monkeypatch.delitem(sys.modules, "jax", raising=False)  # as before `import jax`
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    assert runtime.configure_cpu(env) is True
    assert env["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=2 {FLAG}"
    off = {runtime.OPT_OUT: "0"}
    assert runtime.configure_cpu(off) is False and "XLA_FLAGS" not in off


def test_configure_cpu_does_nothing_once_jax_is_imported():
    import jax  # noqa: F401 - the point of the test

    env = {}
    assert runtime.configure_cpu(env) is False and env == {}


def test_malloc_hint_only_where_glibc_reads_the_tunable():
    hint = runtime.malloc_hint({}, "Linux", "glibc")
    assert hint is not None and f"GLIBC_TUNABLES={runtime.MALLOC_TUNABLE}" in hint
    assert runtime.malloc_hint({"GLIBC_TUNABLES": runtime.MALLOC_TUNABLE}, "Linux", "glibc") is None
    assert (
        runtime.malloc_hint({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, "Linux", "glibc") is None
    )
    assert runtime.malloc_hint({}, "Darwin", "") is None
    assert runtime.malloc_hint({}, "Linux", "musl") is None
    assert runtime.malloc_hint({runtime.OPT_OUT: "off"}, "Linux", "glibc") is None


_CONV_BACKEND = """
import fmnist_jax
fmnist_jax.configure_cpu()
import jax, jax.numpy as jnp
conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(
    x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
hlo = conv.lower(jnp.ones((4, 14, 14, 32)), jnp.ones((3, 3, 32, 64))).compile().as_text()
print("ynnpack" if "__ynn_fusion" in hlo else "xla")
"""


@pytest.mark.perf_canary
@pytest.mark.parametrize(("opt_out", "backend"), [("1", "xla"), ("0", "ynnpack")])
def test_canary_configure_cpu_moves_convolutions_off_ynnpack(opt_out, backend):
    """The flag is honoured by the installed jaxlib (it is silently ignored if misspelled): a
    performance canary, pinned to the YNNPACK fusions of jaxlib 0.10 to 0.12; a jaxlib upgrade
    that fails it means re-measuring `runtime.XLA_FLAG` (benchmarks/README.md)."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run(
        [sys.executable, "-c", _CONV_BACKEND],
        env={**env, runtime.OPT_OUT: opt_out}, cwd=REPO, capture_output=True, text=True,
        timeout=120, check=True,
    )  # fmt: skip
    assert out.stdout.split()[-1] == backend


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc tunables only")
def test_training_command_says_how_to_get_the_malloc_speed_up(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "XLA_FLAGS")}
    out = subprocess.run(
        [sys.executable, "-m", "fmnist_jax.main", "--config", "experiments/linreg.py:test",
         "--workdir", str(tmp_path), "--config.num_train_steps=4"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"GLIBC_TUNABLES={runtime.MALLOC_TUNABLE} set before Python starts" in out.stderr
    settings = json.loads((tmp_path / "summary.json").read_text())["runtime"]
    assert settings["GLIBC_TUNABLES"] == ""  # no restart of the process: it ran as started
    assert FLAG in settings["XLA_FLAGS"]


@pytest.mark.parametrize(
    ("installed", "supported"),
    [("0.10.2", True), ("0.12.0.1", True), ("0.11.2", True), ("0.10.3rc1", True),
     ("0.10.1", False), ("0.4.38", False), ("", False)],
)  # fmt: skip
def test_jax_version_problem_only_below_the_supported_range(installed, supported):
    problem = runtime.jax_version_problem(installed)
    assert (problem is None) == supported
    if problem:
        low, high = runtime.SUPPORTED_JAX
        assert f"jax >={low},<{high}" in problem and "\n" not in problem
        assert (f"jax {installed} is installed" if installed else "not installed") in problem


def test_an_unsupported_jax_ends_the_command_line_in_one_line(tmp_path):
    """A jax older than the range (a fake distribution found first on sys.path) stops every
    command line at start-up with one line naming both versions, exit status 2."""
    dist = tmp_path / "jax-0.4.30.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: jax\nVersion: 0.4.30\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO)]))
    out = subprocess.run(
        [sys.executable, "-m", "fmnist_jax.main", "--config", "mlp:test", "--workdir",
         str(tmp_path / "run")],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr[-2000:]
    low, high = runtime.SUPPORTED_JAX
    expected = f"jax 0.4.30 is installed; fmnist-jax supports jax >={low},<{high}"
    assert out.stderr.strip().splitlines() == [
        f"error: {expected}: pip install 'jax>={low},<{high}'"
    ]


def test_importing_tensorflow_for_the_writers_prints_no_onednn_notice():
    code = (
        "from fmnist_jax import runtime\n"
        "runtime.import_beside_tensorflow('clu.metric_writers', lambda p, c: None)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_")}
    command = [sys.executable, "-c", code]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "oneDNN" not in done.stderr


@pytest.mark.parametrize(
    ("value", "cores", "expected"),
    [
        ("0/2", [0, 1], [0]),
        ("1/2", [1, 0], [1]),
        (" 1 / 2 ", range(8), [4, 5, 6, 7]),
        ("1/3", range(4), [1]),
        ("2/3", range(4), [2, 3]),
        ("0/1", [3, 5], [3, 5]),
        ("3/4", [6, 7], [7]),  # more shares than cores: one core each, in turn
    ],
)
def test_cpu_share(value, cores, expected):
    assert runtime.cpu_share(value, cores) == expected


@pytest.mark.parametrize("value", ["2/2", "0/0", "-1/2", "1", "a/b", "1/2/3"])
def test_cpu_share_refuses_what_is_not_a_share(value):
    with pytest.raises(ValueError, match=f"FMNIST_CPU_SHARE={value!r} is not a share k/n"):
        runtime.cpu_share(value, [0, 1])


def cpu_list(cores):
    """`cores` as the kernel's Cpus_allowed_list writes them ("0-3,6")."""
    runs = []
    for core in cores:
        if runs and core == runs[-1][-1] + 1:
            runs[-1].append(core)
        else:
            runs.append([core])
    return ",".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs)


SHOW_CORES = """
import glob, os
from fmnist_jax import cli
def main():
    import jax, jax.numpy as jnp
    jax.jit(lambda x: x @ x)(jnp.ones((64, 64))).block_until_ready()
    threads = set()
    for status in glob.glob("/proc/self/task/*/status"):
        lines = open(status).read().splitlines()
        threads |= {line.split()[1] for line in lines if line.startswith("Cpus_allowed_list")}
    print(sorted(os.sched_getaffinity(0)), sorted(threads))
cli.run(main)
"""


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this OS")
def test_a_command_line_and_its_xla_threads_keep_to_their_share_of_the_cores():
    """Every thread of a command line, XLA's pool included, runs on the cores of its share; a
    malformed share ends it at start-up in one line, exit status 2."""
    cores = sorted(os.sched_getaffinity(0))
    expected = runtime.cpu_share("1/2", cores)
    env = dict(os.environ, PYTHONPATH=str(REPO), FMNIST_CPU_SHARE="1/2")
    run = functools.partial(
        subprocess.run, [sys.executable, "-c", SHOW_CORES], cwd=REPO, capture_output=True,
        text=True, timeout=120, check=False,
    )  # fmt: skip
    out = run(env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == f"{expected} {[cpu_list(expected)]}"
    out = run(env=dict(env, FMNIST_CPU_SHARE="2/2"))
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: FMNIST_CPU_SHARE='2/2' is not a share k/n of the cores (0 <= k < n)"
    ]
