"""Process settings: explicit, never on import. `configure_cpu()` gives XLA:CPU's convolutions
back to Eigen (XLA_FLAGS); `malloc_hint()` says how to back XLA's buffers with huge pages
(GLIBC_TUNABLES, read only at start-up). Neither changes what is computed; each applies only
where it can, a user's own value wins, `FMNIST_CPU_TUNING=0` turns both off (docs/speed-cpu.md).
`FMNIST_CPU_SHARE=k/n` keeps a process on the k-th of n parts of its cores (`share_cpus`): how
`make reproduce` trains two experiments at once on a CPU.
"""

import importlib.metadata
import os
import platform
import re
import sys
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence

OPT_OUT = "FMNIST_CPU_TUNING"
XLA_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
VERIFIED_JAXLIB = ("0.10.", "0.11.", "0.12.")
ACCELERATOR_PLUGINS = (
    "libtpu",
    "libtpu-nightly",
    "jax-cuda12-plugin",
    "jax-cuda13-plugin",
    "jax-rocm-plugin",
)
MALLOC_TUNABLE = "glibc.malloc.hugetlb=1"
CPU_SHARE = "FMNIST_CPU_SHARE"
SUPPORTED_JAX = ("0.10.2", "0.13")  # >= the first, < the second, as pyproject.toml declares


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


def cpu_share(value: str, cores: Iterable[int]) -> list[int]:
    """The cores of share "k/n" of `cores`: the k-th (from 0) of n near-equal runs of them in
    order, or the single core k mod their count where there are fewer cores than shares."""
    found = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", value)
    k, n = (int(g) for g in found.groups()) if found else (0, 0)
    if not 0 <= k < n:
        raise ValueError(f"{CPU_SHARE}={value!r} is not a share k/n of the cores (0 <= k < n)")
    cores = sorted(cores)
    if n > len(cores):
        return [cores[k % len(cores)]]
    return cores[k * len(cores) // n : (k + 1) * len(cores) // n]


def share_cpus(environ: Mapping[str, str] = os.environ) -> list[int] | None:
    """Keeps this process, and the threads it starts from now on, on its `FMNIST_CPU_SHARE` of
    the cores it may use; the cores, or None where unset or where the OS cannot. Before JAX's
    first backend, which sizes XLA:CPU's thread pool by them: one single-threaded process per
    core wastes less than two processes whose threads contend for both (docs/speed-cpu.md)."""
    value = environ.get(CPU_SHARE, "").strip()
    if not value or not hasattr(os, "sched_setaffinity"):
        return None
    cores = cpu_share(value, os.sched_getaffinity(0))
    os.sched_setaffinity(0, cores)
    return cores


def installed_version(distribution: str) -> str:
    """The installed version of `distribution` (read without importing it); "" if none."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return ""


def _release(version: str) -> tuple[int, ...]:
    """'0.12.0.1' -> (0, 12, 0, 1); the leading release numbers of a version string."""
    match = re.match(r"\d+(\.\d+)*", version)
    return tuple(int(n) for n in match.group(0).split(".")) if match else ()


def jax_version_problem(installed: str | None = None) -> str | None:
    """One line naming the installed jax and the supported range, where jax is missing or older
    than the range (the code uses APIs that older releases lack); None otherwise."""
    installed = installed_version("jax") if installed is None else installed
    low, high = SUPPORTED_JAX
    if installed and _release(installed) >= _release(low):
        return None
    found = f"jax {installed} is installed" if installed else "jax is not installed"
    return f"{found}; fmnist-jax supports jax >={low},<{high}: pip install 'jax>={low},<{high}'"


def installed_plugins() -> list[str]:
    """The jax accelerator plugins installed in this environment."""
    return [name for name in ACCELERATOR_PLUGINS if installed_version(name)]


def _add_xla_flag(environ: MutableMapping[str, str]) -> bool:
    if enabled(environ):
        flags = tuned_xla_flags(
            environ.get("XLA_FLAGS", ""), installed_version("jaxlib"), installed_plugins()
        )
        if flags:
            environ["XLA_FLAGS"] = flags
    return XLA_FLAG in environ.get("XLA_FLAGS", "")


def configure_cpu(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Adds `XLA_FLAG` to XLA_FLAGS before `import jax` (with a verified jaxlib, no accelerator
    plugin, not opted out); True if the flag is in place afterwards."""
    if "jax" in sys.modules:
        return XLA_FLAG in environ.get("XLA_FLAGS", "")
    return _add_xla_flag(environ)


def configure_process(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Every command line's process settings (`cli.run`): TensorFlow's log lines off and
    `XLA_FLAG` (XLA reads it at JAX's first backend, so after `import jax` is early enough) and
    the cores of `FMNIST_CPU_SHARE` (ValueError on a malformed share); True if the flag is in
    place."""
    environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    share_cpus(environ)
    return _add_xla_flag(environ)


def malloc_hint(
    environ: Mapping[str, str] = os.environ, system: str = "", libc: str = ""
) -> str | None:
    """One line saying how to get the huge-page speed-up, where this process lacks the
    tunable and could have it (Linux with glibc, CPU training, not opted out); else None."""
    system = system or platform.system()
    libc = libc if libc or system != "Linux" else platform.libc_ver()[0]
    if not enabled(environ) or system != "Linux" or libc != "glibc" or installed_plugins():
        return None
    current = environ.get("GLIBC_TUNABLES", "")
    if tuned_glibc_tunables(current) == current:
        return None
    return (
        f"CPU training runs ~1.3x faster with GLIBC_TUNABLES={MALLOC_TUNABLE} set before Python"
        " starts (the make targets set it; glibc reads it only at start-up)"
    )


def import_beside_tensorflow(name: str, missing: Callable[[str, str], object]):
    """The module `name`, which imports TensorFlow (CLU's writers, TFDS), with TensorFlow seeing
    the CPU only, so it never takes the accelerator memory JAX trains in (flax#445), and without
    its oneDNN notice unless the user set it. Where an optional dependency is missing, what
    `missing(package, pip command)` returns or raises; any other ImportError goes through."""
    from fmnist_jax import errors

    if "tensorflow" not in sys.modules:
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    try:
        import tensorflow as tf

        for kind in ("GPU", "TPU"):
            try:
                tf.config.set_visible_devices([], kind)
            except (RuntimeError, ValueError):  # devices already initialized, or no such kind
                pass
        return importlib.import_module(name)
    except ImportError as e:
        command = errors.pip_install(e)
        if command is None:
            raise
        package = e.name.split(".")[0]
    return missing(package, command)  # outside the handler: no ImportError chained to it


def process_settings(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The settings this process runs with, for a run's summary (its speed depends on them)."""
    names = ("XLA_FLAGS", "GLIBC_TUNABLES", OPT_OUT, CPU_SHARE)
    return {name: environ.get(name, "") for name in names}
