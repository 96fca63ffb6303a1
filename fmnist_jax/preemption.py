"""Stopping cleanly on SIGTERM (a scheduler's pre-emption notice) and SIGINT (Ctrl-C): after
every step the loop asks `StopRequest.requested(step)`, and if so saves that step and stops with
`errors.Interrupted`. One process: signal handlers note the signal (a second Ctrl-C stops at
once). Several processes: JAX's pre-emption sync point, True on every process at the same step.
"""

import signal
import threading

import jax
from absl import logging
from jax.experimental import multihost_utils


class StopRequest:
    """Whether (and by which signal) this run was asked to stop; a context manager."""

    def __init__(self):
        self.signum: int | None = None
        self.multi_process = jax.process_count() > 1
        self._previous: dict = {}
        self._sync_point = True

    def __enter__(self):
        if not self.multi_process and threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._note)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _note(self, signum, frame) -> None:
        del frame
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without a checkpoint
        self.signum = signum

    def requested(self, step: int) -> bool:
        """True once the run should save at `step` and stop."""
        if not self.multi_process:
            return self.signum is not None
        if not self._sync_point:
            return False
        try:
            reached = multihost_utils.reached_preemption_sync_point(step)
        except RuntimeError as e:  # no pre-emption service in this runtime
            logging.warning("no pre-emption sync point (%s): SIGTERM is not handled", e)
            self._sync_point = False
            return False
        if reached:
            self.signum = signal.SIGTERM
        return reached

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "a stop request"
