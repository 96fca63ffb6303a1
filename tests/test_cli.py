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
