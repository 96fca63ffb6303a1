"""A live progress line for `fj.fit` in notebooks, REPLs and scripts.

The command line keeps CLU's `ReportProgress` (absl log lines); outside `app.run` those are
hidden, so the API shows its own line: steps done, steps/s, ETA and the last evaluation.

- in Jupyter / Colab: one output line updated in place (`IPython.display` with a display id);
- in a terminal: one line rewritten with a carriage return;
- elsewhere (a log file, a pipe): a plain line every `every_secs`.

Each evaluation is also printed as a line of its own, so the history stays on screen.

`periodic_actions()` is what the train loop reports progress and profiles with: CLU's
`periodic_actions`, or where TensorFlow (which that module imports) is not installed, this
module's `ReportProgress` and `Profile`, which take the same arguments and do the same.
"""

import collections
import contextlib
import sys
import time

from absl import logging

from fmnist_jax import population


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and hasattr(shell, "kernel")


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m {seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


# A record's identity, not a metric: where it stands and which member it is.
IDENTITY = ("step", "epoch", "replica", "point", "seed", *population.VARIABLE)


def format_record(record: dict, num_steps: int | None = None) -> str:
    """An evaluation record as `step 500 (epoch 0.53): train_loss 0.41, ...` (`step 500/2000`
    with `num_steps`)."""
    values = ", ".join(
        f"{k} {v:.4f}" for k, v in record.items() if k not in IDENTITY and v is not None
    )
    step = f"{record['step']}/{num_steps}" if num_steps else record["step"]
    return f"step {step} (epoch {record['epoch']:.2f}): {values}"


def format_records(records: list[dict], num_steps: int | None = None) -> str:
    """One evaluation's records (one per replica) as one line: `format_record` for one
    replica; for several each value's mean and range, `train_loss 0.4100 (0.4000-0.4200)`."""
    if len(records) == 1:
        return format_record(records[0], num_steps)
    first = records[0]
    keys = [k for k in first if k not in IDENTITY and first[k] is not None]
    values = []
    for k in keys:
        vs = [r[k] for r in records]
        values.append(f"{k} {sum(vs) / len(vs):.4f} ({min(vs):.4f}-{max(vs):.4f})")
    step = f"{first['step']}/{num_steps}" if num_steps else first["step"]
    line = (
        f"step {step} (epoch {first['epoch']:.2f}), {len(records)}"
        f" {'members' if 'point' in first else 'replicas'}, mean (range): {', '.join(values)}"
    )
    if "point" in first and "test_loss" in first:  # a population: which member leads
        best = min(records, key=lambda r: r["test_loss"])
        line += f"; lowest test_loss {best['test_loss']:.4f}: {population.member_name(best)}"
    return line


class LiveProgress:
    """Called with each step and each evaluation record by the train loop."""

    def __init__(self, num_steps: int, every_secs: float = 1.0, stream=None):
        self.num_steps, self.every_secs = num_steps, every_secs
        self.stream = stream or sys.stdout
        self.notebook = stream is None and _in_notebook()
        self.tty = not self.notebook and getattr(self.stream, "isatty", lambda: False)()
        self._start = self._first_step = None
        self._last_shown, self._handle, self._last_eval, self._step = 0.0, None, "", 0
        self._line = ""

    def line(self, step: int, now: float) -> str:
        """`step 120/2000 (6%), 31.2 steps/s, ETA 1m 00s | last evaluation ...`."""
        done = step - self._first_step
        elapsed = max(now - self._start, 1e-9)
        rate = done / elapsed if done > 0 else 0.0
        eta = (self.num_steps - step) / rate if rate > 0 else None
        parts = [f"step {step}/{self.num_steps} ({step / self.num_steps:.0%})"]
        parts += [f"{rate:.1f} steps/s", f"ETA {_duration(eta)}" if eta is not None else "ETA ?"]
        text = ", ".join(parts)
        return f"{text} | {self._last_eval}" if self._last_eval else text

    def start(self, step: int) -> None:
        """The clock starts at `step` (the loop's first step is compiled: included)."""
        self._start, self._first_step = time.monotonic(), step
        self._last_shown = self._start

    def __call__(self, step: int) -> None:
        if self._start is None:
            self.start(step - 1)
        now = time.monotonic()
        self._step = step
        if now - self._last_shown >= self.every_secs or step == self.num_steps:
            self._show(self.line(step, now))
            self._last_shown = now

    def evaluated(self, records: list[dict]) -> None:
        """One evaluation's records (one per replica)."""
        self._last_eval = format_records(records)
        self._print_line(self._last_eval)
        if self._start is not None and (self.notebook or self.tty):  # the live line shows it
            self._show(self.line(self._step, time.monotonic()))

    def _show(self, text: str) -> None:
        self._line = text
        if self.notebook:
            from IPython.display import Pretty, display

            if self._handle is None:
                self._handle = display(Pretty(text), display_id=True)
            else:
                self._handle.update(Pretty(text))
        elif self.tty:
            self.stream.write("\r\x1b[2K" + text)
            self.stream.flush()
        else:
            print(text, file=self.stream, flush=True)

    def _print_line(self, text: str) -> None:
        if self.tty and self._line:
            self.stream.write("\r\x1b[2K")
        print(text, file=self.stream, flush=True)
        if self.tty and self._line:
            self.stream.write(self._line)
            self.stream.flush()

    def close(self) -> None:
        if self.tty and self._line:
            self.stream.write("\n")
            self.stream.flush()


class _Quiet:
    """Stands in for CLU's progress and profile actions on processes other than 0."""

    def __call__(self, step: int) -> None:
        pass

    def timed(self, name: str):
        del name
        return contextlib.nullcontext()


def loop_actions(config, workdir, first_step: int, writer=None):
    """(report, profile): CLU's periodic actions for the train loop, progress (steps/s, ETA;
    its scalars into `writer`) and, if configured, a profile into `workdir`; stand-ins that
    do nothing without a `writer` (processes other than 0)."""
    if writer is None:
        return _Quiet(), _Quiet()
    actions = periodic_actions()  # CLU's, or stand-ins without TF
    every = config.get("progress_every_steps", 0)
    report = actions.ReportProgress(
        num_train_steps=config.num_train_steps,
        writer=writer,
        every_steps=every or None,
        every_secs=None if every else 30.0,
    )
    if not config.profile_steps:
        return report, _Quiet()
    profile = actions.Profile(
        logdir=str(workdir),
        num_profile_steps=config.profile_steps,
        profile_duration_ms=None,
        first_profile=first_step + config.profile_first_step,
        every_secs=None,
    )
    return report, profile


def periodic_actions():
    """CLU's `periodic_actions` module, or this module where TensorFlow is not installed
    (`events.open_writers` has said so already)."""
    from fmnist_jax import runtime

    return runtime.import_beside_tensorflow(
        "clu.periodic_actions", lambda package, command: sys.modules[__name__]
    )


class ReportProgress:
    """CLU's `ReportProgress` as the train loop calls it, without TensorFlow: called after
    every step; at every `every_steps`-th step (or after `every_secs` seconds) and at the last
    it logs steps/s, % done, ETA and the share of `timed` parts, and writes `steps_per_sec`
    and `uptime` to `writer`."""

    def __init__(self, *, num_train_steps: int, writer=None, every_steps=None, every_secs=60.0):
        self.num_steps, self.writer = num_train_steps, writer
        self.every_steps, self.every_secs = every_steps, every_secs
        self._t0, self._last = time.monotonic(), None  # (step, time) of the last report
        self._parts: dict[str, float] = collections.defaultdict(float)

    def _due(self, step: int, t: float) -> bool:
        last_step, last_t = self._last
        if step == last_step:
            return False
        every = self.every_steps and step % self.every_steps == 0
        late = self.every_secs is not None and t - last_t > self.every_secs
        return bool(every or late or step == self.num_steps)

    def __call__(self, step: int, t: float | None = None) -> bool:
        t = time.monotonic() if t is None else t
        if self._last is None or not self._due(step, t):
            self._last = self._last or (step, t)
            return False
        rate = (step - self._last[0]) / max(t - self._last[1], 1e-9)
        message = (
            f"{rate:.1f} steps/s, {100 * step / self.num_steps:.1f}% ({step}/{self.num_steps}),"
            f" ETA: {_duration((self.num_steps - step) / rate)}"
        )
        if self._parts:
            total = t - self._t0
            shares = ", ".join(
                f"{100 * s / total:.1f}% {k}" for k, s in sorted(self._parts.items())
            )
            message += f" ({_duration(total)} : {shares})"
        logging.info("%s", message)
        if self.writer is not None:
            self.writer.write_scalars(step, {"steps_per_sec": rate})
            self.writer.write_scalars(step, {"uptime": t - self._t0})
        self._last = (step, t)
        return True

    @contextlib.contextmanager
    def timed(self, name: str):
        """Adds the wall time of the block to the part `name`."""
        start = time.monotonic()
        try:
            yield
        finally:
            self._parts[name] += time.monotonic() - start


class Profile:
    """CLU's `Profile` as the train loop uses it, without TensorFlow: a `jax.profiler` trace
    into `logdir` (TensorBoard's profile plugin reads it) from step `first_profile` for
    `num_profile_steps` steps."""

    def __init__(self, *, logdir: str, num_profile_steps: int, first_profile: int, **unused):
        del unused  # profile_duration_ms, every_secs: the loop passes None
        self.logdir, self.num_steps, self.first = logdir, num_profile_steps, first_profile
        self._started: int | None = None
        self._done = False

    def __call__(self, step: int) -> None:
        import jax

        if self._started is None and step == self.first:
            jax.profiler.start_trace(self.logdir)
            self._started = step
        elif (
            self._started is not None and not self._done and step >= self._started + self.num_steps
        ):
            jax.profiler.stop_trace()
            self._done = True
