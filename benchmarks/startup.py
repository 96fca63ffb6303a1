"""Start-up and memory of training processes: start-to-first-step and peak RSS, paired.

    python benchmarks/startup.py [--trees OLD,NEW,NEW+no_tf] [--processes 1|2] [--rounds 3]
        [--config mlp:test]

Each round starts `python -m fmnist_jax.main --config mlp:test` in a fresh workdir once for each
source tree of `--trees` (PYTHONPATH; default this checkout), in turn, so that the machine's
drift hits both alike; `--processes 2` starts a two-process run on 127.0.0.1 instead (one CPU
device each, every process bounded by a timeout). Per run:

- start-to-first-step: from just before the process starts to the end of the loop's first
  chunk (compilation included): the loop's own start (summary.json's end minus its
  `wall_time_s`, which the writers' close and summary.json follow by a few ms) plus its
  `first_step_s`;
- peak RSS of each process (`os.wait4`'s ru_maxrss) and their sum.

A tree named with `+no_tf` runs as where TensorFlow is not installed (the sitecustomize of
tests/test_without_tensorflow.py hides it). Prints each figure's median over the rounds and
the median of the per-round ratios to the first tree.
"""

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the checkout's package and tests/
from absl import flags

from fmnist_jax import cli

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_list("trees", [str(REPO)], "Source trees to compare (PYTHONPATH).")
    flags.DEFINE_integer("processes", 1, "Processes of the run: 1 or 2.")
    flags.DEFINE_integer("rounds", 3, "Runs of each tree.")
    flags.DEFINE_string("config", "mlp:test", "Experiment[:variant] to train.")


_TIMEOUT = 300  # seconds, each process


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(tree: str, site: Path | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "PYTHONPATH")}
    env.update(PYTHONPATH=os.pathsep.join(p for p in (site and str(site), tree) if p))
    env.update(JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="1", HIDE_MODULES="tensorflow")
    return env


def _wait(proc: subprocess.Popen, deadline: float) -> int:
    """ru_maxrss of the process in MiB, once it exits (killed past `deadline`)."""
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            if os.waitstatus_to_exitcode(status) != 0:
                raise SystemExit(f"{proc.args} exited with {os.waitstatus_to_exitcode(status)}")
            return usage.ru_maxrss / 1024
        if time.time() > deadline:
            proc.kill()
            raise SystemExit(f"{proc.args}: no exit within {_TIMEOUT} s")
        time.sleep(0.05)


def run_once(tree: str, site: Path) -> dict:
    tree, hide = tree.removesuffix("+no_tf"), tree.endswith("+no_tf")
    workdir = Path(tempfile.mkdtemp(prefix="startup-"))
    cmd = [sys.executable, "-m", "fmnist_jax.main", "--config", FLAGS.config]
    cmd.append(f"--workdir={workdir}")
    if FLAGS.processes > 1:
        cmd += [f"--coordinator_address=127.0.0.1:{_free_port()}"]
        cmd += [f"--num_processes={FLAGS.processes}", "--initialization_timeout=60"]
    env = _env(tree, site if hide else None)
    start = time.time()
    procs = [
        subprocess.Popen(
            cmd + ([f"--process_id={i}"] if FLAGS.processes > 1 else []),
            cwd=tempfile.gettempdir(),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i in range(FLAGS.processes)
    ]
    rss = [_wait(p, start + _TIMEOUT) for p in procs]
    summary_path = workdir / "summary.json"
    summary = json.loads(summary_path.read_text())
    loop_start = summary_path.stat().st_mtime - summary["wall_time_s"]
    shutil.rmtree(workdir)
    return {
        "start_to_first_step_s": loop_start + summary["first_step_s"] - start,
        "peak_rss_mib_sum": sum(rss),
        **{f"peak_rss_mib_process_{i}": r for i, r in enumerate(rss)},
    }


def main() -> None:
    from tests.test_without_tensorflow import SITECUSTOMIZE

    site = Path(tempfile.mkdtemp(prefix="no-tf-"))
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    trees = FLAGS.trees
    runs = {tree: [] for tree in trees}
    for _ in range(FLAGS.rounds):
        for tree in trees:
            runs[tree].append(run_once(tree, site))
    for key in runs[trees[0]][0]:
        line = f"{key:28}"
        for tree in trees:
            line += f" {statistics.median(r[key] for r in runs[tree]):10.2f}"
        for tree in trees[1:]:
            ratios = [b[key] / a[key] for a, b in zip(runs[trees[0]], runs[tree], strict=True)]
            line += f"  x{statistics.median(ratios):.3f}"
        print(line)
    print("trees:", ", ".join(trees))


if __name__ == "__main__":
    cli.run(main, define_flags)
