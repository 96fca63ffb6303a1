r"""Train one experiment.

    python -m fmnist_jax.main --config experiments/cnn.py --workdir runs/cnn \
        [--config.num_train_steps=200] [--verbose]

`--config` takes an experiment file or name, with an optional variant (`cnn:test`, its CPU smoke
test). Rerunning on the same workdir resumes. Several processes train one run with the same
`--coordinator_address=HOST:PORT --num_processes=N` and each its own `--process_id=I`, or
`--distributed` (docs/accelerators.md)."""

import dataclasses
from pathlib import Path

from absl import flags, logging
from ml_collections import config_flags

from fmnist_jax import cli, runtime

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The train command's flags; the distributed ones are jax.distributed.initialize's."""
    config_flags.DEFINE_config_file(
        "config", None, "Experiment file or name, optionally with :variant.", lock_config=True
    )
    flags.DEFINE_string("workdir", None, "Folder for checkpoints, logs and summary.json.")
    flags.DEFINE_string("coordinator_address", None, "HOST:PORT where process 0 listens.")
    flags.DEFINE_integer("num_processes", None, "Processes in the run.")
    flags.DEFINE_integer("process_id", None, "This process's index, 0..N-1.")
    flags.DEFINE_bool("distributed", False, "Join a cluster JAX detects (TPU pod, SLURM, MPI).")
    flags.DEFINE_integer("initialization_timeout", 300, "Seconds to wait for all processes.")
    flags.DEFINE_integer("heartbeat_timeout_seconds", 100, "Seconds before a silent peer is dead.")
    flags.DEFINE_string("coordinator_bind_address", None, "Where process 0 binds, if not there.")


def resolve_experiment(argv: list[str]) -> list[str]:
    """argv with `--config NAME[:variant]` replaced by that experiment's file; a `--config`
    that is neither an existing file nor an experiment raises UsageError."""
    from fmnist_jax import config as config_lib
    from fmnist_jax.errors import UsageError

    out = list(argv)
    for i, arg in enumerate(out):
        if arg.startswith("--config="):
            prefix, value = "--config=", arg.split("=", 1)[1]
        elif arg == "--config" and i + 1 < len(out):
            prefix, value, i = "", out[i + 1], i + 1
        else:
            continue
        path, _, variant = value.partition(":")
        if Path(path).is_file():
            continue
        if path not in config_lib.experiment_names():
            raise UsageError(
                f"config file {path} not found; experiments are"
                f" {', '.join(config_lib.experiment_names())}"
            )
        resolved = str(config_lib.experiment_path(path)) + (f":{variant}" if variant else "")
        out[i] = prefix + resolved
    return out


def load_config():
    """The parsed config; a typo in a `--config.<field>` override as one clear line."""
    from fmnist_jax import config as config_lib
    from fmnist_jax.errors import UsageError

    try:
        return FLAGS.config
    except (AttributeError, KeyError) as e:
        raise UsageError(config_lib.unknown_field(e)) from None


def launch():
    """The `distributed.Launch` the flags describe: a flag per field, `auto` is --distributed."""
    from fmnist_jax import distributed

    names = [f.name for f in dataclasses.fields(distributed.Launch) if f.name != "auto"]
    return distributed.Launch(auto=FLAGS.distributed, **{n: FLAGS[n].value for n in names})


def main() -> None:
    config = load_config()
    from fmnist_jax import distributed, train

    distributed.initialize(launch())  # before any JAX computation
    hint = runtime.malloc_hint()
    if hint and distributed.is_writer():
        logging.info("%s", hint)
    train.train_and_evaluate(config, FLAGS.workdir)


if __name__ == "__main__":
    cli.run(main, define_flags, required=["config", "workdir"], prepare=resolve_experiment)
