"""The loop's progress lines and `steps_per_sec` (over chunks), profile, evaluations, live bar."""

import contextlib
import time

import jax
from absl import logging

from fmnist_jax import population
from fmnist_jax.rundir import COLLECTIONS


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m {seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _metrics(record: dict) -> dict:
    return {k: v for k, v in record.items() if k.split("_")[0] in COLLECTIONS and v is not None}


def format_record(record: dict, num_steps: int | None = None) -> str:
    """`step 500/2000 (epoch 0.53): train_loss 0.4100, ...`."""
    values = ", ".join(f"{k} {v:.4f}" for k, v in _metrics(record).items())
    step = f"{record['step']}/{num_steps}" if num_steps else record["step"]
    return f"step {step} (epoch {record['epoch']:.2f}): {values}"


def format_records(records: list[dict], num_steps: int | None = None) -> str:
    """One evaluation's records as one line: means and ranges, a population's best member."""
    if len(records) == 1:
        return format_record(records[0], num_steps)
    first = records[0]
    values = []
    for k in _metrics(first):
        vs = [r[k] for r in records]
        values.append(f"{k} {sum(vs) / len(vs):.4f} ({min(vs):.4f}-{max(vs):.4f})")
    step = f"{first['step']}/{num_steps}" if num_steps else first["step"]
    line = (
        f"step {step} (epoch {first['epoch']:.2f}), {len(records)} members, mean (range):"
        f" {', '.join(values)}"
    )
    if "point" in first and "test_loss" in first:  # a population: which member leads
        best = min(records, key=lambda r: r["test_loss"])
        who = {k: v for k, v in best.items() if k not in _metrics(best) and k != "epoch"}
        line += f"; lowest test_loss {best['test_loss']:.4f}: {population.member_name(who)}"
    return line


class ChunkProgress:
    """Called at chunk ends; logs steps/s, % done, ETA every `every_steps` (0: `every_secs` s)."""

    def __init__(self, num_steps, first_step, writer=None, every_steps=0, every_secs=30.0, name=""):
        self.num_steps, self.writer, self.prefix = num_steps, writer, f"{name}: " if name else ""
        self.every_steps, self.every_secs = every_steps, every_secs
        self._start = self._last_t = time.monotonic()
        self._last_step, self._parts = first_step, {}

    def __call__(self, step: int, t: float | None = None, wait=None) -> bool:
        """`wait` blocks until the steps dispatched so far have run (the loop dispatches
        chunks asynchronously): called only when a line is due, so that it measures them."""
        now = time.monotonic() if t is None else t
        if self.every_steps:
            due = step // self.every_steps > self._last_step // self.every_steps
        else:
            due = now - self._last_t >= self.every_secs
        if step <= self._last_step or not (due or step == self.num_steps):
            return False
        if wait is not None:
            wait()
        t = time.monotonic() if t is None else t
        rate = (step - self._last_step) / max(t - self._last_t, 1e-9)
        line = (
            f"{self.prefix}{rate:.1f} steps/s,"
            f" {100 * step / self.num_steps:.1f}% ({step}/{self.num_steps}),"
            f" ETA {_duration((self.num_steps - step) / rate)}"
        )
        if self._parts:
            total = max(t - self._start, 1e-9)
            line += " (" + ", ".join(f"{100 * s / total:.1f}% {k}" for k, s in self._parts.items())
            line += ")"
        logging.info("%s", line)
        if self.writer is not None:
            self.writer.write_scalars(step, {"steps_per_sec": rate, "uptime": t - self._start})
        self._last_step, self._last_t = step, t
        return True

    @contextlib.contextmanager
    def timed(self, name: str):
        start = time.monotonic()
        try:
            yield
        finally:
            self._parts[name] = self._parts.get(name, 0.0) + time.monotonic() - start


class Profile:
    """A `jax.profiler` trace into `logdir` of the steps from `first` to `first + count`."""

    def __init__(self, logdir: str, first: int, count: int):
        self.logdir, self.first, self.last = logdir, first, first + count
        self.state = "waiting" if count else "done"

    def __call__(self, step: int) -> None:
        if self.state == "waiting" and step >= self.first:
            jax.profiler.start_trace(self.logdir)
            self.state = "tracing"
        elif self.state == "tracing" and step >= self.last:
            jax.profiler.stop_trace()
            self.state = "done"


class LiveBar:
    """The API's tqdm bar, the last evaluation beside it and each one printed above it."""

    def __init__(self, num_steps: int, first_step: int):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=num_steps, initial=first_step, unit="step", dynamic_ncols=True)

    def __call__(self, step: int) -> None:
        self.bar.update(step - self.bar.n)

    def evaluated(self, records: list[dict]) -> None:
        line = format_records(records)
        self.bar.write(line)
        self.bar.set_postfix_str(", ".join(line.split(": ", 1)[-1].split(", ")[-2:]))

    def close(self) -> None:
        self.bar.close()
