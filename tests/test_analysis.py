"""The proxy analysis: rank correlations against scipy, the trial bootstrap, the partial, degenerate rows, the
within-model view and the report files."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import scipy.stats

from eeopt.analysis import AnalysisError, Point, analyze, write_report
from eeopt.analysis.correlations import correlate, resample_trials, weighted_kendall, weighted_spearman
from eeopt.analysis.points import PointTable

CALIBRATORS = ("none", "temperature", "isotonic")


def _points(proxy: dict[str, np.ndarray], target: dict[str, np.ndarray], trials=None, calibrators=None,
            extra: dict[str, np.ndarray] | None = None) -> list[Point]:
    """Points from columns: `proxy`, `target` and `extra` map keys to arrays [P]; one trial per point unless
    `trials` [P] says otherwise."""
    columns = {**proxy, **target, **(extra or {})}
    n = len(next(iter(columns.values())))
    trials = np.arange(n) if trials is None else trials
    calibrators = ["none"] * n if calibrators is None else calibrators
    return [Point(int(trials[i]), calibrators[i], None, {k: float(v[i]) for k, v in columns.items()})
            for i in range(n)]


def _row(analysis, proxy: str, target: str = "acc_cost_auc"):
    (row,) = [r for r in analysis.correlations if r.proxy == proxy and r.target == target]
    return row


def _study(n_trials: int = 12, seed: int = 0, exits: int = 3) -> list[Point]:
    """A small study: models differ in accuracy and in how well their confidence ranks; calibrators cut ECE
    tenfold and move the ranking a little; efficiency follows accuracy and ranking."""
    rng = np.random.default_rng(seed)
    points = []
    for trial in range(n_trials):
        quality, ranking, over = rng.uniform(0.7, 0.9), rng.uniform(0.75, 0.9), rng.uniform(0.05, 0.25)
        for calibrator in CALIBRATORS:
            calibrated = calibrator != "none"
            auroc = ranking + (rng.normal(0, 0.01) if calibrated else 0.0)
            ece = over / 10 + abs(rng.normal(0, 0.01)) if calibrated else over
            metrics = {f"exit{k}/accuracy": quality - 0.05 * (exits - k) for k in range(1, exits + 1)}
            metrics |= {f"exit{k}/auroc": auroc - 0.01 * k for k in range(1, exits + 1)}
            metrics |= {f"exit{k}/eefp": auroc if k < exits else math.nan for k in range(1, exits + 1)}
            metrics |= {"mean/ece": ece, "mean/nll": 0.5 + 2 * ece + (1 - quality), "mean/brier": ece / 2,
                        "mean/auroc": auroc, "mean/aurc": (1 - quality) * (1 - auroc), "mean/eefp": auroc,
                        "score/learned/mean/auroc": auroc + 0.02, "score/learned/mean/ece": ece, "exit2/ece": ece}
            efficiency = quality / 2 + auroc / 2 + rng.normal(0, 0.005)
            for budget in (25, 50, 75):
                metrics[f"acc_at_{budget}"] = efficiency - (75 - budget) / 500 + rng.normal(0, 0.005)
            metrics |= {"acc_cost_auc": efficiency, "sweep/acc_cost_auc": efficiency - 0.01, "mean_cost": 0.6,
                        "mean/accuracy": quality}
            if calibrated:
                metrics["mean/kendall_tau"] = rng.uniform(0.85, 0.99)
            points.append(Point(trial, calibrator, f"run-{trial}", metrics))
    return points


# ------------------------------------------------------------------------------------------ correlations
@pytest.mark.parametrize("case", ["monotone", "anti", "random", "ties"])
def test_spearman_and_kendall_equal_scipy(case):
    rng = np.random.default_rng(1)
    x = rng.normal(size=30)
    y = {"monotone": np.exp(x), "anti": -x**3, "random": rng.normal(size=30),
         "ties": np.round(x + rng.normal(size=30), 0)}[case]
    if case == "ties":
        x = np.round(x, 1)
    control = {"exit4/accuracy": rng.normal(size=30)}
    analysis = analyze(_points({"mean/auroc": x}, {"acc_cost_auc": y}, extra=control), n_boot=0)
    row = _row(analysis, "mean/auroc")
    assert row.spearman == pytest.approx(scipy.stats.spearmanr(x, y).statistic, abs=1e-12)
    assert row.kendall == pytest.approx(scipy.stats.kendalltau(x, y).statistic, abs=1e-12)  # tau-b
    assert (row.n_trials, row.n_points, row.note) == (30, 30, "")
    if case in ("monotone", "anti"):
        assert row.spearman == pytest.approx(1 if case == "monotone" else -1)
        assert row.kendall == pytest.approx(1 if case == "monotone" else -1)


def test_sign_convention_makes_a_good_lower_is_better_proxy_positive():
    rng = np.random.default_rng(2)
    target = rng.uniform(0.6, 0.9, size=25)
    ece = 0.3 - target / 2 + rng.normal(0, 0.02, size=25)  # ECE falls as efficiency rises: a good proxy
    analysis = analyze(_points({"mean/ece": ece}, {"acc_cost_auc": target, "mean_cost": -target}), n_boot=50,
                       targets=["acc_cost_auc", "mean_cost"])
    row = _row(analysis, "mean/ece")
    assert row.spearman > 0.5
    assert row.spearman == pytest.approx(-scipy.stats.spearmanr(ece, target).statistic)
    assert row.spearman_ci[0] > 0
    # a lower-is-better target is negated as well: mean_cost = -target comes out as the same row
    assert _row(analysis, "mean/ece", "mean_cost").spearman == pytest.approx(row.spearman)
    assert "negated" in analysis.sign_convention and analysis.to_dict()["sign_convention"]


def test_weighted_statistics_equal_scipy_on_the_written_out_resample():
    """A resample as weights equals the resample written out point by point, ties and repeats included."""
    rng = np.random.default_rng(3)
    x, y = np.round(rng.normal(size=24), 1), rng.normal(size=24)
    trials = np.arange(24) // 3  # 8 trials of 3 points
    weights = resample_trials(trials, 5, seed=4).weights
    for w in weights:
        idx = np.repeat(np.arange(24), w.astype(int))
        rho = scipy.stats.spearmanr(x[idx], y[idx]).statistic
        tau = scipy.stats.kendalltau(x[idx], y[idx]).statistic
        assert weighted_spearman(x, y, w[None])[0] == pytest.approx(rho)
        assert weighted_kendall(x, y, w[None])[0] == pytest.approx(tau)
    # whole trials are drawn: the three points of a trial always share a weight, and each sample has 8 trials
    assert np.all(weights.reshape(5, 8, 3) == weights.reshape(5, 8, 3)[:, :, :1])
    assert np.all(weights.sum(axis=1) == 24)


def test_bootstrap_interval_contains_the_estimate_repeats_with_the_seed_and_narrows_with_more_trials():
    rng = np.random.default_rng(5)

    def row(n, seed=0):
        x = rng.normal(size=n)
        y = x + rng.normal(size=n)
        return correlate(x, y, np.arange(n), n_boot=400, seed=seed), (x, y)

    small, (x, y) = row(20)
    for lo_hi, estimate in ((small.spearman_ci, small.spearman), (small.kendall_ci, small.kendall)):
        assert lo_hi[0] < estimate < lo_hi[1]
    again = correlate(x, y, np.arange(20), n_boot=400, seed=0)
    other = correlate(x, y, np.arange(20), n_boot=400, seed=1)
    assert again.spearman_ci == small.spearman_ci and again.kendall_ci == small.kendall_ci
    assert other.spearman_ci != small.spearman_ci
    large, _ = row(400)
    width = lambda ci: ci[1] - ci[0]  # noqa: E731
    assert width(large.spearman_ci) < width(small.spearman_ci) / 2


def test_bootstrap_resamples_trials_not_points():
    """Five calibrator points that repeat their model's values carry no more information than one point: the
    interval must stay as it is, where five independent models would narrow it."""
    rng = np.random.default_rng(6)
    x = rng.normal(size=12)
    y = x + rng.normal(size=12)
    one = correlate(x, y, np.arange(12), n_boot=500, seed=0)
    x5, y5 = np.repeat(x, 5), np.repeat(y, 5)
    repeated = correlate(x5, y5, np.repeat(np.arange(12), 5), n_boot=500, seed=0)
    independent = correlate(x5, y5, np.arange(60), n_boot=500, seed=0)
    assert (repeated.n_trials, repeated.n_points) == (12, 60)
    assert repeated.spearman == pytest.approx(one.spearman)
    np.testing.assert_allclose(repeated.spearman_ci, one.spearman_ci, atol=1e-12)
    np.testing.assert_allclose(repeated.kendall_ci, one.kendall_ci, atol=1e-12)
    width = lambda ci: ci[1] - ci[0]  # noqa: E731
    assert width(independent.spearman_ci) < 0.7 * width(one.spearman_ci)


def test_a_rows_interval_does_not_depend_on_the_other_keys_and_trials_may_be_names():
    full = _study(8)
    keep = ("mean/auroc", "acc_cost_auc", "exit3/accuracy")
    alone = [Point(f"dir-{p.trial}", p.calibrator, None, {k: p.metrics[k] for k in keep}) for p in full]
    a, b = _row(analyze(full, n_boot=200), "mean/auroc"), _row(analyze(alone, n_boot=200), "mean/auroc")
    assert a.spearman_ci == b.spearman_ci and a.kendall_ci == b.kendall_ci
    assert a.partial_spearman == b.partial_spearman
    assert a.n_trials == b.n_trials == 8
    no_boot = _row(analyze(alone, n_boot=0), "mean/auroc")
    assert no_boot.spearman == a.spearman
    assert all(math.isnan(v) for v in (*no_boot.spearman_ci, *no_boot.kendall_ci))


def test_partial_spearman_equals_the_correlation_of_rank_regression_residuals():
    rng = np.random.default_rng(7)
    n = 40
    accuracy = rng.uniform(0.6, 0.9, size=n)
    auroc = accuracy / 2 + rng.normal(0, 0.05, size=n)
    efficiency = accuracy + auroc + rng.normal(0, 0.05, size=n)
    control = {"exit1/accuracy": accuracy - 0.2, "exit3/accuracy": accuracy}
    analysis = analyze(_points({"mean/auroc": auroc}, {"acc_cost_auc": efficiency}, extra=control), n_boot=0)
    ranks = [scipy.stats.rankdata(v) for v in (auroc, efficiency, accuracy)]
    design = np.column_stack([np.ones(n), ranks[2]])
    residuals = [r - design @ np.linalg.lstsq(design, r, rcond=None)[0] for r in ranks[:2]]
    expected = np.corrcoef(*residuals)[0, 1]
    partial = _row(analysis, "mean/auroc").partial_spearman
    assert partial == pytest.approx(expected, abs=1e-10)
    assert partial < _row(analysis, "mean/auroc").spearman  # part of it was accuracy


def test_the_control_is_each_points_own_last_exit():
    points = [Point(0, "none", None, {"exit1/accuracy": 0.5, "exit2/accuracy": 0.6, "exit2/ece": 0.1}),
              Point(1, "none", None, {"exit1/accuracy": 0.4, "exit4/accuracy": 0.9, "mean/auroc": 0.8}),
              Point(2, "none", None, {"acc_cost_auc": 0.7})]
    np.testing.assert_array_equal(PointTable(points).last_exit_accuracy(), [0.6, 0.9, np.nan])


def test_degenerate_rows_say_why_and_carry_no_numbers():
    rng = np.random.default_rng(8)
    few = analyze(_points({"mean/auroc": rng.normal(size=4)}, {"acc_cost_auc": rng.normal(size=4)}))
    row = _row(few, "mean/auroc")
    assert row.note == "fewer than 5 trials (4)"
    assert math.isnan(row.spearman) and math.isnan(row.spearman_ci[0]) and math.isnan(row.partial_spearman)
    assert _row(analyze(_points({"mean/auroc": rng.normal(size=6)}, {"acc_cost_auc": rng.normal(size=6)})),
                "mean/auroc").note == "no last-exit accuracy for the partial"
    both = correlate(np.ones(4), np.arange(4.0), np.arange(4))
    assert both.note == "fewer than 5 trials (4); constant proxy"
    assert few.to_dict()["correlations"][0]["spearman"] is None
    assert few.to_dict()["correlations"][0]["spearman_ci"] == [None, None]

    n = 10
    target = rng.normal(size=n)
    auroc = rng.normal(size=n)
    auroc[[1, 4]] = np.nan
    ece = np.r_[np.full(n - 2, 0.1), np.nan, 0.3]  # constant once the NaN target point is dropped
    target[-1] = np.nan
    proxies = {"mean/auroc": auroc, "mean/ece": ece, "mean/brier": np.full(n, 0.2)}
    constant_control = {"exit2/accuracy": np.full(n, 0.8)}
    analysis = analyze(_points(proxies, {"acc_cost_auc": target}, extra=constant_control), n_boot=50)
    kept = np.isfinite(auroc) & np.isfinite(target)
    row = _row(analysis, "mean/auroc")
    assert (row.n_points, row.n_trials) == (7, 7)
    assert row.spearman == pytest.approx(scipy.stats.spearmanr(auroc[kept], target[kept]).statistic)
    assert row.note == "constant control" and math.isnan(row.partial_spearman)
    assert _row(analysis, "mean/ece").note == "constant proxy"
    assert _row(analysis, "mean/brier").note == "constant proxy"
    assert math.isnan(_row(analysis, "mean/ece").kendall)


def test_proxy_keys_are_the_calibration_and_failure_keys_present():
    analysis = analyze(_study(6), n_boot=0)
    proxies = list(dict.fromkeys(r.proxy for r in analysis.correlations))
    assert proxies[:6] == ["mean/ece", "mean/brier", "mean/nll", "mean/auroc", "mean/aurc", "mean/eefp"]
    # accuracy, kendall_tau and cost are no proxies, nor calibration under another score (the same top-label
    # probability as the point's own mean/ece)
    assert proxies[6:] == ["exit1/auroc", "exit1/eefp", "exit2/ece", "exit2/auroc", "exit2/eefp",
                           "exit3/auroc", "exit3/eefp", "score/learned/mean/auroc"]
    assert analysis.targets == ("acc_cost_auc", "sweep/acc_cost_auc", "acc_at_25", "acc_at_50", "acc_at_75")
    assert _row(analysis, "exit3/eefp").note == "fewer than 5 trials (0)"  # NaN at the last exit
    assert _row(analysis, "mean/eefp").n_points == 18


def test_bad_input_is_refused_with_a_reason():
    point = Point(0, "none", None, {"mean/ece": 0.1, "acc_cost_auc": 0.5})
    with pytest.raises(AnalysisError, match="no points"):
        analyze([])
    with pytest.raises(AnalysisError, match="two points for calibrator 'none'"):
        analyze([point, point])
    with pytest.raises(AnalysisError, match="split prefix.*'mean/ece'"):
        analyze([Point(0, "none", None, {"test/mean/ece": 0.1})])
    with pytest.raises(AnalysisError, match="is in no point"):
        analyze([point], targets=["acc_at_50"])
    with pytest.raises(AnalysisError, match="unknown metric"):
        analyze([point], targets=["nope"])
    with pytest.raises(AnalysisError, match="none of the default targets"):
        analyze([Point(0, "none", None, {"mean/ece": 0.1})])
    with pytest.raises(AnalysisError, match="n_boot"):
        analyze([point], n_boot=-1)
    with pytest.raises(AnalysisError, match="tolerance"):
        analyze([point], tolerance=-0.1)


# ------------------------------------------------------------------------------------------ within model
def test_within_model_changes_and_summary_on_a_hand_made_case():
    def point(trial, calibrator, ece, auc, tau=math.nan):
        metrics = {"mean/ece": ece, "mean/auroc": 0.8, "acc_cost_auc": auc}
        if not math.isnan(tau):
            metrics["mean/kendall_tau"] = tau
        return Point(trial, calibrator, None, metrics)

    points = [
        point(0, "none", 0.20, 0.700),
        point(0, "temperature", 0.02, 0.7005, 0.95),  # ECE cut, efficiency +0.0005: stayed
        point(0, "isotonic", 0.03, 0.690, 0.8),  # ECE cut, -0.01: fell
        point(1, "none", 0.10, 0.600),
        point(1, "temperature", 0.12, 0.650, 0.99),  # ECE rose: not counted among the cuts
        point(1, "isotonic", 0.01, 0.620, 0.9),  # ECE cut, +0.02: rose
        point(2, "temperature", 0.01, 0.9, 0.9),  # no uncalibrated point: no comparison
    ]
    analysis = analyze(points, targets=["acc_cost_auc"], n_boot=0)
    rows = {(r.trial, r.calibrator): r for r in analysis.within_model}
    assert set(rows) == {(0, "temperature"), (0, "isotonic"), (1, "temperature"), (1, "isotonic")}
    assert rows[0, "temperature"].change["mean/ece"] == pytest.approx(-0.18)
    assert rows[0, "temperature"].change["acc_cost_auc"] == pytest.approx(0.0005)
    assert rows[0, "temperature"].change["mean/auroc"] == 0.0
    assert math.isnan(rows[0, "temperature"].change["mean/eefp"])
    assert rows[1, "isotonic"].kendall_tau == 0.9
    summary = analysis.within_summary
    assert summary["tolerance"] == 0.001
    temperature = summary["by_calibrator"]["temperature"]
    assert (temperature["pairs"], temperature["ece_cut"]) == (2, 1)  # trial 1's temperature raised ECE
    counts = temperature["targets"]["acc_cost_auc"]
    assert (counts["rose"], counts["stayed"], counts["fell"], counts["undefined"]) == (0, 1, 0, 0)
    assert counts["median_change"] == pytest.approx(0.0005)
    isotonic = summary["by_calibrator"]["isotonic"]["targets"]["acc_cost_auc"]
    assert (isotonic["rose"], isotonic["stayed"], isotonic["fell"]) == (1, 0, 1)
    overall = summary["overall"]
    assert (overall["pairs"], overall["ece_cut"]) == (4, 3)
    assert overall["targets"]["acc_cost_auc"]["median_change"] == pytest.approx(0.0005)
    assert overall["median_kendall_tau"] == pytest.approx(0.925)
    loose = analyze(points, targets=["acc_cost_auc"], n_boot=0, tolerance=0.05).within_summary
    assert loose["overall"]["targets"]["acc_cost_auc"]["stayed"] == 3


# ------------------------------------------------------------------------------------------ report
def test_to_dict_is_json_with_nan_as_none():
    analysis = analyze(_study(6), n_boot=20)
    data = json.loads(json.dumps(analysis.to_dict(), allow_nan=False))
    assert {"points", "correlations", "within_model", "within_summary", "sign_convention"} <= set(data)
    assert data["points"][0]["metrics"]["exit3/eefp"] is None
    assert Point.from_dict(data["points"][1]).metrics["mean/kendall_tau"] == analysis.points[1].metrics[
        "mean/kendall_tau"]
    row = data["correlations"][0]
    assert set(row) >= {"proxy", "target", "spearman", "spearman_ci", "kendall", "kendall_ci",
                        "partial_spearman", "n_trials", "n_points", "note"}
    assert len(data["within_model"]) == 12 and data["within_model"][0]["change"]["mean/ece"] < 0


@pytest.mark.slow  # over 1.5 s on an idle core
def test_write_report_writes_the_markdown_and_its_figures(tmp_path):
    analysis = analyze(_study(8), n_boot=100)
    cost = np.linspace(0.3, 1, 20)
    curves = {"none": (cost, 0.9 - 0.3 * (1 - cost) ** 2), "isotonic": (cost, 0.9 - 0.35 * (1 - cost) ** 2)}
    paths = write_report(analysis, tmp_path / "report", curves=curves, split="val")
    report = paths[0]
    assert report.name == "report.md"
    text = report.read_text()
    pngs = paths[1:]
    assert {p.name for p in pngs} == {
        "forest_acc_cost_auc.png", "accuracy_vs_cost.png",
        *(f"scatter_mean_{m}_vs_acc_cost_auc.png" for m in ("ece", "nll", "brier", "auroc", "aurc", "eefp"))}
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
        assert f"]({png.name})" in text
    assert "(val split)" in text and "Sign convention" in text
    table = [line for line in text.splitlines() if line.startswith("| 1 |")]
    best = max((r for r in analysis.correlations if r.target == "acc_cost_auc" and not r.note),
               key=lambda r: r.spearman)
    assert table and f"`{best.proxy}`" in table[0]
    overall = analysis.within_summary["overall"]
    assert f"Calibration cut mean ECE in **{overall['ece_cut']} of {overall['pairs']}**" in text


@pytest.mark.filterwarnings("error")
def test_a_forest_without_numbers_says_why(tmp_path):
    from eeopt.analysis.plots import plot_forest

    few = analyze(_study(3), n_boot=10)
    path = plot_forest(few.ranked(), tmp_path / "forest.png", split="val")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_curves_must_pair_costs_with_accuracies(tmp_path):
    from eeopt.analysis.plots import plot_accuracy_vs_cost

    with pytest.raises(AnalysisError, match="curve 'none'.*one length"):
        plot_accuracy_vs_cost({"none": (np.linspace(0, 1, 5), np.ones(4))}, tmp_path / "x.png")


def test_the_analysis_imports_no_torch_ray_mlflow_optuna_nor_matplotlib():
    code = ("import sys; from eeopt.analysis import analyze, Point; "
            "points = [Point(i, 'none', None, {'mean/ece': i % 3, 'acc_cost_auc': i}) for i in range(6)]; "
            "analyze(points, n_boot=10); "
            "heavy = ('torch', 'ray', 'mlflow', 'optuna', 'matplotlib'); "
            "print(sorted(m for m in heavy if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --------------------------------------------------------------------------------------------------- from folders
@pytest.mark.slow  # over 1.5 s on an idle core
def test_exits_analyze_folders_end_to_end(tmp_path, capsys):
    """Models on disk -> every calibrator fitted on val -> one point per (model, calibrator) -> the analysis,
    whose Spearman equals scipy's on the points it reports."""
    import json

    from scipy.stats import spearmanr

    from eeopt.cli import main
    from eeopt.core.synthetic import synthetic_exit_outputs

    folders = []
    for i in range(5):
        folder = tmp_path / f"model{i}"
        synthetic_exit_outputs(3, 600, 6, seed=10 + i).save(folder / "val.npz")
        synthetic_exit_outputs(3, 600, 6, seed=20 + i).save(folder / "test.npz")
        folders.append(str(folder))
    argv = ["exits", "analyze", *folders, "--trials", "20", "--compare", "none,temperature,isotonic", "--json",
            "--output-dir", str(tmp_path / "report")]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["points"]) == 15 and {p["run_id"] for p in out["points"]} == {None}
    points = out["points"]
    for proxy in ("mean/ece", "mean/auroc"):
        row = next(r for r in out["correlations"] if r["proxy"] == proxy and r["target"] == "acc_cost_auc")
        sign = 1 if proxy == "mean/auroc" else -1
        expected = spearmanr([sign * p["metrics"][proxy] for p in points],
                             [p["metrics"]["acc_cost_auc"] for p in points]).statistic
        assert row["spearman"] == pytest.approx(expected, abs=1e-12)
    assert (tmp_path / "report" / "report.md").is_file() and (tmp_path / "report" / "accuracy_vs_cost.png").is_file()
    assert main(["exits", "analyze", str(tmp_path)]) == 2  # a folder without exit outputs: one line
    assert "no val.npz" in capsys.readouterr().err
