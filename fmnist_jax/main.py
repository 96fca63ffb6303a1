"""Command line: train one experiment.

    python -m fmnist_jax.main --config experiments/cnn.py --workdir runs/cnn \
        [--config.num_train_steps=200] [--verbose]

Bad input ends in one line on stderr naming the problem and a non-zero exit; --verbose shows the
traceback as well. On Linux the command restarts itself once with glibc's huge-page tunable
(`fmnist_jax.runtime`; FMNIST_CPU_TUNING=0 turns that off).
"""

import logging as pylogging
import os
import re
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from absl import app, flags, logging
from ml_collections import config_flags

from fmnist_jax import errors, runtime

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Folder for checkpoints, logs and summary.json.")
flags.DEFINE_bool("verbose", False, "Show full tracebacks on errors.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from fmnist_jax import train  # after flag parsing: keeps --help fast

    logging.set_verbosity(logging.INFO)
    logging.get_absl_logger().addFilter(_quiet_libraries)
    logging.get_absl_handler().addFilter(_quiet_libraries)
    with errors.reported(verbose=FLAGS.verbose):
        train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


def _quiet_libraries(record) -> bool:
    """Keeps our progress lines; drops the INFO chatter of orbax and friends."""
    noisy = ("orbax", "jax/_src", "tensorflow", "logging_writer")
    return record.levelno >= pylogging.WARNING or not any(n in record.pathname for n in noisy)


def _config_path(argv) -> str | None:
    """The file named by --config (without its `:variant`), as absl would read it."""
    path = None  # absl keeps the last occurrence
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        elif arg == "--config" and i + 1 < len(argv):
            path = argv[i + 1]
    return None if path is None else path.split(":")[0]


def _unknown_field(e: Exception) -> str:
    """ml_collections' KeyError/AttributeError for a typo, as one line with its suggestion."""
    names = re.findall(r"[A-Za-z_][\w.]*", str(e))
    message = f"unknown config field {names[0]!r}" if names else "unknown config field"
    suggestion = re.search(r'Did you mean "([\w.]+)"', str(e))
    return message + (f" (did you mean {suggestion.group(1)!r}?)" if suggestion else "")


def parse_flags(argv):
    """absl's parsing, with config mistakes (unknown field, missing file) as one clear line."""
    with errors.reported(verbose="--verbose" in argv, flag_errors=True):
        path = _config_path(argv)
        if path is None or not any(a.startswith("--workdir") for a in argv):
            raise errors.UsageError(
                "--config and --workdir are required, e.g. --config experiments/cnn.py"
                " --workdir runs/cnn"
            )
        if not os.path.isfile(path):
            raise errors.UsageError(f"config file {path} not found")
        try:
            rest = FLAGS(argv)
            _ = FLAGS.config  # the config file is loaded lazily: fail here, not in main
        except (AttributeError, KeyError) as e:
            raise errors.UsageError(_unknown_field(e)) from None
        return rest


if __name__ == "__main__":
    runtime.reexec_with_malloc_tunable()  # XLA:CPU's per-step buffers on huge pages
    sys.exit(app.run(main, flags_parser=parse_flags))
