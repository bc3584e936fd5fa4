"""A study's trial plots, drawn and logged off the trials' critical path.

Drawing a trial's four plots takes longer than everything else eeopt adds to a trial (about 1.5 s against 0.5 s on
one core, BENCHMARKS.md), so a worker hands them to the study's `PlotWriter`, a Ray actor that holds none of the
trials' CPUs, and returns: the trial's slot goes to the next trial while its plots are drawn and logged to its
MLflow run (`plots/` artifacts and MLflow images) and, where the trial's folder is a path, written there too. The
driver waits for the writer before the study ends (`PlotWriter.drain`), so no plot is lost to a finished study; a
plot that cannot be written is reported as a warning, never as a failed trial.
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
    """Draws and logs trial plots, one trial after another, in the process it lives in."""

    def __init__(self, stores: Stores):
        self.stores = stores
        self.written = 0
        self.failed: list[str] = []

    def write(self, run_id: str, variant: Any, folder: str | None) -> None:
        """The plots of an assessed model (`eeopt.assess.Variant`) into `folder/plots` (a path; a URI or None:
        a temporary folder) and onto MLflow run `run_id`."""
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

    def drain(self) -> tuple[int, list[str]]:
        """(plots written, failures) once every `write` sent before has run (an actor runs its calls in order)."""
        return self.written, list(self.failed)


def start_plot_writer(stores: Stores):
    """The study's `PlotWriter` as a Ray actor with no CPU of its own (it never takes a trial's slot)."""
    import ray

    return ray.remote(num_cpus=0, max_restarts=1)(PlotWriter).remote(stores)


def drain_plot_writer(writer, reporter) -> None:
    """Wait until `writer` has drawn every plot it was sent, then end it; say what failed."""
    import ray

    done = writer.drain.remote()
    try:
        if not ray.wait([done], timeout=1.0)[0]:
            reporter.line("writing the last trials' plots")
        written, failed = ray.get(done, timeout=600)
    except Exception as exc:  # noqa: BLE001 - plots are display: the study's outcome stands
        reporter.line(f"the trial plots were not all written: {type(exc).__name__}: {mask_secrets(str(exc))[:300]}")
        return
    finally:
        with contextlib.suppress(Exception):
            ray.kill(writer)
    for line in failed:
        reporter.line(f"plots not written for {line}")
