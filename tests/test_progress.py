"""The API's live progress line: what it says, and how it shows in a terminal and a log."""

import io

import pytest

from fmnist_jax import progress


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_the_line_says_steps_rate_eta_and_the_last_evaluation():
    live = progress.LiveProgress(num_steps=100, stream=io.StringIO())
    live._start, live._first_step = 0.0, 0
    assert live.line(25, now=5.0) == "step 25/100 (25%), 5.0 steps/s, ETA 15s"
    live.evaluated([{"step": 25, "epoch": 0.5, "test_loss": 0.25, "test_accuracy": 0.9}])
    assert live.line(50, now=10.0).endswith(
        "| step 25 (epoch 0.50): test_loss 0.2500, test_accuracy 0.9000"
    )
    assert progress._duration(3725) == "1h 02m" and progress._duration(75) == "1m 15s"


def test_a_log_gets_plain_lines_and_each_evaluation():
    stream = io.StringIO()
    live = progress.LiveProgress(num_steps=3, every_secs=0.0, stream=stream)
    for step in (1, 2, 3):
        live(step)
    live.evaluated([{"step": 3, "epoch": 1.0, "test_loss": 0.5}])
    live.close()
    lines = stream.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines[:3]] == [
        "step 1/3 (33%)",
        "step 2/3 (67%)",
        "step 3/3 (100%)",
    ]
    assert lines[3] == "step 3 (epoch 1.00): test_loss 0.5000"
    assert "\r" not in stream.getvalue()


def test_a_terminal_gets_one_line_rewritten_in_place():
    stream = _Tty()
    live = progress.LiveProgress(num_steps=2, every_secs=0.0, stream=stream)
    live(1)
    live.evaluated([{"step": 1, "epoch": 0.5, "test_loss": 0.5}])
    live(2)
    live.close()
    text = stream.getvalue()
    assert text.count("\r\x1b[2K") >= 3 and text.endswith("\n")
    assert "step 1 (epoch 0.50): test_loss 0.5000\n" in text  # the evaluation stays on screen


def test_several_replicas_make_one_line_of_means_and_ranges():
    records = [
        {"step": 8, "epoch": 0.5, "replica": k, "test_loss": v} for k, v in enumerate((0.2, 0.4))
    ]
    line = progress.format_records(records, 24)
    assert (
        line == "step 8/24 (epoch 0.50), 2 replicas, mean (range): test_loss 0.3000 (0.2000-0.4000)"
    )
    assert progress.format_records(records[:1], 24) == "step 8/24 (epoch 0.50): test_loss 0.2000"


# --------------------------------------------------------------------------- without TensorFlow


class _Writer:
    def __init__(self):
        self.lines = []

    def write_scalars(self, step, scalars):
        self.lines.append((step, *scalars))


def test_report_progress_without_tensorflow_reports_as_clus_does(monkeypatch):
    logged = []
    monkeypatch.setattr(progress.logging, "info", lambda fmt, *a: logged.append(fmt % a))
    writer = _Writer()
    report = progress.ReportProgress(num_train_steps=10, writer=writer, every_steps=4)
    assert [report(s, t=float(s)) for s in range(11)] == [
        False, False, False, False, True, False, False, False, True, False, True,
    ]  # fmt: skip
    assert logged[0] == "1.0 steps/s, 40.0% (4/10), ETA: 6s"
    assert writer.lines[:2] == [(4, "steps_per_sec"), (4, "uptime")]
    assert [line[0] for line in writer.lines] == [4, 4, 8, 8, 10, 10]
    with report.timed("eval"):
        pass
    assert "eval" in report._parts


def test_profile_without_tensorflow_traces_the_steps_asked_for(tmp_path):
    profile = progress.Profile(logdir=str(tmp_path), num_profile_steps=2, first_profile=1)
    for step in range(5):
        profile(step)
    assert profile._done
    assert list((tmp_path / "plugins" / "profile").glob("*/*.xplane.pb"))


def test_periodic_actions_are_clus_where_tensorflow_is_installed():
    periodic_actions = pytest.importorskip("clu.periodic_actions", exc_type=ImportError)

    assert progress.periodic_actions() is periodic_actions
