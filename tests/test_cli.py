"""The one command-line convention: one line per failure, exit 2 for user errors, --help 0."""

import pytest
from absl import flags

from fmnist_jax import cli, errors


@pytest.mark.parametrize("error_class", errors.USER_ERRORS)
def test_user_errors_end_in_one_line_and_exit_2(error_class, capsys):
    with pytest.raises(SystemExit) as e, cli.reported():
        raise error_class("runs/x: something is wrong\nsecond line")
    assert e.value.code == cli.EXIT_USER_ERROR
    assert capsys.readouterr().err == "error: runs/x: something is wrong\n"


def test_internal_errors_exit_1_with_a_hint_and_verbose_lets_them_through(capsys):
    with pytest.raises(SystemExit) as e, cli.reported():
        raise ZeroDivisionError("division by zero")
    assert e.value.code == cli.EXIT_INTERNAL_ERROR
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "error: ZeroDivisionError: division by zero",
        "(rerun with --verbose for the traceback)",
    ]
    with pytest.raises(ZeroDivisionError), cli.reported(verbose=True):
        raise ZeroDivisionError("division by zero")


def test_flag_errors_count_as_user_errors(capsys):
    with pytest.raises(SystemExit) as e, cli.reported():
        raise flags.IllegalFlagValueError("flag --n=abc: not an int")
    assert e.value.code == 2 and "error: flag --n=abc: not an int" in capsys.readouterr().err


def test_unknown_config_field_reads_as_a_typo_with_its_suggestion():
    import ml_collections

    config = ml_collections.ConfigDict({"learning_rate": 0.1})
    config.lock()
    with pytest.raises(KeyError) as e:
        config["lerning_rate"]
    expected = "unknown config field 'lerning_rate' (did you mean 'learning_rate'?)"
    assert cli.error_line(e.value) == expected


def test_a_bug_raising_key_error_is_not_called_a_config_typo(capsys):
    with pytest.raises(SystemExit) as e, cli.reported():
        {}["step"]
    assert e.value.code == cli.EXIT_INTERNAL_ERROR
    assert capsys.readouterr().err.splitlines()[0] == "error: KeyError: 'step'"


def test_ctrl_c_outside_the_train_loop_is_one_line_and_exit_130(capsys):
    with pytest.raises(SystemExit) as e, cli.reported():
        raise KeyboardInterrupt
    assert e.value.code == 130
    assert (
        capsys.readouterr().err
        == "stopped: SIGINT (Ctrl-C); the last finished checkpoint is kept\n"
    )


def test_a_missing_optional_dependency_is_one_line_with_its_pip_command(capsys):
    missing = ModuleNotFoundError("No module named 'matplotlib'", name="matplotlib")
    with pytest.raises(SystemExit) as exit_info, cli.reported():
        raise missing
    assert exit_info.value.code == cli.EXIT_USER_ERROR
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["error: matplotlib is not installed (pip install matplotlib)"]
    # A module that is not an optional dependency stays a bug: exit 1 with the hint.
    with pytest.raises(SystemExit) as exit_info, cli.reported():
        raise ModuleNotFoundError("No module named 'fmnist_jax.nope'", name="fmnist_jax.nope")
    assert exit_info.value.code == cli.EXIT_INTERNAL_ERROR


def _failure(raise_it) -> BaseException:
    try:
        raise_it()
    except Exception as e:  # noqa: BLE001 - the exception itself is what the test needs
        return e
    raise AssertionError("nothing raised")


def test_background_failures_of_orbax_and_asyncio_go_to_debug_and_others_keep_their_hooks(
    monkeypatch,
):
    """What `quiet_background_failures` routes to the DEBUG log: orbax's ERROR records and an
    asyncio error reported from a thread or as unraisable ("Event loop is closed", as
    tensorstore's callback into a finished loop raises it); a failure of other code still
    reaches the hook that was there before."""
    import asyncio
    import logging as pylogging
    import sys
    import threading
    from types import SimpleNamespace

    from absl import logging

    reached = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: reached.append(u.exc_type))
    monkeypatch.setattr(threading, "excepthook", lambda a: reached.append(a.exc_type))
    try:
        cli.quiet_background_failures()
        loop = asyncio.new_event_loop()
        loop.close()
        closed = _failure(lambda: loop.call_soon_threadsafe(print))
        ours = _failure(lambda: 1 / 0)
        for e in (closed, ours):
            u = {"exc_type": type(e), "exc_value": e, "exc_traceback": e.__traceback__}
            sys.unraisablehook(SimpleNamespace(**u, err_msg=None, object=None))
        for fn in (lambda: loop.call_soon_threadsafe(print), lambda: 1 / 0):
            thread = threading.Thread(target=fn)
            thread.start()
            thread.join()
        assert reached == [ZeroDivisionError, ZeroDivisionError]

        def record(path):
            return pylogging.LogRecord("absl", pylogging.ERROR, path, 1, "save failed", (), None)

        orbax = record("/site-packages/orbax/checkpoint/_src/futures/future.py")
        assert not cli._demote_background_errors(orbax) and orbax.levelname == "DEBUG"
        own = record("/repo/fmnist_jax/train.py")
        assert cli._demote_background_errors(own) and own.levelno == pylogging.ERROR
    finally:
        logging.get_absl_logger().removeFilter(cli._demote_background_errors)
        logging.get_absl_handler().removeFilter(cli._demote_background_errors)


def test_importing_a_command_defines_no_flag_and_running_it_defines_its_own():
    import subprocess
    import sys

    commands = ["main", "report", "sweep", "theory", "plotting.__main__"]
    code = (
        "import importlib; from absl import flags\n"
        f"for m in {commands!r}: importlib.import_module('fmnist_jax.' + m)\n"
        "print(sorted(set(flags.FLAGS) & {'config', 'workdir', 'runs', 'out', 'models'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    command = [sys.executable, "-m", "fmnist_jax.report", "--help"]
    help_text = subprocess.run(command, capture_output=True, text=True, check=False)
    assert help_text.returncode == 0 and "--figures" in help_text.stdout


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path, monkeypatch, capsys):
    with open(tmp_path / "out", "w") as out:  # a real file descriptor
        monkeypatch.setattr("sys.stdout", out)
        with pytest.raises(SystemExit) as stop, cli.reported():
            raise BrokenPipeError(32, "Broken pipe")
    assert stop.value.code == 141  # 128 + SIGPIPE, as `yes | head` ends
    assert capsys.readouterr().err == ""
