"""Progress: steps/s measured over chunks (never per step), the evaluation lines, the profile
and the API's live bar."""

import pytest

from fmnist_jax import progress


class _Writer:
    def __init__(self):
        self.scalars = []

    def write_scalars(self, step, scalars):
        self.scalars.append((step, scalars))


def test_steps_per_second_are_a_chunks_steps_over_its_wall_time(monkeypatch):
    logged = []
    monkeypatch.setattr(progress.logging, "info", lambda fmt, *a: logged.append(fmt % a))
    writer = _Writer()
    report = progress.ChunkProgress(1000, 0, writer, every_steps=500)
    report._last_t = 0.0
    assert [report(s, t=t) for s, t in ((250, 5.0), (500, 10.0), (750, 11.0), (1000, 20.0))] == [
        False, True, False, True,
    ]  # fmt: skip
    # 500 steps in 10 s, then 500 in 10 s: the chunk's rate, not that of its last step.
    rates = [(step, scalars["steps_per_sec"]) for step, scalars in writer.scalars]
    assert rates == [(500, 50.0), (1000, 50.0)]
    assert logged[0] == "50.0 steps/s, 50.0% (500/1000), ETA 10s"


def test_a_due_line_waits_for_the_dispatched_steps_before_it_measures(monkeypatch):
    monkeypatch.setattr(progress.logging, "info", lambda *a: None)
    clock = iter([0.0, 1.0, 10.0])  # construction, the call, after the wait
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    writer, waited = _Writer(), []
    report = progress.ChunkProgress(500, 0, writer, every_steps=500)
    assert report(500, wait=lambda: waited.append(True))
    # Dispatched in 1 s, run in 10: the chunk's rate is 50 steps/s, not 500.
    assert waited == [True] and writer.scalars[0][1]["steps_per_sec"] == 50.0


def test_without_every_steps_a_line_comes_after_every_secs_and_at_the_end(monkeypatch):
    monkeypatch.setattr(progress.logging, "info", lambda *a: None)
    report = progress.ChunkProgress(100, 0, None, every_secs=30.0)
    report._last_t = 0.0
    assert [report(s, t=t) for s, t in ((25, 10.0), (50, 31.0), (75, 40.0), (100, 45.0))] == [
        False, True, False, True,
    ]  # fmt: skip
    with report.timed("eval"):
        pass
    assert "eval" in report._parts


def test_several_members_make_one_line_of_means_and_ranges():
    records = [
        {"step": 8, "epoch": 0.5, "replica": k, "test_loss": v} for k, v in enumerate((0.2, 0.4))
    ]
    line = progress.format_records(records, 24)
    assert (
        line == "step 8/24 (epoch 0.50), 2 members, mean (range): test_loss 0.3000 (0.2000-0.4000)"
    )
    assert progress.format_records(records[:1], 24) == "step 8/24 (epoch 0.50): test_loss 0.2000"
    assert progress._duration(3725) == "1h 02m" and progress._duration(75) == "1m 15s"


def test_the_profile_traces_the_steps_asked_for(tmp_path):
    profile = progress.Profile(str(tmp_path), first=1, count=2)
    for step in range(5):
        profile(step)
    assert profile.state == "done"
    assert list((tmp_path / "plugins" / "profile").glob("*/*.xplane.pb"))


def test_the_live_bar_counts_steps_and_prints_each_evaluation(capsys):
    pytest.importorskip("tqdm")
    bar = progress.LiveBar(num_steps=10, first_step=2)
    bar(6)
    bar.evaluated([{"step": 6, "epoch": 0.5, "replica": 0, "test_loss": 0.25}])
    assert bar.bar.n == 6
    bar.close()
    err = capsys.readouterr()
    assert "step 6 (epoch 0.50): test_loss 0.2500" in err.out + err.err
