"""How the command lines report a failure: one line on stderr and a non-zero exit.

Errors the user can fix (bad data, bad config, a workdir from another run, a non-finite loss)
are printed as `error: <message>`; anything else as well, with a hint to rerun with --verbose
for the traceback.
"""

import contextlib
import sys

from absl import flags

from fmnist_jax.config import ConfigError
from fmnist_jax.data import DataError

EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 1


class UsageError(ValueError):
    """Wrong command-line use."""


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, a workdir from another experiment, ...)."""


USER_ERRORS = (ConfigError, DataError, TrainingError, UsageError)


def describe(e: BaseException) -> str:
    """One line saying what went wrong."""
    if isinstance(e, (KeyError, AttributeError)) and e.args:  # ml_collections' unknown field
        return " ".join(str(e.args[0]).split())
    text = str(e).strip().splitlines()
    message = text[0] if text else type(e).__name__
    if isinstance(e, (USER_ERRORS, flags.Error)):
        return message
    return f"{type(e).__name__}: {message}"


@contextlib.contextmanager
def reported(verbose: bool = False, flag_errors: bool = False):
    """Turns an exception into `error: ...` on stderr and SystemExit (2 for user errors)."""
    try:
        yield
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:
        if verbose:
            raise
        user = isinstance(e, USER_ERRORS) or flag_errors
        print(f"error: {describe(e)}", file=sys.stderr)
        if not user:
            print("(rerun with --verbose for the traceback)", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR if user else EXIT_INTERNAL_ERROR)
