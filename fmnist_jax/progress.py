"""A live progress line for `fj.fit` in notebooks, REPLs and scripts.

The command line keeps CLU's `ReportProgress` (absl log lines); outside `app.run` those are
hidden, so the API shows its own line: steps done, steps/s, ETA and the last evaluation.

- in Jupyter / Colab: one output line updated in place (`IPython.display` with a display id);
- in a terminal: one line rewritten with a carriage return;
- elsewhere (a log file, a pipe): a plain line every `every_secs`.

Each evaluation is also printed as a line of its own, so the history stays on screen.
"""

import sys
import time

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
