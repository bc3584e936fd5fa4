"""A model assessed under several calibrators and scores: the keys, the protocol, and one fit per calibrator."""

from __future__ import annotations

import numpy as np
import pytest

from eeopt.assess import assess_model
from eeopt.core.calibration import CALIBRATORS, TemperatureScaling
from eeopt.core.evaluation import evaluate_exits
from eeopt.names import parse_key
from eeopt.core.synthetic import synthetic_exit_outputs

COMPARE = ("none", "temperature", "vector", "histogram", "isotonic")


@pytest.fixture(scope="module")
def assessed():
    val = synthetic_exit_outputs(3, 1200, 10, seed=1, with_scores=True)
    test = synthetic_exit_outputs(3, 1000, 10, seed=2, with_scores=True)
    return val, test, assess_model(val, test, calibration="temperature", compare=COMPARE, trials=40)


def test_every_calibrator_and_the_other_score_get_their_keys(assessed):
    _, _, a = assessed
    variants = {parse_key(k).variant for k in a.metrics}
    assert variants == {None, ("score", "learned"), *(("calib", c) for c in COMPARE)}
    for split in ("val", "test"):
        for c in COMPARE:
            for key in ("exit1/ece", "mean/auroc", "mean/eefp", "acc_cost_auc", "sweep/acc_cost_auc", "acc_at_50"):
                assert f"{split}/calib/{c}/{key}" in a.metrics
    # the configured calibrator drives the headline keys: its compared copy is the same number
    assert a.metrics["test/acc_cost_auc"] == a.metrics["test/calib/temperature/acc_cost_auc"]
    assert a.metrics["val/mean/ece"] == a.metrics["val/calib/temperature/mean/ece"]
    assert "test/calib/none/exit1/kendall_tau" not in a.metrics and "test/calib/isotonic/exit1/kendall_tau" in a.metrics


def test_compared_numbers_equal_an_independent_evaluation(assessed):
    val, test, a = assessed
    for c in COMPARE:
        report = evaluate_exits(test, fit_on=val, calibrate=c)
        for key in ("exit2/ece", "exit1/nll", "mean/auroc", "exit1/eefp", "sweep/acc_cost_auc", "sweep/mean_cost"):
            assert a.metrics[f"test/calib/{c}/{key}"] == report.metrics[key], (c, key)


def test_learned_score_changes_failure_prediction_not_calibration(assessed):
    _, test, a = assessed
    from sklearn.metrics import roc_auc_score

    calibrated = a.calibrators["temperature"].test.outputs
    assert a.metrics["test/score/learned/exit1/auroc"] == pytest.approx(
        roc_auc_score(calibrated.correct[0], test.scores[0]), abs=1e-12)
    assert a.metrics["test/score/learned/exit1/auroc"] != a.metrics["test/exit1/auroc"]
    assert a.metrics["test/score/learned/mean/ece"] == a.metrics["test/mean/ece"]


def test_each_calibrator_is_fitted_once(monkeypatch):
    fits = []
    original = TemperatureScaling._fit

    def counting(self, val):
        fits.append(val.source)
        return original(self, val)

    monkeypatch.setattr(TemperatureScaling, "_fit", counting)
    val, test = synthetic_exit_outputs(3, 300, 5, seed=1), synthetic_exit_outputs(3, 300, 5, seed=2)
    assess_model(val, test, calibration="temperature", compare=("none", "temperature"), trials=10)
    assert fits == [val.source]
    assert "temperature" in CALIBRATORS


def test_no_failure_head_means_no_score_variant():
    val, test = synthetic_exit_outputs(3, 300, 5, seed=1), synthetic_exit_outputs(3, 300, 5, seed=2)
    a = assess_model(val, test, trials=10)
    assert all(parse_key(k).variant is None for k in a.metrics) and not a.scores
    assert np.isfinite(a.metrics["test/acc_cost_auc"])
