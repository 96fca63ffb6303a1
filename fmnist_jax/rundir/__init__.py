"""The run directory: the one module that writes and reads a training run's workdir.

    workdir/
      config.json          the exact config, written when training starts
      metrics.jsonl        one record per evaluation and replica: the source of truth for
                           every reader
      summary.json         the final numbers (per replica, and their statistics), written
                           when training ends
      train/, test/        TensorBoard event files (CLU writers), for TensorBoard users
                           (replica_<k>/train, replica_<k>/test with several replicas)
      checkpoints/<step>/  orbax checkpoints; "finished" is decided by orbax's public API

The train loop writes through the functions here; plotting, the report, the API and the attack
read a run with `read_run` (plain data) and restore checkpoints through
`fmnist_jax.checkpoints`, which uses `checkpoint_manager` and `finished_steps` from here. Only
`open_writers` (event files) imports TensorFlow, on process 0 only; without TensorFlow a run
has everything but the event files.
"""

from fmnist_jax.rundir.checkpoint_files import (
    CHECKPOINT_DIR,
    CHECKPOINT_ITEMS,
    CHECKSUM_FILE,
    checkpoint_manager,
    finalized_step_folders,
    finished_steps,
    record_checksum,
    recorded_checksum,
    require_finished,
    set_aside,
    set_aside_unfinished,
    tree_checksum,
)
from fmnist_jax.rundir.events import (
    COLLECTIONS,
    folders,
    open_writers,
    progress_writer,
    write_record,
)
from fmnist_jax.rundir.files import (
    CONFIG_FILE,
    LOCK_FILE,
    METRICS_FILE,
    SUMMARY_FILE,
    Curve,
    Run,
    append_record,
    check_same_run,
    disk_full,
    prepare,
    read_config,
    read_history,
    read_json,
    read_run,
    write_config,
    write_history,
    write_json,
    write_summary,
    writer_lock,
)

__all__ = [
    "CHECKPOINT_DIR",
    "CHECKPOINT_ITEMS",
    "CHECKSUM_FILE",
    "COLLECTIONS",
    "CONFIG_FILE",
    "LOCK_FILE",
    "METRICS_FILE",
    "SUMMARY_FILE",
    "Curve",
    "Run",
    "append_record",
    "check_same_run",
    "checkpoint_manager",
    "disk_full",
    "finalized_step_folders",
    "finished_steps",
    "folders",
    "open_writers",
    "prepare",
    "progress_writer",
    "read_config",
    "read_history",
    "read_json",
    "read_run",
    "record_checksum",
    "recorded_checksum",
    "require_finished",
    "set_aside",
    "set_aside_unfinished",
    "tree_checksum",
    "write_config",
    "write_history",
    "write_json",
    "write_record",
    "write_summary",
    "writer_lock",
]
