"""The one convention of every command line: each entry point defines its absl flags in
`define_flags()` and ends in `cli.run(main, define_flags, required=[...])`, which

- refuses a jax older than the supported range, and applies `runtime.configure_process`;
- defines the flags (a missing required one is a one-line error); `--help` exits 0;
- turns every failure into one line `error: ...` on stderr, exit status 2 for mistakes the user
  can fix (`errors.USER_ERRORS`, flag errors), 1 otherwise; `--verbose` shows the traceback;
- logs at INFO without the libraries' INFO chatter, and logs at DEBUG the tracebacks orbax's
  background threads print when a save fails (the main thread fails with one line too).
"""

import contextlib
import logging as pylogging
import os
import re
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Sequence

from absl import app, flags, logging

from fmnist_jax import errors, runtime

EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 1
HELP_FLAGS = ("--help", "-help", "-?", "--helpshort", "--helpfull", "-h")
NOISY_LOGGERS = ("orbax", "jax/_src", "tensorflow", "logging_writer", "absl/flags")
# Code whose background threads report a failed checkpoint save themselves (orbax's writer
# threads, their asyncio loops, tensorstore's callbacks into a loop already closed).
BACKGROUND_CODE = ("/orbax/", "/asyncio/", "/tensorstore/")

FLAGS = flags.FLAGS


def error_line(e: BaseException) -> str:
    """One line saying what went wrong."""
    if isinstance(e, ImportError) and errors.pip_install(e):  # an optional dependency
        return f"{e.name.split('.')[0]} is not installed ({errors.pip_install(e)})"
    typo = ("Did you mean", "does not exist", "cannot be added")
    if isinstance(e, (KeyError, AttributeError)) and any(w in str(e) for w in typo):
        from fmnist_jax import config as config_lib

        return config_lib.unknown_field(e)  # ml_collections' unknown config field
    text = str(e).strip().splitlines()
    message = text[0] if text else type(e).__name__
    if isinstance(e, flags.Error) and message.endswith(":") and len(text) > 1:
        # config_flags wraps a failing config file's exception, traceback and all: its cause
        # is the last line, "module.ConfigError: what is wrong".
        message += " " + re.sub(r"^[\w.]+(Error|Exception): ", "", text[-1].strip())
    if isinstance(e, (errors.USER_ERRORS, flags.Error)):
        return message
    return f"{type(e).__name__}: {message}"


@contextlib.contextmanager
def reported(verbose: bool = False, user_error: bool = False):
    """Turns an exception into `error: ...` on stderr and SystemExit (2 for user errors, or
    for any error when `user_error`); `verbose` lets it through with its traceback."""
    try:
        yield
    except SystemExit:
        raise
    except BrokenPipeError:  # the reader went away (`--help | head`): quiet, as Unix tools are
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(128 + signal.SIGPIPE)
    except KeyboardInterrupt:  # outside the train loop's handler, or a second Ctrl-C
        if verbose:
            raise
        print("stopped: SIGINT (Ctrl-C); the last finished checkpoint is kept", file=sys.stderr)
        sys.exit(130)
    except errors.Interrupted as e:  # a clean stop, not a failure: one line, 128 + signal
        print(f"stopped: {e}", file=sys.stderr)
        sys.exit(128 + e.signum)
    except Exception as e:
        if verbose:
            raise
        user = user_error or isinstance(e, (errors.USER_ERRORS, flags.Error))
        user = user or (isinstance(e, ImportError) and errors.pip_install(e) is not None)
        print(f"error: {error_line(e)}", file=sys.stderr)
        if not user:
            print("(rerun with --verbose for the traceback)", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR if user else EXIT_INTERNAL_ERROR)


def _quiet_libraries(record) -> bool:
    """Keeps our progress lines and every warning; drops the INFO chatter of libraries."""
    return record.levelno >= pylogging.WARNING or not any(
        n in record.pathname for n in NOISY_LOGGERS
    )


def _add_log_filter(keep: Callable) -> None:
    logging.get_absl_logger().addFilter(keep)
    logging.get_absl_handler().addFilter(keep)


def setup_logging() -> None:
    """absl INFO logging for our own modules, warnings only for the libraries."""
    logging.set_verbosity(logging.INFO)
    _add_log_filter(_quiet_libraries)


def _from_background_code(tb) -> bool:
    return any(
        part in frame.filename for frame in traceback.extract_tb(tb) for part in BACKGROUND_CODE
    )


def _demote_background_errors(record) -> bool:
    """orbax's and asyncio's ERROR records (with their tracebacks) as DEBUG records: shown
    only where absl's verbosity shows DEBUG."""
    if record.levelno >= pylogging.ERROR and any(p in record.pathname for p in BACKGROUND_CODE):
        record.levelno, record.levelname = pylogging.DEBUG, "DEBUG"
        return logging.get_absl_logger().isEnabledFor(pylogging.DEBUG)
    return True


def quiet_background_failures() -> None:
    """Tracebacks from orbax's background threads (a save on a full disk: orbax's ERROR
    records, `threading.excepthook`, `sys.unraisablehook` for tensorstore's callbacks) go to
    the log at DEBUG; the main thread reports the failure. Other failures keep the hooks."""
    _add_log_filter(_demote_background_errors)
    thread_hook, unraisable_hook = threading.excepthook, sys.unraisablehook

    def on_thread(args):
        if not _from_background_code(args.exc_traceback):
            return thread_hook(args)
        exc_info = (args.exc_type, args.exc_value, args.exc_traceback)
        name = args.thread.name if args.thread else "?"
        logging.debug("background thread %s failed", name, exc_info=exc_info)

    def on_unraisable(u):
        if not _from_background_code(u.exc_traceback):
            return unraisable_hook(u)
        exc_info = (u.exc_type, u.exc_value, u.exc_traceback)
        logging.debug("%s: %r", u.err_msg or "exception ignored", u.object, exc_info=exc_info)

    threading.excepthook, sys.unraisablehook = on_thread, on_unraisable


def parse_flags(argv: list[str], prepare: Callable[[list[str]], list[str]] | None = None):
    """absl's parsing with the convention above; `prepare` may rewrite argv first (the train
    command resolves experiment names to their files there)."""
    with reported(verbose="--verbose" in argv, user_error=True):
        try:
            return FLAGS(prepare(argv) if prepare else argv)
        except SystemExit as e:  # absl's --help prints the flags, then exits 1
            helped = any(a in HELP_FLAGS or a.startswith("--help") for a in argv[1:])
            raise SystemExit(0 if helped else e.code) from None


def run(
    main: Callable[[], None],
    define_flags: Callable[[], None] | None = None,
    required: Sequence[str] = (),
    prepare: Callable[[list[str]], list[str]] | None = None,
) -> None:
    """Runs `main()` as a command line after parsing the flags (see the module docstring)."""
    problem = runtime.jax_version_problem()
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    try:
        runtime.configure_process()
    except ValueError as e:  # a malformed FMNIST_CPU_SHARE
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    if define_flags is not None:
        define_flags()
    if "verbose" not in FLAGS:
        flags.DEFINE_bool("verbose", False, "Show full tracebacks on errors.")
    flags.mark_flags_as_required(required)

    def entry(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
        setup_logging()
        if not FLAGS.verbose:
            quiet_background_failures()
        with reported(verbose=FLAGS.verbose):
            main()

    app.run(entry, flags_parser=lambda argv: parse_flags(argv, prepare))
