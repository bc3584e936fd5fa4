"""Proxy analysis: across trained models, does calibration or failure prediction track early-exit efficiency?

Pure numpy/scipy core (no torch, Ray, MLflow or Optuna); matplotlib loads only when `write_report` draws.

    from eeopt.analysis import Point, analyze, write_report
    analysis = analyze(points)            # points: one Point per (trial, calibrator) on one split
    write_report(analysis, "report/")     # report.md + PNGs
"""

from __future__ import annotations

from eeopt.analysis.correlations import Correlation
from eeopt.analysis.points import Point
from eeopt.analysis.report import Analysis, analyze, write_report
from eeopt.analysis.within_model import WithinModelRow
from eeopt.errors import AnalysisError

__all__ = ["Analysis", "AnalysisError", "Correlation", "Point", "WithinModelRow", "analyze", "write_report"]
