"""What `eeopt study run` shows while trials run: the `Reporter` driven by a fake clock (no sleeping, no timing),
and the progress record that carries batch progress from a Ray worker to the driver."""

from __future__ import annotations

import io
import math
import re

import pytest
from rich.console import Console

from eeopt.study.progress import HEARTBEAT, Reporter, StudyHeader, fmt_duration, format_params
from eeopt.study.worker import EPOCH_METRIC, EpochReport, ProgressReport, TrialReport

PARAMS = {"training.lr": 0.0031234, "training.failure_loss": "ranking", "model.exits": [2, 4],
          "training.label_smoothing": 0.05}


class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def _reporter(clock: FakeClock, *, terminal: bool = False, width: int = 200):
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=terminal, width=width, color_system=None, soft_wrap=True,
                      highlight=False)
    reporter = Reporter(console=console, clock=clock, started=clock.now - 5.0)  # the command started 5 s ago
    reporter.begin(StudyHeader("tiny", target=4, done_before=0, concurrency=2, objective="val/acc_cost_auc",
                               maximize=True))
    return reporter, buf


def _seconds(prefix: str) -> int:
    """'[ 5m12s]' -> 312."""
    m = re.fullmatch(r"\[\s*(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?\]", prefix)
    assert m, prefix
    h, mins, s = (int(g) if g else 0 for g in m.groups())
    return 3600 * h + 60 * mins + s


def test_lines_at_least_every_30_seconds_while_a_trial_runs():
    """A trial whose epochs take minutes: between its events the reporter still says where it stands, at a steady
    cadence, as `tick` is called every second (what its background thread does)."""
    clock = FakeClock()
    reporter, buf = _reporter(clock)
    reporter.trial_started(0, PARAMS)
    batches = 600
    for second in range(1, 400):
        clock.now += 1.0
        epoch, within = divmod(second, 130)  # an epoch every 130 s, batch progress every 5 s
        if second % 5 == 0:
            reporter.trial_progress(0, ProgressReport(epoch + 1, 3, int(batches * within / 130), batches))
        if within == 0:
            reporter.trial_epoch(0, epoch, 0.7 + 0.05 * epoch)
        reporter.tick()
    reporter.trial_ended(0, "done", "val/acc_cost_auc=0.8123", best=0.8123)
    lines = buf.getvalue().splitlines()
    times = [_seconds(line[: line.index("]") + 1]) for line in lines]
    assert times == sorted(times) and times[0] == 5  # the clock counts from the command's start
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert max(gaps) <= 30, gaps
    assert len(lines) >= 400 / 30  # more than the handful of event lines
    assert any("trial 0: epoch 2/3, batch " in line for line in lines)  # batch progress, not only epochs
    assert any(re.search(r"study: 0/4 done, 1 running, 0 failed; .* ETA ~\d", line) for line in lines)
    assert "trial 0 done after" in lines[-1] and "1/4 done" in lines[-1]


def test_no_status_lines_when_nothing_runs_and_none_in_live_mode():
    clock = FakeClock()
    reporter, buf = _reporter(clock)
    for _ in range(100):
        clock.now += 1.0
        reporter.tick()
    assert buf.getvalue() == ""
    live, live_buf = _reporter(clock, terminal=True, width=160)
    assert live.live
    live.trial_started(1, PARAMS)
    clock.now += HEARTBEAT * 3
    live.tick()
    assert live_buf.getvalue().count("\n") == 1  # only the event line; the live table shows the rest


def test_a_line_never_breaks_inside_a_token():
    """Piped: one line per event however long. Narrow terminal: wrapped at spaces, every token whole."""
    params = {**PARAMS, "training.a_very_long_parameter_name_that_is_longer_than_the_terminal": 1.5}
    for terminal, width in ((False, 80), (True, 60), (True, 30)):
        clock = FakeClock()
        reporter, buf = _reporter(clock, terminal=terminal, width=width)
        reporter.trial_started(3, params)
        clock.now += 100
        reporter.trial_ended(3, "failed", "TrainingDiverged: loss is nan at epoch 2 (lr=0.0031234 is too high)")
        out = buf.getvalue()
        lines = out.splitlines()
        if not terminal:
            assert len(lines) == 2
        expected = (format_params(params) + " TrainingDiverged: loss is nan at epoch 2 (lr=0.0031234 is too high)")
        tokens = set(out.split())
        assert set(expected.split()) <= tokens, set(expected.split()) - tokens
        if terminal:
            assert all(len(line) <= width or len(line.split()) == 1 or len(max(line.split(), key=len)) > width - 10
                       for line in lines), lines


def test_eta_schedules_the_trials_left_on_the_free_slots():
    clock = FakeClock()
    reporter, _ = _reporter(clock)
    assert reporter.eta() is None  # nothing known yet
    reporter.trial_started(0, {})
    clock.now += 12  # start-up: worker, data, model
    reporter.trial_progress(0, ProgressReport(1, 2, 1, 100))  # the first batch: 0.5 % of training
    assert reporter.eta() is None  # one point says nothing about the pace
    clock.now += 10
    reporter.trial_progress(0, ProgressReport(1, 2, 51, 100))  # 25 % more of training in 10 s: 40 s in all
    # start-up 12 s less the 0.2 s of training before the first point, then 40 s of training: 51.8 s a trial;
    # 29.8 s left here, the other slot free; 3 more trials: slots end at 29.8+51.8 and 51.8+51.8
    assert reporter.eta() == pytest.approx(2 * (11.8 + 40))
    clock.now += 78
    reporter.trial_ended(0, "done", best=0.5)  # took 100 s, 12 of them start-up: measured durations from now on
    reporter.trial_started(1, {})
    reporter.trial_started(2, {})
    clock.now += 50
    # 2 running (12 + 88 - 50 = 50 s left each), 1 waiting (100 s): slots end at 50 and 150
    assert reporter.eta() == pytest.approx(150)
    assert "1/4 done, 2 running, 0 failed; best val/acc_cost_auc 0.5000 (trial 0)" in reporter.status()
    # a reused worker: trial 3 starts training at once; the trial left pays no start-up either
    reporter.trial_ended(1, "done", best=0.5)  # took 50 s, start-up unknown: all of it counts as work
    reporter.trial_started(3, {})
    reporter.trial_progress(3, ProgressReport(1, 2, 1, 100))
    work = (88 + 50) / 2
    assert reporter.startups == [12, 0]
    assert reporter.eta() == pytest.approx(max(work - 50, work))  # trial 2: 50 s in, trial 3: just started


def test_start_up_is_not_counted_as_training():
    """A trial whose worker takes 60 s to start and whose training then runs 10 % every 5 s (50 s in all): the
    projection is 110 s whenever it is made, not 60 s of start-up stretched over the share trained so far."""
    from eeopt.study.progress import projected_duration

    started, first = 0.0, (60.0 + 0.5, 0.01)  # the first batch reported half a second into training
    for t in (65.5, 80.5, 100.5):
        last = (t, 0.01 + (t - first[0]) / 50)
        assert projected_duration(started, first, last) == pytest.approx(110.0)
    assert projected_duration(started, first, first) is None  # one point: no pace
    assert projected_duration(started, first, (61.0, 0.015)) is None  # less than MIN_PROGRESS moved
    assert projected_duration(started, None, None) is None
    # epochs are progress points too: 2 epochs of 20 s after 5 s of start-up
    clock = FakeClock(0.0)
    reporter, _ = _reporter(clock)
    reporter.trial_started(0, {})
    clock.now = 5.0
    reporter.trial_progress(0, ProgressReport(1, 2, 1, 1000))
    clock.now = 25.0
    reporter.trial_epoch(0, 1, 0.5)
    # 45 s, less a fiftieth of a second: the first point already had one batch (0.05 %) behind it
    assert projected_duration(0.0, reporter.rows[0].first_point, reporter.rows[0].last_point) == pytest.approx(
        5.0 - 0.0005 * 20 / 0.4995 + 20 / 0.4995)


def test_schedule_fills_the_slot_that_frees_first():
    from eeopt.study.progress import schedule

    assert schedule([], 10.0, 0, 2) == 0.0
    assert schedule([5.0], 10.0, 3, 2) == 20.0  # slots: 0 -> 10 -> 20 and 5 -> 15
    assert schedule([5.0, 30.0], 10.0, 2, 2) == 30.0  # both waiting trials go to the first slot: 5+10+10
    assert schedule([], 10.0, 5, 1) == 50.0


def test_short_epochs_still_move_the_batch_counter():
    """21 batches of 0.1 s (the quickstart): reports after the first batch and at quarters, at most one per
    PROGRESS_MIN_GAP; long epochs: the first batch, then one per PROGRESS_EVERY."""
    from eeopt.study.worker import PROGRESS_MIN_GAP, batch_report_due
    from eeopt.study.worker import PROGRESS_EVERY

    def sent(total: int, seconds_per_batch: float) -> list[int]:
        last, out = -math.inf, []
        for done in range(1, total + 1):
            now = done * seconds_per_batch
            if batch_report_due(done, total, now - last):
                last = now
                out.append(done)
        return out

    assert sent(21, 0.1) == [1, 10, 15, 20]  # 0.1 s a batch: quarter 5 comes 0.4 s after batch 1, too soon
    assert sent(21, 0.3) == [1, 5, 10, 15, 20]
    long = sent(1000, 0.1)  # 100 s: every 5 s, and at the quarters
    assert long[0] == 1 and max(b - a for a, b in zip(long, long[1:])) == PROGRESS_EVERY / 0.1
    assert {250, 500, 750} <= set(long) and len(long) <= 1 + 100 / PROGRESS_EVERY + 3
    assert PROGRESS_MIN_GAP < PROGRESS_EVERY


def test_live_view_shows_a_row_per_running_trial():
    clock = FakeClock()
    reporter, _ = _reporter(clock, terminal=True, width=200)
    reporter.trial_started(0, PARAMS)
    reporter.trial_started(1, {"training.lr": 0.01})
    reporter.trial_progress(0, ProgressReport(2, 3, 312, 625, val_acc_last=0.8412))
    reporter.trial_progress(1, ProgressReport(3, 3, 0, 0, "evaluate", 0.9))
    clock.now += 75
    out = Console(file=io.StringIO(), width=200, color_system=None)
    out.print(reporter._render())
    text = out.file.getvalue()
    assert "0/4 done, 2 running" in text
    row0 = next(line for line in text.splitlines() if line.lstrip().startswith("0 "))
    assert "2/3" in row0 and "312/625" in row0 and "1m15s" in row0 and "0.8412" in row0 and "lr=0.00312" in row0
    row1 = next(line for line in text.splitlines() if line.lstrip().startswith("1 "))
    assert "evaluating" in row1 and "0.9000" in row1


def test_progress_reports_travel_apart_from_epochs_and_the_outcome():
    """Tune carries each record as a flat dict: a progress report has no `epoch` (the schedulers count epochs and
    pass over it) but has the scheduler's metric (Tune wants it in every result)."""
    report = ProgressReport(2, 3, 120, 625, "train", 0.81)
    result = report.to_result()
    assert "epoch" not in result and result[EPOCH_METRIC] == 0.81
    assert ProgressReport.from_result(result) == report
    assert EpochReport.from_result(result) is None and TrialReport.from_result(result) is None
    assert ProgressReport.from_result(EpochReport(2, 0.8).to_result()) is None
    first = ProgressReport(1, 3, 5, 625)
    assert math.isnan(ProgressReport.from_result(first.to_result()).val_acc_last)
    assert first.fraction == pytest.approx(5 / 625 / 3)
    assert ProgressReport(3, 3, 0, 0, "evaluate").fraction == 1.0 and ProgressReport(0, 3, 9, 10).fraction == 0.0


def test_durations_and_params_read_well():
    assert [fmt_duration(s) for s in (0, 42.4, 312, 3725)] == ["0s", "42s", "5m12s", "1h02m"]
    assert format_params({"model.exits": [2, 4], "training.lr": 0.0031234}) == "model.exits=[2,4] training.lr=0.00312"
    assert format_params({"a.lr": 1.0, "b.lr": 2.0}, short=True) == "a.lr=1 b.lr=2"  # ambiguous: full paths
