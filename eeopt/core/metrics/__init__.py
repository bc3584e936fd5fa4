"""Metrics on exit outputs: calibration (`calibration`) and failure prediction (`failure`); pure NumPy functions."""

from __future__ import annotations

from eeopt.core.metrics.calibration import ReliabilityBins, adaptive_ece, brier, ece, mce, nll, reliability_bins
from eeopt.core.metrics.failure import (
    RiskCoverage,
    aupr_error,
    aurc,
    auroc,
    eaurc,
    eefp,
    exit_target,
    fpr95,
    risk_coverage,
)

__all__ = [
    "ReliabilityBins",
    "RiskCoverage",
    "adaptive_ece",
    "aupr_error",
    "aurc",
    "auroc",
    "brier",
    "ece",
    "eaurc",
    "eefp",
    "exit_target",
    "fpr95",
    "mce",
    "nll",
    "reliability_bins",
    "risk_coverage",
]
