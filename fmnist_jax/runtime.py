"""Process settings that make XLA:CPU train this project's models fast.

Two problems of the CPU runtime, measured with jaxlib 0.10.2 on a 2-core AVX2 machine (numbers
and commands in benchmarks/README.md); neither fix changes what is computed:

1. XLA hands convolutions to YNNPACK by default, where this ConvNet's run on one core (its
   kernel gradient at ~22 GFLOP/s). `--xla_cpu_experimental_ynn_fusion_type=
   -individual_convolution` gives them back to XLA's Eigen convolutions, which use every core;
   matrix products stay with YNNPACK.
2. XLA:CPU allocates its temporary buffers afresh at every execution, and glibc serves large
   blocks with fresh `mmap`s: every ConvNet step page-faults ~54 MB again (13,900 faults).
   glibc's tunable `glibc.malloc.hugetlb=1` backs them with transparent huge pages: ~60 faults
   a step. Tunables are read when a process starts, so the training command re-executes itself
   with it (`reexec_with_malloc_tunable`) and the Makefile exports it.

`configure_xla` runs when `fmnist_jax` is imported. Each setting applies only where it can: the
XLA flag only with a jaxlib it was verified on (XLA aborts on a flag it does not know), not
where a GPU or TPU plugin is installed, and only before JAX has created its backends; the tunable only on Linux with glibc. A user's own value
for either setting wins. `FMNIST_CPU_TUNING=0` leaves the process as it is.
"""

import importlib.metadata
import os
import platform
import sys
from collections.abc import Mapping, MutableMapping, Sequence

OPT_OUT = "FMNIST_CPU_TUNING"
XLA_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
VERIFIED_JAXLIB = ("0.10.",)  # release prefixes where XLA_FLAG exists and was measured
# With one of these installed, the accelerator's own XLA also parses XLA_FLAGS (and the CPU's
# speed hardly matters): the flag is left out there.
ACCELERATOR_PLUGINS = (
    "libtpu",
    "libtpu-nightly",
    "jax-cuda12-plugin",
    "jax-cuda13-plugin",
    "jax-rocm-plugin",
)
MALLOC_TUNABLE = "glibc.malloc.hugetlb=1"


def enabled(environ: Mapping[str, str]) -> bool:
    return environ.get(OPT_OUT, "1").strip().lower() not in ("0", "false", "no", "off")


def tuned_xla_flags(current: str, jaxlib_version: str, plugins: Sequence[str] = ()) -> str:
    """`current` XLA_FLAGS plus `XLA_FLAG`, unless this jaxlib was not verified, an accelerator
    plugin is installed (`plugins`), or the user already chose a value for that flag."""
    name = XLA_FLAG.split("=", 1)[0]
    if not jaxlib_version.startswith(VERIFIED_JAXLIB) or plugins or name in current:
        return current
    return f"{current} {XLA_FLAG}".strip()


def tuned_glibc_tunables(current: str) -> str:
    """`current` GLIBC_TUNABLES (colon-separated) plus `MALLOC_TUNABLE`, unless the user already
    set that tunable."""
    name = MALLOC_TUNABLE.split("=", 1)[0]
    if name in current:
        return current
    return f"{current}:{MALLOC_TUNABLE}" if current else MALLOC_TUNABLE


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return ""


def _backends_initialized() -> bool:
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):  # private API moved: assume the worst
        return True


def configure_xla(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Adds `XLA_FLAG` to `environ['XLA_FLAGS']` when it can still take effect; True if the
    flag is in place afterwards."""
    if not enabled(environ) or _backends_initialized():
        return XLA_FLAG in environ.get("XLA_FLAGS", "")
    plugins = [name for name in ACCELERATOR_PLUGINS if _version(name)]
    flags = tuned_xla_flags(environ.get("XLA_FLAGS", ""), _version("jaxlib"), plugins)
    if flags:
        environ["XLA_FLAGS"] = flags
    return XLA_FLAG in flags


def describe(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The settings this process runs with, for a run's summary (its speed depends on them)."""
    return {name: environ.get(name, "") for name in ("XLA_FLAGS", "GLIBC_TUNABLES", OPT_OUT)}


def reexec_environment(
    argv: Sequence[str], environ: Mapping[str, str], system: str, libc: str
) -> dict[str, str] | None:
    """The environment to restart `argv` in so that glibc reads `MALLOC_TUNABLE`, or None
    when no restart is needed or possible."""
    if not enabled(environ) or system != "Linux" or libc != "glibc" or not argv:
        return None
    tunables = tuned_glibc_tunables(environ.get("GLIBC_TUNABLES", ""))
    if tunables == environ.get("GLIBC_TUNABLES", ""):
        return None
    return {**environ, "GLIBC_TUNABLES": tunables}


def reexec_with_malloc_tunable() -> None:
    """Restarts this Python process, same command line, with `MALLOC_TUNABLE` in
    GLIBC_TUNABLES; returns without doing anything when it is set already or cannot apply.
    Call it first thing in a command-line entry point."""
    argv = list(getattr(sys, "orig_argv", []))
    env = reexec_environment(argv, os.environ, platform.system(), platform.libc_ver()[0])
    if env is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, argv, env)
