"""Plots a person would rather look at than read: accuracy vs cost, reliability diagrams, risk-coverage curves and
the per-exit metrics, the same set for a study trial, `eeopt train` and `eeopt exits evaluate --plots`.

Plot functions consume computed results (`PreparedSplit`, `EvaluationReport`, `PolicySearch`) and draw; they
compute nothing of their own beyond bins and curves from `eeopt.core.metrics`. Every figure is a bare matplotlib
`Figure` (no pyplot state) written as a PNG, and its title names the split, the exit score and the calibration.
matplotlib is imported only when a figure is drawn.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from eeopt.plots.efficiency import plot_accuracy_vs_cost
from eeopt.plots.exits import plot_per_exit, plot_reliability, plot_risk_coverage

if TYPE_CHECKING:
    from eeopt.core.evaluation import EvaluationReport
    from eeopt.core.prepared import PreparedSplit
    from eeopt.core.search import PolicySearch

#: The standard plots, by name (file `{name}.png`, MLflow image key `plots/{name}`).
TRIAL_PLOTS = ("accuracy_vs_cost", "reliability", "risk_coverage", "per_exit_metrics")

__all__ = ["TRIAL_PLOTS", "plot_accuracy_vs_cost", "plot_per_exit", "plot_reliability", "plot_risk_coverage",
           "save_plots", "save_trial_plots", "save_variant_plots"]


def save_plots(folder: str | Path, split: PreparedSplit, report: EvaluationReport, *,
               fit: PreparedSplit | None = None, fit_report: EvaluationReport | None = None,
               search: PolicySearch | None = None) -> dict[str, Path]:
    """Write the standard plots of the evaluated `split` into `folder` (created); {name: path} in `TRIAL_PLOTS`
    order. `fit` / `fit_report` (the split calibrators and thresholds were fitted on) and `search` (the per-exit
    threshold search) add their lines where they exist."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fit_name = fit.name if fit is not None else None
    names = {"fit_split": fit_name or "val"}
    return {
        "accuracy_vs_cost": plot_accuracy_vs_cost(folder / "accuracy_vs_cost.png", report, split.costs,
                                                  fit_report=fit_report, search=search, split=split.name, **names),
        "reliability": plot_reliability(folder / "reliability.png", split, report, fit_split=fit_name),
        "risk_coverage": plot_risk_coverage(folder / "risk_coverage.png", split, report, fit_split=fit_name),
        "per_exit_metrics": plot_per_exit(folder / "per_exit_metrics.png", report, split.costs,
                                          fit_report=fit_report, split=split.name, **names),
    }


def save_variant_plots(variant, folder: str | Path) -> dict[str, Path]:
    """The standard plots of an assessed model (`eeopt.assess.Variant`: val and test prepared, reported and
    searched): test is the evaluated split, val the one everything was fitted on."""
    return save_plots(folder, variant.test, variant.test_report, fit=variant.val, fit_report=variant.val_report,
                      search=variant.search)


def save_trial_plots(result, folder: str | Path) -> dict[str, Path]:
    """The standard plots of a study trial (`TrialResult`), under its configured calibrator and score."""
    return save_variant_plots(result.evaluation.primary, folder)
