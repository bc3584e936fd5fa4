"""The retraining spread (`eeopt.analysis.replicate`, `study analyze --replicate`): every number against scipy
on the paired points, the pairing and what it leaves out, the errors; and two tiny real studies end to end."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from scipy.stats import spearmanr

from eeopt.analysis import AnalysisError, Point, analyze
from eeopt.analysis.replicate import compare_replicate, markdown_section

CALIBRATORS = ("none", "temperature")
#: The mean proxies of the synthetic points and their direction (+1: higher is better); `exit2/ece` is per
#: exit and `score/learned/mean/ece` repeats a calibration key, so neither is a row.
PROXIES = {"mean/ece": -1, "mean/nll": -1, "mean/aurc": -1, "mean/auroc": 1, "score/learned/mean/auroc": 1}
TARGET = "acc_cost_auc"


def _models(trials, seed: int, noise: float) -> dict[int, dict[str, float]]:
    """Per trial, the model's latent qualities: the same configuration (trial) trained with another `seed`
    moves them by `noise`."""
    base = np.random.default_rng(100)
    latent = {t: base.uniform(0.6, 0.9, size=3) for t in range(max(trials) + 1)}
    rng = np.random.default_rng(seed)
    return {t: latent[t] + rng.normal(0, noise, size=3) for t in trials}


def _points(trials, seed: int, noise: float = 0.02, skip=(), label=lambda t: t) -> list[Point]:
    """A point per (trial, calibrator), `skip` (trial, calibrator) left out; trials labelled by `label`."""
    rng = np.random.default_rng(seed + 1)
    points = []
    for trial, (quality, ranking, over) in _models(trials, seed, noise).items():
        for calibrator in CALIBRATORS:
            if (trial, calibrator) in skip:
                continue
            ece = over / 4 if calibrator == "temperature" else over / 2
            metrics = {"mean/ece": ece + rng.normal(0, 0.02), "mean/nll": 1 - quality + ece,
                       "mean/aurc": (1 - quality) * (1 - ranking) + rng.normal(0, 0.005),
                       "mean/auroc": ranking + rng.normal(0, 0.01),
                       "score/learned/mean/auroc": ranking + rng.normal(0, 0.03),
                       "score/learned/mean/ece": ece, "exit2/ece": ece, "exit3/accuracy": quality,
                       TARGET: quality / 2 + ranking / 2 + rng.normal(0, 0.01)}
            points.append(Point(label(trial), calibrator, None, metrics))
    return points


def _spearman(x, y) -> float:
    return float(spearmanr(x, y).statistic)


def test_every_number_is_scipy_on_the_paired_points():
    """Trials 0-11 against a replicate of trials 2-13 that lacks one point: each proxy's Spearman over the
    shared (trial, calibrator) points of trials 2-11 in each study, the order of the proxies, the target's
    change."""
    skip = {(5, "temperature")}
    first = analyze(_points(range(12), seed=0), n_boot=50)
    second = analyze(_points(range(2, 14), seed=1, skip=skip), n_boot=0)
    replicate = compare_replicate(first, second)

    paired = list(range(2, 12))
    assert replicate.pairs == tuple((t, t) for t in paired)
    assert replicate.unpaired_first == (0, 1) and replicate.unpaired_replicate == (12, 13)
    keys = [(t, c) for t in paired for c in CALIBRATORS if (t, c) not in skip]
    assert replicate.n_points == len(keys) == 19
    by_key = [{(p.trial, p.calibrator): p.metrics for p in a.points} for a in (first, second)]
    target = [[m[k][TARGET] for k in keys] for m in by_key]
    expected = {proxy: [_spearman([sign * m[k][proxy] for k in keys], y) for m, y in zip(by_key, target)]
                for proxy, sign in PROXIES.items()}

    assert {r.proxy for r in replicate.proxies} == set(PROXIES)
    for row in replicate.proxies:
        assert row.spearman == pytest.approx(expected[row.proxy][0], abs=1e-12)
        assert row.replicate_spearman == pytest.approx(expected[row.proxy][1], abs=1e-12)
        assert row.change == pytest.approx(expected[row.proxy][1] - expected[row.proxy][0], abs=1e-12)
        assert row.family == ("calibration" if "ece" in row.proxy or "nll" in row.proxy else "failure")
        assert row.note == ""
    for side, rank in ((0, "rank"), (1, "replicate_rank")):
        best_first = sorted(PROXIES, key=lambda p: -expected[p][side])
        in_order = sorted(replicate.proxies, key=lambda r: best_first.index(r.proxy))
        assert [getattr(r, rank) for r in in_order] == [1, 2, 3, 4, 5]
        assert replicate.top[side] == best_first[0]
    assert [r.proxy for r in replicate.proxies] == sorted(PROXIES, key=lambda p: -expected[p][0])
    assert replicate.order_spearman == pytest.approx(
        _spearman(*zip(*(expected[p] for p in PROXIES))), abs=1e-12) and replicate.n_ordered == 5
    families = ["calibration" if p in ("mean/ece", "mean/nll") else "failure" for p in replicate.top]
    assert replicate.same_top_family == (families[0] == families[1])

    for row in replicate.targets:
        shared = [t for t in paired if (t, row.calibrator) not in skip]
        a, b = ([m[t, row.calibrator][TARGET] for t in shared] for m in by_key)
        assert row.n_models == len(shared) and row.note == ""
        assert row.spearman == pytest.approx(_spearman(a, b), abs=1e-12)
        assert row.median_abs_change == pytest.approx(np.median(np.abs(np.subtract(b, a))), abs=1e-15)
        assert row.max_abs_change == pytest.approx(np.max(np.abs(np.subtract(b, a))), abs=1e-15)
    assert [r.calibrator for r in replicate.targets] == list(CALIBRATORS)
    assert [m[0] for m in replicate.models] == paired
    assert replicate.models[3][2] == {"none": (by_key[0][5, "none"][TARGET], by_key[1][5, "none"][TARGET])}

    data = json.loads(json.dumps(replicate.to_dict(), allow_nan=False))
    assert data["unpaired"] == {"first": [0, 1], "replicate": [12, 13]} and len(data["proxies"]) == 5
    text = "\n".join(markdown_section(replicate, "study", "study-seed1"))
    assert "## Retraining spread: `study` against its replicate `study-seed1`" in text
    assert all(f"| `{p}` |" in text for p in PROXIES) and "10 paired models, 19 (model, calibrator)" in text


def test_pairs_can_join_other_labels_and_retraining_noise_shows():
    """Explicit pairs join trials labelled differently; the same analysis with equal labels gives the same
    numbers. A replicate trained with more noise moves the target more."""
    first = analyze(_points(range(10), seed=0), n_boot=0)
    same = compare_replicate(first, analyze(_points(range(10), seed=1), n_boot=0))
    named = compare_replicate(first, analyze(_points(range(10), seed=1, label=lambda t: f"r{t}"), n_boot=0),
                              pairs=[(t, f"r{t}") for t in range(10)])
    assert [(r.proxy, r.spearman, r.replicate_spearman) for r in named.proxies] == [
        (r.proxy, r.spearman, r.replicate_spearman) for r in same.proxies]
    assert named.pairs[0] == (0, "r0") and named.targets == same.targets
    noisy = compare_replicate(first, analyze(_points(range(10), seed=1, noise=0.2), n_boot=0))
    assert noisy.targets[0].median_abs_change > same.targets[0].median_abs_change
    assert noisy.targets[0].spearman < same.targets[0].spearman


def test_too_few_pairs_say_so_and_bad_pairs_are_errors():
    first = analyze(_points(range(8), seed=0), n_boot=0)
    few = compare_replicate(first, analyze(_points(range(5, 12), seed=1), n_boot=0))  # trials 5, 6, 7
    assert len(few.pairs) == 3 and all(math.isnan(r.spearman) for r in few.proxies)
    assert {r.note for r in few.proxies} == {"fewer than 5 trials (3)"}
    assert math.isnan(few.order_spearman) and few.top == (None, None) and few.same_top_family is None
    assert {r.note for r in few.targets} == {"fewer than 5 models (3)"} and few.targets[0].n_models == 3
    assert "a study ranks no proxy first" in "\n".join(markdown_section(few, "a", "b"))
    json.dumps(few.to_dict(), allow_nan=False)

    with pytest.raises(AnalysisError, match="no paired trial"):
        compare_replicate(first, analyze(_points(range(20, 26), seed=1), n_boot=0))
    with pytest.raises(AnalysisError, match="trial 30"):
        compare_replicate(first, first, pairs=[(0, 30)])
    with pytest.raises(AnalysisError, match="twice"):
        compare_replicate(first, first, pairs=[(0, 1), (1, 1)])
    other = [Point(p.trial, "isotonic", None, p.metrics) for p in _points(range(8), seed=1)
             if p.calibrator == "none"]
    with pytest.raises(AnalysisError, match="share no calibrator"):
        compare_replicate(first, analyze(other, n_boot=0))
    with pytest.raises(AnalysisError, match="sweep/acc_cost_auc"):
        compare_replicate(first, first, target="sweep/acc_cost_auc")


# ------------------------------------------------------------------------------------------------ end to end
#: Five trials of a tiny model, drawn at random (the values depend on study.seed and the trial number only).
STUDY = {
    "seed": 0,
    "data": {"name": "digits", "train_subset": 300},
    "model": {"backbone": "tinyresnet", "width": 8, "exits": [1, 3]},
    "training": {"epochs": 1, "batch_size": 64},
    "calibration": {"method": "none", "compare": ["none", "temperature"]},
    "policy": {"trials": 10},
    "search_space": {"training.lr": {"type": "float", "low": 0.0005, "high": 0.02, "log": True},
                     "training.label_smoothing": {"type": "float", "low": 0.0, "high": 0.3}},
    "study": {"name": "spread", "trials": 5, "sampler": "random", "seed": 0,
              "resources": {"cpus_per_trial": 1, "max_concurrent": 2}, "ray": {"num_cpus": 2}},
}


def _test_metrics(tracking_uri: str, experiment: str) -> dict[int, dict[str, float]]:
    """Each trial run's metrics, by trial number, read straight from MLflow."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return {int(r.data.tags["optuna.trial_number"]): r.data.metrics for r in runs
            if r.data.tags.get("eeopt.role") == "trial"}


@pytest.mark.slow
def test_study_analyze_replicate_end_to_end(tmp_path, monkeypatch, capsys):
    """Two tiny studies of one file, the second with `--set seed=1`: the trials' sampled values agree by
    number, and `study analyze --replicate` gives scipy's numbers on the two studies' MLflow metrics, a table
    that fits 80 columns, a report section, and one-line errors for a missing replicate or one without a
    paired trial."""
    import optuna
    import ray
    import yaml

    from eeopt.cli import main

    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(STUDY))
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    try:  # one Ray for both runs (`study run` joins a Ray that is up)
        assert main(["study", "run", str(path)]) == 0
        assert main(["study", "run", str(path), "--set", "seed=1", "--set", "study.name=spread-seed1"]) == 0
    finally:
        ray.shutdown()
    storage = f"sqlite:///{tmp_path / 'eeopt.db'}"
    studies = [optuna.load_study(study_name=name, storage=storage) for name in ("spread", "spread-seed1")]
    complete = (optuna.trial.TrialState.COMPLETE,)
    params = [{t.number: t.params for t in s.get_trials(states=complete)} for s in studies]
    assert params[0] == params[1] and len(params[0]) == 5

    capsys.readouterr()
    assert main(["study", "analyze", str(path), "--replicate", "spread-seed1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)["replicate"]
    assert out["pairs"] == [[n, n] for n in range(5)] and out["unpaired"] == {"first": [], "replicate": []}
    assert out["seeds"] == {"first": ["0"], "replicate": ["1"]} and out["other_params"] == []
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    metrics = [_test_metrics(uri, name) for name in ("spread", "spread-seed1")]
    keys = [(n, c) for n in range(5) for c in ("none", "temperature")]
    target = [[m[n][f"test/calib/{c}/acc_cost_auc"] for n, c in keys] for m in metrics]
    rows = {r["proxy"]: r for r in out["proxies"]}
    for proxy, sign in (("mean/ece", -1), ("mean/nll", -1), ("mean/auroc", 1)):
        rho = [_spearman([sign * m[n][f"test/calib/{c}/{proxy}"] for n, c in keys], y)
               for m, y in zip(metrics, target)]
        assert rows[proxy]["spearman"] == pytest.approx(rho[0], abs=1e-12)
        assert rows[proxy]["replicate_spearman"] == pytest.approx(rho[1], abs=1e-12)
    finite = [r for r in out["proxies"] if r["spearman"] is not None and r["replicate_spearman"] is not None]
    assert out["order"]["spearman"] == pytest.approx(
        _spearman([r["spearman"] for r in finite], [r["replicate_spearman"] for r in finite]), abs=1e-12)
    (none,) = [r for r in out["target_change"] if r["calibrator"] == "none"]
    a, b = ([m[n]["test/calib/none/acc_cost_auc"] for n in range(5)] for m in metrics)
    assert none["spearman"] == pytest.approx(_spearman(a, b), abs=1e-12) and none["n_models"] == 5
    assert none["median_abs_change"] == pytest.approx(np.median(np.abs(np.subtract(b, a))), abs=1e-12)

    monkeypatch.setenv("COLUMNS", "80")
    report = tmp_path / "report"
    assert main(["study", "analyze", str(path), "--replicate", "spread-seed1", "--output-dir",
                 str(report)]) == 0
    text = capsys.readouterr().out
    assert "Retraining spread: spread vs spread-seed1 (seed 0 vs 1)" in text and "first-ranked:" in text
    ece = rows["mean/ece"]  # its row: Spearman (rank) in each study, and the change
    cells = [f"{ece['spearman']:.3f} \\({ece['rank']}\\)",
             f"{ece['replicate_spearman']:.3f} \\({ece['replicate_rank']}\\)", f"{ece['change']:.3f}"]
    assert re.search(r"│ mean/ece\s+│\s+" + r" │\s+".join(cells) + " │", text)
    lines = [line for line in text.splitlines() if not line.startswith("report: ")]  # a path, however long
    assert max(len(line.rstrip()) for line in lines) <= 80 and "…" not in text
    section = "## Retraining spread: `spread` against its replicate `spread-seed1`"
    assert section in (report / "report.md").read_text()

    assert main(["study", "analyze", str(path), "--replicate", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no study named 'nosuch'") and err.count("\n") == 1
    # a replicate whose trials sampled other values: the same runs, another learning rate
    shifted = optuna.create_study(study_name="shifted", storage=storage, direction="maximize")
    for t in studies[1].get_trials():
        shifted.add_trial(optuna.trial.create_trial(
            state=t.state, values=t.values,
            params={**t.params, "training.lr": (t.params["training.lr"] + 0.003) / 2},
            distributions=t.distributions, user_attrs=t.user_attrs))
    assert main(["study", "analyze", str(path), "--replicate", "shifted"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: study 'shifted' has no trial paired with 'spread': 5 trial numbers") and \
        err.count("\n") == 1
