"""Progress of a running study on stderr: a live table on a wide terminal, timestamped lines elsewhere.

The searcher tells the `Reporter` what happens (a trial started, where it stands within an epoch, an epoch ended,
a trial ended); the reporter keeps one row per running trial and the study's counts, and shows them:

- on a terminal at least `LIVE_MIN_WIDTH` columns wide: a rich `Live` table (a row per running trial with its
  sampled values, epoch, batch progress, elapsed time and latest val accuracy; above it the counts, the best
  objective and an ETA), with one printed line per event above it;
- anywhere else (a pipe, a file, a narrow terminal): one `[ elapsed] text` line per event, and the state of every
  running trial plus the study's counts at least every `HEARTBEAT` seconds while anything runs (`tick`, called by a
  background thread or by tests with a fake clock). A line is never broken inside a token: on a narrow terminal
  lines wrap at spaces, elsewhere they are not wrapped at all.

The clock starts when the command starts (`started`), not when Ray is up.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the worker's record, read here; importing the worker would bring in the trial pipeline
    from eeopt.study.worker import ProgressReport

#: Seconds between two status reports in line mode while trials run.
HEARTBEAT = 25.0
#: Narrower terminals get lines instead of the live table.
LIVE_MIN_WIDTH = 100
#: A running trial's duration is projected once its training moved this share between two progress points.
MIN_PROGRESS = 0.01


@dataclasses.dataclass
class _Row:
    """A running trial as the reporter knows it."""

    number: int
    params: dict[str, Any]
    started: float
    resumed: bool = False
    progress: ProgressReport | None = None
    val_acc: float = math.nan
    #: (clock, share of training done) at the first and the latest progress point: training's own pace, apart
    #: from the start-up before it (worker, data, model).
    first_point: tuple[float, float] | None = None
    last_point: tuple[float, float] | None = None
    startup: float | None = None  # seconds from its start to its first progress point

    def seen(self, now: float, fraction: float) -> None:
        if fraction <= 0.0:
            return
        if self.first_point is None:
            self.first_point = (now, fraction)
        self.last_point = (now, fraction)


@dataclasses.dataclass(frozen=True)
class StudyHeader:
    """What the reporter shows about the study as a whole: its target and how many trials were finished before this
    run, how many run at once, and the first objective (name, direction, best value so far)."""

    name: str
    target: int
    done_before: int
    concurrency: int
    objective: str
    maximize: bool
    best: float | None = None


class Reporter:
    """Shows a running study on stderr; `enabled=False` shows nothing (tests, the Python API).

    Args:
        console: a rich `Console` (default: stderr).
        clock: seconds, monotonic (tests pass a fake one).
        started: the clock's value when the command started (default: now).
        live: force the live table (True) or lines (False); default: live on a terminal of `LIVE_MIN_WIDTH`.
    """

    def __init__(self, enabled: bool = True, *, console=None, clock: Callable[[], float] = time.monotonic,
                 started: float | None = None, live: bool | None = None):
        from rich.console import Console

        self.enabled = enabled
        self.console = console or Console(stderr=True, highlight=False, soft_wrap=True)
        self.clock = clock
        self.t0 = clock() if started is None else started
        self.live = (self.console.is_terminal and self.console.width >= LIVE_MIN_WIDTH) if live is None else live
        self.header = StudyHeader("", 0, 0, 1, "objective", True)
        self.rows: dict[int, _Row] = {}
        self.durations: list[float] = []  # of the trials completed in this run
        self.work: list[float] = []  # the same less their start-up, where measured
        self.startups: list[float] = []  # measured start-ups (trial start to its first progress point), in order
        self.done = self.failed = 0
        self.best_trial: int | None = None
        self._last_output = self.t0
        self._lock = threading.RLock()
        self._live = None

    # -------------------------------------------------------------------------------------------- events
    def begin(self, header: StudyHeader) -> None:
        self.header = header

    def line(self, text: str) -> None:
        """Print one event line (`[ elapsed] text`)."""
        if not self.enabled:
            return
        with self._lock:
            self._print(text)

    def trial_started(self, number: int, params: Mapping[str, Any], resumed: bool = False) -> None:
        with self._lock:
            self.rows[number] = _Row(number, dict(params), self.clock(), resumed)
        what = "resumed (requeued; continues from its last checkpoint, if it reached one)" if resumed else "started"
        self.line(f"trial {number} {what}  {format_params(params)}")

    def trial_progress(self, number: int, report: ProgressReport) -> None:
        with self._lock:
            row = self.rows.get(number)
            if row is None:
                return
            first = row.first_point is None
            row.progress = report
            row.seen(self.clock(), report.fraction)
            if not math.isnan(report.val_acc_last):
                row.val_acc = report.val_acc_last
            startup = self.clock() - row.started if first and row.first_point is not None else None
            if startup is not None:
                row.startup = startup
                self.startups.append(startup)
        if startup is not None:
            self.line(f"trial {number} training (start-up took {fmt_duration(startup)})")

    def trial_epoch(self, number: int, epoch: int, val_acc: float) -> None:
        with self._lock:
            row = self.rows.get(number)
            if row is None:
                return
            row.val_acc = val_acc
            if row.progress is not None and row.progress.epochs and epoch >= 1:
                row.seen(self.clock(), min(1.0, epoch / row.progress.epochs))  # an epoch's end: a progress point
            elapsed = self.clock() - row.started
        self.line(f"trial {number} epoch {epoch}: val acc (last exit) {val_acc:.4f}  ({fmt_duration(elapsed)})")

    def trial_ended(self, number: int, outcome: str, text: str = "", best: float | None = None) -> None:
        """`outcome`: done, failed, pruned or requeued; `text` what to add (values, error); `best` the best first
        objective after it."""
        with self._lock:
            row = self.rows.pop(number, None)
            elapsed = self.clock() - row.started if row is not None else math.nan
            if outcome == "done":
                self.done += 1
                if not math.isnan(elapsed):
                    self.durations.append(elapsed)
                    self.work.append(elapsed - (row.startup or 0.0))
                if best is not None and best != self.header.best:
                    self.best_trial = number
            elif outcome == "pruned":
                self.done += 1
            elif outcome == "failed":
                self.failed += 1
            if best is not None:
                self.header = dataclasses.replace(self.header, best=best)
        took = "" if math.isnan(elapsed) else f" after {fmt_duration(elapsed)}"
        self.line(f"trial {number} {outcome}{took}{':  ' + text if text else ''}  [{self.status()}]")

    # -------------------------------------------------------------------------------------------- display
    @contextlib.contextmanager
    def showing(self) -> Iterator[None]:
        """While the block runs: the live table, or a thread that calls `tick` every second."""
        if not self.enabled:
            yield
            return
        stop = threading.Event()
        if self.live:
            from rich.live import Live

            self._live = Live(get_renderable=self._render, console=self.console, refresh_per_second=2,
                              transient=True, redirect_stdout=False, redirect_stderr=False)
            self._live.start()
        else:
            ticker = threading.Thread(target=self._tick_until, args=(stop,), name="eeopt-progress", daemon=True)
            ticker.start()
        try:
            yield
        finally:
            stop.set()
            if self._live is not None:
                self._live.stop()
                self._live = None
            self.line(self.status())

    def _tick_until(self, stop: threading.Event) -> None:
        while not stop.wait(1.0):
            self.tick()

    def tick(self) -> None:
        """In line mode: the running trials and the counts, when `HEARTBEAT` seconds passed without a line."""
        if not self.enabled or self.live:
            return
        with self._lock:
            if not self.rows or self.clock() - self._last_output < HEARTBEAT:
                return
            for row in sorted(self.rows.values(), key=lambda r: r.number):
                self._print(f"trial {row.number}: {self._where(row)}")
            self._print(f"study: {self.status()}")

    def status(self) -> str:
        """'1/4 done, 2 running, 0 failed; best val/acc_cost_auc 0.8123 (trial 0); ETA ~6m'."""
        h = self.header
        best = "-" if h.best is None else f"{h.best:.4f}" + (f" (trial {self.best_trial})"
                                                             if self.best_trial is not None else "")
        eta = self.eta()
        eta_text = "-" if eta is None else f"~{fmt_duration(eta)}"
        return (f"{h.done_before + self.done}/{h.target} done, {len(self.rows)} running, {self.failed} failed; "
                f"best {h.objective} {best}; elapsed {fmt_duration(self.clock() - self.t0)}; ETA {eta_text}")

    def eta(self) -> float | None:
        """Seconds until the study's target is reached, scheduling the trials left on `concurrency` slots.

        Start-up (worker, data, model) and the rest are measured apart: once a trial completed in this run, a trial
        takes the mean of the completed trials' durations less their start-up, plus a start-up as long as the
        latest one measured (Ray reuses a worker: the first trials pay a start-up the next may not). Before, the
        mean of the running trials' projections (`projected_duration`: training at the pace of its batches and
        epochs). None when nothing is known yet.
        """
        now = self.clock()
        running = list(self.rows.values())
        h = self.header
        waiting = max(0, h.target - h.done_before - self.done - len(running))
        if self.durations:
            startup = self.startups[-1] if self.startups else 0.0
            work = sum(self.work) / len(self.work)
            remaining = [max(0.0, (startup if r.startup is None else r.startup) + work - (now - r.started))
                         for r in running]
            return schedule(remaining, startup + work, waiting, h.concurrency)
        own = {r.number: d for r in running
               if (d := projected_duration(r.started, r.first_point, r.last_point)) is not None}
        if not own:
            return None
        mean = sum(own.values()) / len(own)
        return schedule([max(0.0, own.get(r.number, mean) - (now - r.started)) for r in running], mean, waiting,
                        h.concurrency)

    def _where(self, row: _Row) -> str:
        """'epoch 2/3, batch 312/625 (50 %), 2m41s, val acc 0.8412' for one running trial."""
        p, elapsed = row.progress, fmt_duration(self.clock() - row.started)
        acc = "-" if math.isnan(row.val_acc) else f"{row.val_acc:.4f}"
        if p is None:
            stage = "resuming" if row.resumed else "starting (worker, data, model)"
        elif p.phase == "evaluate":
            stage = "evaluating (calibrators, metrics, threshold search)"
        elif p.phase == "store":
            stage = f"waiting for the {p.store} ({p.waited:.0f} s, retrying)"
        else:
            epoch = f"epoch {p.epoch}/{p.epochs}" if p.epoch else f"epoch ?/{p.epochs} (resumed)"
            stage = f"{epoch}, batch {p.batch}/{p.batches} ({100 * p.batch / max(p.batches, 1):.0f} %)"
        return f"{stage}, {elapsed}, val acc {acc}"

    def _print(self, text: str) -> None:
        """One event line, wrapped at spaces to a terminal's width (never inside a token), unwrapped elsewhere."""
        prefix = f"[{fmt_duration(self.clock() - self.t0):>7}] "
        self._last_output = self.clock()
        width = self.console.width if self.console.is_terminal else 0
        if width and len(prefix) + len(text) > width:
            parts = textwrap.wrap(text, width=max(20, width - len(prefix)), break_long_words=False,
                                  break_on_hyphens=False)
            text = ("\n" + " " * len(prefix)).join(parts)
        self.console.print(prefix + text, markup=False, highlight=False, crop=False, overflow="ignore")

    def _render(self):
        """The live view: the study's counts, then one row per running trial."""
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        with self._lock:
            rows = sorted(self.rows.values(), key=lambda r: r.number)
            status = self.status()
            table = Table(box=None, pad_edge=False, header_style="bold", expand=False)
            for name, justify in (("trial", "right"), ("epoch", "right"), ("batches", "left"), ("", "right"),
                                  ("elapsed", "right"), ("val acc", "right"), ("sampled", "left")):
                table.add_column(name, justify=justify, no_wrap=name != "sampled")
            for row in rows:
                p = row.progress
                acc = "-" if math.isnan(row.val_acc) else f"{row.val_acc:.4f}"
                if p is None or p.phase in ("evaluate", "store"):
                    label = ("resuming" if row.resumed else "starting") if p is None else \
                        {"evaluate": "evaluating", "store": "waiting for a store"}[p.phase]
                    bar, count, epoch = Text(label, style="italic"), "", "" if p is None else f"{p.epochs}/{p.epochs}"
                else:
                    bar = ProgressBar(total=max(p.batches, 1), completed=p.batch, width=24)
                    count = f"{p.batch}/{p.batches}"
                    epoch = f"{p.epoch or '?'}/{p.epochs}"
                table.add_row(str(row.number), epoch, bar, count, fmt_duration(self.clock() - row.started), acc,
                              format_params(row.params, short=True))
        title = Text(f"study {self.header.name}: {status}", style="bold")
        return Group(title, table) if rows else title


def projected_duration(started: float, first: tuple[float, float] | None,
                       last: tuple[float, float] | None) -> float | None:
    """A running trial's whole duration, projected: start-up plus training, measured apart.

    `first` and `last` are (clock, share of training done) points; training runs at the pace between them, and
    start-up is the time before `first` less the training done by then. None until training moved `MIN_PROGRESS`
    between the two points (one point alone says nothing about the pace). Evaluation after training is not
    included: it is known once a trial completes (`Reporter.eta` then uses measured durations).
    """
    if first is None or last is None:
        return None
    (t0, f0), (t1, f1) = first, last
    if t1 <= t0 or f1 - f0 < MIN_PROGRESS:
        return None
    pace = (f1 - f0) / (t1 - t0)  # share of training per second
    startup = max(0.0, t0 - started - f0 / pace)
    return startup + 1.0 / pace


def schedule(remaining: list[float], duration: float, waiting: int, slots: int) -> float:
    """Seconds until every trial is done: the running trials' `remaining` seconds, then `waiting` trials of
    `duration` each, every one started on the slot (of `slots`) that frees first."""
    ends = sorted(remaining) + [0.0] * max(0, slots - len(remaining))
    for _ in range(waiting):
        ends.sort()
        ends[0] += duration
    return max(ends) if ends else 0.0


def fmt_duration(seconds: float) -> str:
    """'42s', '5m12s', '1h05m'."""
    if seconds is None or math.isnan(seconds):
        return "-"
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def format_params(params: Mapping[str, Any], short: bool = False) -> str:
    """`training.lr=0.00312 model.exits=[2, 4]`: sampled parameters in one line; `short` drops the dotted path
    where the last part alone is unambiguous (`lr=0.00312`)."""
    names = {k: k.rsplit(".", 1)[-1] if short else k for k in params}
    if len(set(names.values())) < len(names):
        names = {k: k for k in params}
    return " ".join(f"{names[k]}={_value(v)}" for k, v in params.items())


def _value(v: Any) -> str:
    text = f"{v:.3g}" if isinstance(v, float) else str(v)
    return text.replace(" ", "")  # '[2,4]': one token, so a line never breaks inside a value
