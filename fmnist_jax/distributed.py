"""Several processes, one training run: JAX's distributed runtime, the global mesh, and each
process's rows of a global batch (`local_rows`, `to_global`), so results do not depend on the
number of processes (launching: docs/accelerators.md). A peer that never starts or dies ends
every survivor with one line; a failure while the run is set up reaches every process at the
next `failing_together` point.
"""

import builtins
import contextlib
import dataclasses
import json
import math
import os
import re
import sys
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding

from fmnist_jax import errors
from fmnist_jax.errors import ConfigError

EXIT_PEER_FAILURE = 3


@dataclasses.dataclass(frozen=True)
class Launch:
    """How this process joins a run (the arguments of `jax.distributed.initialize`)."""

    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    auto: bool = False  # JAX's cluster auto-detection
    initialization_timeout: int = 300
    heartbeat_timeout_seconds: int = 100
    coordinator_bind_address: str | None = None

    @property
    def multi_process(self) -> bool:
        return self.auto or (self.num_processes or 1) > 1

    def check(self) -> None:
        if self.auto or not self.multi_process:
            return
        if not self.coordinator_address or self.process_id is None:
            raise ConfigError(
                f"num_processes={self.num_processes} needs --coordinator_address=HOST:PORT and"
                " --process_id (or --distributed for JAX's cluster auto-detection)"
            )
        if not 0 <= self.process_id < self.num_processes:
            raise ConfigError(
                f"process_id={self.process_id} must lie in 0..{self.num_processes - 1}"
            )
        for name in ("initialization_timeout", "heartbeat_timeout_seconds"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be a positive number of seconds")


def _exit_peer_failure(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    os._exit(EXIT_PEER_FAILURE)


def _watchdog(seconds: float, message: str) -> threading.Timer:
    """Ends the process with `message` on stderr after `seconds` unless cancelled first (JAX's
    own timeout aborts with a C++ stack dump instead of a line)."""
    timer = threading.Timer(seconds, _exit_peer_failure, (message,))
    timer.daemon = True
    timer.start()
    return timer


def initialize(launch: Launch) -> None:
    """Joins the distributed runtime `launch` describes, before any JAX computation (a single
    process does nothing). The coordinator binds the address given unless
    `coordinator_bind_address` says otherwise; a peer missing after `initialization_timeout`
    seconds ends this process with one line and exit status 3."""
    launch.check()
    if not launch.multi_process or jax.distributed.is_initialized():
        return
    address, bind = launch.coordinator_address, launch.coordinator_bind_address
    if bind is None and launch.process_id == 0:
        bind = address
    timeout = launch.initialization_timeout
    watchdog = _watchdog(
        max(timeout - 1, 1),
        f"distributed start: not all {launch.num_processes or '?'} processes joined"
        f" {address or 'the cluster'} within {timeout} s (is every process started, with the"
        " same --coordinator_address and --num_processes?)",
    )
    try:
        jax.distributed.initialize(
            coordinator_address=address,
            num_processes=launch.num_processes,
            process_id=launch.process_id,
            initialization_timeout=timeout,
            heartbeat_timeout_seconds=launch.heartbeat_timeout_seconds,
            coordinator_bind_address=bind,
        )
    finally:  # joined, or failed with an exception of its own: no watchdog line then
        watchdog.cancel()


def is_writer() -> bool:
    """Whether this process writes the run directory's files (process 0)."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Waits until every process gets here (a no-op for one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


OUTCOME_BYTES = 2048  # what a process tells the others of its failure: type and message


def _encode(error: BaseException | None) -> np.ndarray:
    """[failed, JSON {type, module, message} as UTF-8, zero padded] for an all-gather."""
    out = np.zeros(1 + OUTCOME_BYTES, np.uint8)
    if error is None:
        return out
    kind = type(error)
    message = str(error).encode()[: OUTCOME_BYTES // 2].decode(errors="ignore")
    payload = json.dumps({"type": kind.__name__, "module": kind.__module__, "message": message})
    data = payload.encode()[:OUTCOME_BYTES]
    out[0], out[1 : 1 + len(data)] = 1, np.frombuffer(data, np.uint8)
    return out


def _decode(row: np.ndarray) -> Exception:
    """Another process's error as the same type (Python's or `fmnist_jax.errors`') and message,
    so that `cli` prints the same line; else a RuntimeError naming it."""
    raw = bytes(row[1:]).rstrip(b"\0").decode(errors="replace")
    try:
        found = json.loads(raw)
    except json.JSONDecodeError:  # cut off mid-way: say what arrived
        return RuntimeError(raw)
    home = {"builtins": builtins, errors.__name__: errors}.get(found["module"])
    kind = getattr(home, found["type"], None)
    if isinstance(kind, type) and issubclass(kind, Exception):
        with contextlib.suppress(TypeError):  # a constructor with other arguments
            return kind(found["message"])
    return RuntimeError(f"{found['type']}: {found['message']}")


def agree(name: str, error: BaseException | None = None) -> None:
    """Every process calls this at the same point with how it failed there (None: it did not);
    where another process failed, raises the first failing process's error here too."""
    if jax.process_count() == 1:
        return
    del name  # the point's name, for readers; all-gathers match by order
    outcomes = np.asarray(multihost_utils.process_allgather(_encode(error)))
    failed = np.flatnonzero(outcomes[:, 0])
    if error is None and failed.size:
        raise _decode(outcomes[failed[0]])


@contextlib.contextmanager
def failing_together(name: str):
    """Runs the block and ends it with `agree(name)`: an exception on any process ends the block
    on all of them at once with its type and message, instead of a wait at the next barrier
    until the heartbeat timeout. Every process must reach the end of the block in step."""
    try:
        yield
    except Exception as e:
        agree(name, e)
        raise
    agree(name)


def replica_axis_size(num_replicas: int, num_devices: int, num_processes: int = 1) -> int:
    """Devices on the mesh's `replica` axis: the most that divide both replicas and devices (each
    device holds whole replicas); 1 with several processes (each feeds rows of every replica)."""
    return 1 if num_processes > 1 else math.gcd(num_replicas, num_devices)


def make_mesh(num_replicas: int = 1) -> Mesh:
    """A 2-D mesh (`replica`, `data`) over every device of every process: replicas split
    over `replica` where the devices allow (`replica_axis_size`), each batch over `data`."""
    devices = np.array(jax.devices())
    size = replica_axis_size(num_replicas, len(devices), jax.process_count())
    return Mesh(devices.reshape(size, len(devices) // size), ("replica", "data"))


def local_rows(batch_size: int) -> slice:
    """This process's rows of a global batch: its share, in process order (the devices of a
    process are consecutive along the mesh's `data` axis)."""
    count, index = jax.process_count(), jax.process_index()
    if batch_size % count:
        raise ConfigError(f"batch size {batch_size} is not divisible by the {count} processes")
    share = batch_size // count
    return slice(index * share, (index + 1) * share)


def to_global(batch: dict, sharding: NamedSharding, batch_size: int, axis: int = 0) -> dict:
    """A process's rows (along `axis`) of a batch as one global array per field
    (multi-process only; one process hands its numpy batch to jit as it is)."""

    def global_shape(v):
        return (*v.shape[:axis], batch_size, *v.shape[axis + 1 :])

    return {
        k: jax.make_array_from_process_local_data(sharding, v, global_shape(v))
        for k, v in batch.items()
    }


def replicate(tree, sharding: NamedSharding):
    """Host values (the same on every process) as arrays replicated over the global mesh."""
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)
    local = jax.make_array_from_process_local_data
    return jax.tree.map(lambda v: local(sharding, np.asarray(v), np.shape(v)), jax.device_get(tree))


PEER_FAILURE_SIGNS = ("Gloo", "Connection closed", "Connection reset", "unhealthy", "heartbeat")


@contextlib.contextmanager
def exit_on_peer_failure(workdir):
    """With several processes, a collective that fails because another process died ends this
    process with one line and exit status 3 (`os._exit`: a normal exit would wait at JAX's
    shutdown barrier for the dead process, then abort)."""
    try:
        yield
    except Exception as e:
        text = str(e)
        if jax.process_count() == 1 or not any(sign in text for sign in PEER_FAILURE_SIGNS):
            raise
        reason = re.sub(r"(Error dispatching computation: )+", "", text).strip()
        first = reason.splitlines()[0][:160] if reason else type(e).__name__
        _exit_peer_failure(
            f"distributed run: process {jax.process_index()} lost another process"
            f" ({type(e).__name__}: {first}); {workdir} keeps its last finished checkpoint:"
            " start every process again to resume"
        )
