"""Retraining spread: the same trial configurations trained twice (two training seeds), each side analysed.

`analyze`'s intervals resample trials: they say how much a proxy's Spearman moves when other models are
drawn. A replicate (the same study file run again with `--set seed=1 --set study.name=NAME`) says how much it
moves when the same configurations are trained again. `compare_replicate` pairs the trials of the two
analyses, recomputes every mean proxy's Spearman on the paired trials in each, and reports how far the
proxies' values, their order and the target itself moved.

    replicate = compare_replicate(first, second)  # two `Analysis`; trials paired by equal label
    replicate.to_dict()                           # JSON-ready; markdown_section(...) for report.md
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from eeopt.analysis.correlations import (
    MIN_TRIALS,
    Correlation,
    correlations,
    resolve_targets,
    weighted_spearman,
)
from eeopt.analysis.points import Point, PointTable, as_float, json_float
from eeopt.analysis.report import Analysis, _num, _table
from eeopt.errors import AnalysisError
from eeopt.names import parse_key

#: Fewer proxies with a Spearman in both studies than this and the proxy order has no correlation.
MIN_PROXIES = 3
#: How a family is named in prose.
FAMILY_NAMES = {"failure": "failure prediction", "calibration": "calibration"}


@dataclasses.dataclass(frozen=True)
class ProxyShift:
    """One mean proxy's Spearman with the target in each study, over the paired trials only.

    `rank` is its place among the proxies with a Spearman in that study (1 = highest), None without one;
    `note` says why a Spearman is missing (the notes of `Correlation`, with the study they come from when
    they differ).
    """

    proxy: str
    family: str
    spearman: float
    replicate_spearman: float
    rank: int | None
    replicate_rank: int | None
    note: str = ""

    @property
    def change(self) -> float:
        """Replicate minus first (NaN when either is missing)."""
        return self.replicate_spearman - self.spearman

    def to_dict(self) -> dict:
        return {"proxy": self.proxy, "family": self.family, "spearman": json_float(self.spearman),
                "replicate_spearman": json_float(self.replicate_spearman),
                "change": json_float(self.change), "rank": self.rank,
                "replicate_rank": self.replicate_rank, "note": self.note}


@dataclasses.dataclass(frozen=True)
class TargetShift:
    """How reproducible the models' target is under one calibrator: its value in both studies across the
    paired models where both are defined. `spearman` is NaN (and `note` says why) with fewer than
    `MIN_TRIALS` models or a constant side."""

    calibrator: str
    n_models: int
    spearman: float
    median_abs_change: float
    max_abs_change: float
    note: str = ""

    def to_dict(self) -> dict:
        return {"calibrator": self.calibrator, "n_models": self.n_models,
                "spearman": json_float(self.spearman),
                "median_abs_change": json_float(self.median_abs_change),
                "max_abs_change": json_float(self.max_abs_change), "note": self.note}


@dataclasses.dataclass(frozen=True)
class Replicate:
    """What `compare_replicate` found.

    `pairs` are (first trial, replicate trial); `unpaired_first` and `unpaired_replicate` the trials of each
    analysis left out. `n_points` (trial, calibrator) points of each study are compared: those in both.
    `proxies` are the mean proxies, highest first-study Spearman first; `order_spearman` correlates the two
    studies' Spearman values over the `n_ordered` proxies that have one in both. `top` is the first-ranked
    proxy of each study (None when no proxy has a Spearman). `targets` has one row per calibrator; `models`
    the target of each pair, {calibrator: (first, replicate)}.
    """

    target: str
    pairs: tuple[tuple[int | str, int | str], ...]
    unpaired_first: tuple[int | str, ...]
    unpaired_replicate: tuple[int | str, ...]
    n_points: int
    proxies: tuple[ProxyShift, ...]
    order_spearman: float
    n_ordered: int
    top: tuple[str | None, str | None]
    targets: tuple[TargetShift, ...]
    models: tuple[tuple[int | str, int | str, dict[str, tuple[float, float]]], ...]

    @property
    def top_families(self) -> tuple[str | None, str | None]:
        return tuple(None if p is None else parse_key(p).metric.group for p in self.top)

    @property
    def same_top_family(self) -> bool | None:
        """Whether both studies rank a proxy of the same family first; None when either ranks none."""
        first, second = self.top_families
        return None if first is None or second is None else first == second

    def to_dict(self) -> dict:
        """JSON-ready (NaN as None)."""
        return {
            "target": self.target,
            "pairs": [list(pair) for pair in self.pairs],
            "unpaired": {"first": list(self.unpaired_first), "replicate": list(self.unpaired_replicate)},
            "n_points": self.n_points,
            "proxies": [row.to_dict() for row in self.proxies],
            "order": {"spearman": json_float(self.order_spearman), "n_proxies": self.n_ordered,
                      "top": list(self.top), "top_family": list(self.top_families),
                      "same_top_family": self.same_top_family},
            "target_change": [row.to_dict() for row in self.targets],
            "models": [{"trial": a, "replicate_trial": b,
                        "target": {name: [json_float(v) for v in values] for name, values in by.items()}}
                       for a, b, by in self.models],
        }


def compare_replicate(first: Analysis, replicate: Analysis,
                      pairs: Sequence[tuple[int | str, int | str]] | None = None,
                      target: str | None = None) -> Replicate:
    """Compare an analysis with the analysis of its replicate (the same configurations trained again).

    `pairs` are (first trial, replicate trial) labels; by default the trials present in both with equal
    labels. Only the (trial, calibrator) points present on both sides of a pair are compared. `target`
    defaults to the first analysis' main target. Spearman values are estimates only (no bootstrap).

    Raises `AnalysisError` for no pair, a pair naming a trial absent from its analysis or named twice, no
    (trial, calibrator) point on both sides, or a target absent from the replicate.
    """
    target = target or first.main_target
    first_trials = list(dict.fromkeys(p.trial for p in first.points))
    replicate_trials = list(dict.fromkeys(p.trial for p in replicate.points))
    if pairs is None:
        pairs = [(t, t) for t in first_trials if t in set(replicate_trials)]
    pairs = [(a, b) for a, b in pairs]
    _check_pairs(pairs, first_trials, replicate_trials)
    kept, twins = _paired_points(first.points, replicate.points, dict(pairs))
    tables = PointTable(kept), PointTable(twins)
    for table in tables:
        resolve_targets(table, [target])
    rows = [{r.proxy: r for r in correlations(table, [target], n_boot=0)
             if parse_key(r.proxy).scope == "mean"} for table in tables]
    proxies = _proxy_shifts(*rows)
    ordered = [(r.spearman, r.replicate_spearman) for r in proxies
               if math.isfinite(r.spearman) and math.isfinite(r.replicate_spearman)]
    order = _spearman(*map(np.array, zip(*ordered))) if len(ordered) >= MIN_PROXIES else math.nan
    top = [min((r for r in proxies if getattr(r, rank) is not None), key=lambda r: getattr(r, rank),
               default=None) for rank in ("rank", "replicate_rank")]
    targets, models = _target_shifts(kept, twins, target, pairs)
    paired_first, paired_replicate = {a for a, _ in pairs}, {b for _, b in pairs}
    return Replicate(
        target=target, pairs=tuple(pairs),
        unpaired_first=tuple(t for t in first_trials if t not in paired_first),
        unpaired_replicate=tuple(t for t in replicate_trials if t not in paired_replicate),
        n_points=len(kept), proxies=proxies, order_spearman=order, n_ordered=len(ordered),
        top=tuple(None if r is None else r.proxy for r in top), targets=targets, models=models,
    )


def _check_pairs(pairs: list[tuple], first_trials: list, replicate_trials: list) -> None:
    if not pairs:
        raise AnalysisError("no paired trial: the replicate has none of the first study's trials (pair them "
                            "by trial number: run the same study file with only seed and study.name changed)")
    for side, labels, known in (("first", [a for a, _ in pairs], first_trials),
                                ("replicate", [b for _, b in pairs], replicate_trials)):
        known = set(known)
        missing = [t for t in labels if t not in known]
        if missing:
            raise AnalysisError(f"pairs name trial {missing[0]!r}, which the {side} analysis does not have")
        if len(set(labels)) != len(labels):
            raise AnalysisError(f"pairs name a {side} trial twice: pair each trial once")


def _paired_points(first: Sequence[Point], replicate: Sequence[Point],
                   partner: dict) -> tuple[list[Point], list[Point]]:
    """The first study's points of paired trials whose (trial, calibrator) the replicate has too, and the
    replicate's matching points in the same order, relabelled with the first study's trial."""
    first_of = {b: a for a, b in partner.items()}
    twin = {(first_of[p.trial], p.calibrator): p for p in replicate if p.trial in first_of}
    kept = [p for p in first if (p.trial, p.calibrator) in twin]
    if not kept:
        raise AnalysisError("the paired trials share no calibrator: no (trial, calibrator) point is in both "
                            "studies (run the replicate with the same calibration.compare)")
    return kept, [dataclasses.replace(twin[p.trial, p.calibrator], trial=p.trial) for p in kept]


def _ranks(rows: dict[str, Correlation]) -> dict[str, int]:
    """1 for the highest finite Spearman, 2 for the next ...; proxies without one are left out."""
    finite = sorted((r for r in rows.values() if math.isfinite(r.spearman)), key=lambda r: -r.spearman)
    return {r.proxy: i for i, r in enumerate(finite, 1)}


def _proxy_shifts(first: dict[str, Correlation],
                  second: dict[str, Correlation]) -> tuple[ProxyShift, ...]:
    """One row per mean proxy of either side, ordered by the first study's rank (proxies without one last)."""
    ranks, replicate_ranks = _ranks(first), _ranks(second)
    shifts = []
    for proxy in dict.fromkeys([*first, *second]):
        a, b = first.get(proxy), second.get(proxy)
        notes = [r.note if r is not None else "absent" for r in (a, b)]
        note = notes[0] if notes[0] == notes[1] else "; ".join(
            f"{side}: {n}" for side, n in zip(("first", "replicate"), notes) if n)
        shifts.append(ProxyShift(proxy, parse_key(proxy).metric.group,
                                 a.spearman if a is not None else math.nan,
                                 b.spearman if b is not None else math.nan,
                                 ranks.get(proxy), replicate_ranks.get(proxy), note))
    return tuple(sorted(shifts, key=lambda r: (r.rank is None, r.rank or 0)))


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho of two value lists (midranks; NaN when a side is constant)."""
    return float(weighted_spearman(x, y, np.ones((1, len(x))))[0])


def _target_shifts(first: list[Point], second: list[Point], target: str, pairs: list[tuple]):
    """Per calibrator, the target's Spearman and absolute change across the paired models; per pair, the
    values."""
    values = {(p.trial, p.calibrator): (as_float(p.metrics.get(target)), as_float(q.metrics.get(target)))
              for p, q in zip(first, second)}
    calibrators = list(dict.fromkeys(p.calibrator for p in first))
    rows = []
    for name in calibrators:
        both = np.array([v for a, _ in pairs
                         if (v := values.get((a, name))) and all(map(math.isfinite, v))]).reshape(-1, 2)
        change = np.abs(both[:, 1] - both[:, 0])
        n = len(both)
        note = (f"fewer than {MIN_TRIALS} models ({n})" if n < MIN_TRIALS else
                "constant target" if np.all(both == both[0], axis=0).any() else "")
        rows.append(TargetShift(name, n, math.nan if note else _spearman(both[:, 0], both[:, 1]),
                                float(np.median(change)) if n else math.nan,
                                float(change.max()) if n else math.nan, note))
    models = tuple((a, b, {name: values[a, name] for name in calibrators if (a, name) in values})
                   for a, b in pairs)
    return tuple(rows), models


# --------------------------------------------------------------------------------------------------- Markdown
def markdown_section(replicate: Replicate, first_name: str, replicate_name: str) -> list[str]:
    """The replicate's section of report.md: the proxies' Spearman in both studies, their order, the
    target's change per calibrator."""
    target = replicate.target
    proxies = _table(
        ["proxy", "family", "Spearman (first)", "rank", "Spearman (replicate)", "rank", "change", "note"],
        [[f"`{r.proxy}`", r.family, _num(r.spearman), str(r.rank or "–"), _num(r.replicate_spearman),
          str(r.replicate_rank or "–"), _num(r.change), r.note] for r in replicate.proxies])
    targets = _table(
        ["calibrator", "models", "Spearman", "median abs. change", "max abs. change", "note"],
        [[f"`{r.calibrator}`", str(r.n_models), _num(r.spearman), _size(r.median_abs_change),
          _size(r.max_abs_change), r.note] for r in replicate.targets])
    return [f"## Retraining spread: `{first_name}` against its replicate `{replicate_name}`", "",
            f"The same trial configurations trained again with another training seed. {_pairing(replicate)} "
            f"Spearman of each mean proxy with `{target}` over the paired models only, in each study (no "
            "bootstrap: the spread here is the retraining's).", "",
            *proxies, "", order_sentence(replicate), "",
            f"`{target}` of each model, first study against replicate, across the paired models:", "",
            *targets, ""]


def _size(value: float) -> str:
    return "–" if not math.isfinite(value) else f"{value:.4f}"


def _pairing(replicate: Replicate) -> str:
    left = (f"; left out: {len(replicate.unpaired_first)} trials of the first study, "
            f"{len(replicate.unpaired_replicate)} of the replicate"
            if replicate.unpaired_first or replicate.unpaired_replicate else "")
    return f"{len(replicate.pairs)} paired models, {replicate.n_points} (model, calibrator) points each{left}."


def order_sentence(replicate: Replicate) -> str:
    """Whether the two studies rank the proxies alike, in one sentence."""
    if math.isfinite(replicate.order_spearman):
        words = (f"The two studies order the proxies with a Spearman of {replicate.order_spearman:+.3f} "
                 f"({replicate.n_ordered} proxies)")
    else:
        words = (f"No correlation of the proxy orders ({replicate.n_ordered} proxies with a Spearman in "
                 "both)")
    if replicate.same_top_family is None:
        return words + "; a study ranks no proxy first."
    (a, b), (fa, fb) = replicate.top, replicate.top_families
    same = "the same family" if replicate.same_top_family else "different families"
    return (f"{words}; first-ranked: {a} ({FAMILY_NAMES.get(fa, fa)}) and {b} "
            f"({FAMILY_NAMES.get(fb, fb)}), {same}.")
