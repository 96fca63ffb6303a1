"""The exceptions every module raises for mistakes a user can fix; `fmnist_jax.cli` turns them
into one line `error: <message>` with exit status 2. Imports nothing of the package."""


class ConfigError(ValueError):
    """A config field, an argument or an input holds a value the code cannot run with."""


class DataError(ValueError):
    """Bad or unreachable input data; the message names the file and what is wrong."""


class UsageError(ValueError):
    """Wrong command-line use."""


class RunError(RuntimeError):
    """A run directory that is missing, unreadable or from another run (which file and why)."""


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss, a checkpoint that does not fit, ...)."""


class MissingDependency(RuntimeError):
    """A feature needs an optional package that is not installed (the message names its pip)."""


USER_ERRORS = (ConfigError, DataError, UsageError, RunError, TrainingError, MissingDependency)

# The optional dependencies, by the top-level module a feature imports: what pip installs.
PIP_NAMES = {
    "tensorflow": "tensorflow-cpu",
    "tensorboard": "tensorboard",
    "tensorflow_datasets": "tensorflow-datasets",
    "torch": "torch",
    "torchattacks": "torchattacks",
    "matplotlib": "matplotlib",  # figures only (a stock GPU image may lack it)
}


def pip_install(e: ImportError) -> str | None:
    """`pip install <package>` for an ImportError of an optional dependency (TensorFlow's
    submodules included); None for any other import failure, which is a bug to show as is."""
    name = (e.name or "").split(".")[0]
    return f"pip install {PIP_NAMES[name]}" if name in PIP_NAMES else None


class Interrupted(RuntimeError):
    """Training stopped on signal `signum` after saving a checkpoint at the step it reached (the
    same command resumes); the command line exits with 128 + signum."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
