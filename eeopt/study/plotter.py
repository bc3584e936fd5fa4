"""A study's trial plots, drawn and logged off the trials' critical path.

Drawing a trial's four plots takes longer than everything else eeopt adds to a trial (about 1.5 s against 0.5 s on
one core, BENCHMARKS.md), so a worker hands them to the study's `PlotWriter`, a Ray actor that holds none of the
trials' CPUs, and returns: the trial's slot goes to the next trial while its plots are drawn and logged to its
MLflow run (`plots/` artifacts and MLflow images) and, where the trial's folder is a path, written there too. The
driver waits until the writer has handled every trial that sent it plots (`drain_plot_writer`), so no plot is lost
to a finished study; a plot that cannot be written is reported as a warning, never as a failed trial.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Any

from eeopt.pipeline import PLOT_DIR
from eeopt.stores import Stores, mask_secrets
from eeopt.stores.urls import is_uri
from eeopt.study.tracking import PLOT_KEY_PREFIX


class PlotWriter:
    """Draws and logs trial plots, one trial after another, on a thread of the process it lives in: `write` only
    queues a trial's plots, so the worker that sends them waits milliseconds, not seconds (and a worker that Tune
    ends right after its trial has handed them over: a call still in flight from a process that ends is lost)."""

    def __init__(self, stores: Stores):
        import queue
        import threading

        self.stores = stores
        self.written = 0
        self.failed: list[str] = []
        self._queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._work, name="eeopt-plots", daemon=True).start()

    def write(self, run_id: str, variant: Any, folder: str | None) -> None:
        """Queue the plots of an assessed model (`eeopt.assess.Variant`), to be drawn into `folder/plots` (a path;
        a URI or None: a temporary folder) and logged to MLflow run `run_id`."""
        self._queue.put((run_id, variant, folder))

    def _work(self) -> None:
        self._warm_up()
        while True:
            self._write(*self._queue.get())

    def _warm_up(self) -> None:
        """Pay the one-time costs while the first trial's worker starts up (seconds, when the writer is idle)
        rather than after the first trial: matplotlib and the plot modules imported, a figure drawn (fonts), the
        MLflow store opened (on SQLite, MLflow reads its migration scripts to check the schema: about 2 s)."""
        with contextlib.suppress(Exception):  # a failure here shows, if it lasts, on the first trial's plots
            import io

            from eeopt.plots.base import figure

            with figure(io.BytesIO(), (1, 1), layout=None) as fig:
                fig.add_subplot().set_title("warm-up")
            self.stores.run("").client.search_experiments(max_results=1)

    def _write(self, run_id: str, variant: Any, folder: str | None) -> None:
        from eeopt.plots import save_variant_plots

        try:
            local = folder is not None and not is_uri(folder)
            with contextlib.nullcontext(folder) if local else tempfile.TemporaryDirectory() as where:
                plots = save_variant_plots(variant, Path(where) / PLOT_DIR)
                run = self.stores.run(run_id)
                run.log_artifacts(plots.values(), artifact_path=PLOT_DIR)
                run.log_images(plots, prefix=PLOT_KEY_PREFIX)
            self.written += 1
        except Exception as exc:  # noqa: BLE001 - a plot never fails a trial; the driver reports it
            self.failed.append(f"run {run_id}: {type(exc).__name__}: {mask_secrets(str(exc))[:300]}")

    def done(self) -> tuple[int, list[str]]:
        """(trials whose plots were written or failed, the failures). Calls from different processes (the
        workers, the driver) reach an actor in no guaranteed order, so the driver polls this until the count is
        that of the trials that sent plots."""
        return self.written + len(self.failed), list(self.failed)


def start_plot_writer(stores: Stores):
    """The study's `PlotWriter` as a Ray actor with no CPU of its own (it never takes a trial's slot)."""
    import ray

    return ray.remote(num_cpus=0, max_restarts=1)(PlotWriter).remote(stores)


def drain_plot_writer(writer, reporter, expected: int, timeout: float = 600.0) -> None:
    """Wait until `writer` has handled the plots of `expected` trials (or `timeout` s), then end it; say what
    failed or is missing."""
    import time

    import ray

    deadline, said, failed, handled = time.monotonic() + timeout, False, [], 0
    try:
        while True:
            handled, failed = ray.get(writer.done.remote(), timeout=60)
            if handled >= expected or time.monotonic() > deadline:
                break
            if not said:
                reporter.line(f"writing the last trials' plots ({expected - handled} to go)")
                said = True
            time.sleep(0.25)
    except Exception as exc:  # noqa: BLE001 - plots are display: the study's outcome stands
        reporter.line(f"the trial plots were not all written: {type(exc).__name__}: {mask_secrets(str(exc))[:300]}")
    finally:
        with contextlib.suppress(Exception):
            ray.kill(writer)
    for line in failed:
        reporter.line(f"plots not written for {line}")
    if handled < expected:
        reporter.line(f"the plots of {expected - handled} trials were not written within {timeout:g} s")
