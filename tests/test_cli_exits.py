"""`eeopt exits ...` end to end on files the tests write, through the real entry point."""

import json
import subprocess
import sys

import numpy as np
import pytest

from eeopt.cli import main
from eeopt.core.outputs import ExitOutputs
from eeopt.core.synthetic import synthetic_exit_outputs


@pytest.fixture
def files(tmp_path):
    val = synthetic_exit_outputs(4, 1500, 10, seed=1, with_scores=True)
    test = synthetic_exit_outputs(4, 1200, 10, seed=2, with_scores=True)
    return val.save(tmp_path / "val.npz"), test.save(tmp_path / "test.npz")


def _json(capsys, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_evaluate_json_shape_and_values(files, capsys):
    val_path, test_path = files
    out = _json(capsys, ["exits", "evaluate", str(test_path), "--json"])
    test = ExitOutputs.load(test_path)
    m = out["metrics"]
    keys = {"accuracy", "ece", "mce", "brier", "nll", "auroc", "aupr_error", "fpr95", "aurc", "eaurc", "eefp"}
    for k in (1, 2, 3, 4):
        assert {f"exit{k}/{key}" for key in keys} <= set(m)
    assert {f"mean/{key}" for key in keys} <= set(m)
    assert not any("kendall_tau" in key for key in m)  # no calibrator, nothing re-ranked
    np.testing.assert_allclose([m[f"exit{k}/accuracy"] for k in (1, 2, 3, 4)], test.accuracy)
    assert m["exit4/eefp"] is None  # undefined at the last exit -> null
    for key in ("acc_at_25", "acc_at_50", "acc_at_75", "acc_at_100", "acc_cost_auc"):
        assert m[f"sweep/{key}"] is None or 0.0 <= m[f"sweep/{key}"] <= 1.0
        assert key not in m  # the per-exit search's names belong to `exits search`
    assert test.costs[0] <= m["sweep/mean_cost"] <= test.costs[-1]
    assert m["sweep/mean_cost"] == m["sweep/mean_cost_at_100"]
    # in-sample acc_at_100 is the best accuracy of any global threshold, at least the last exit's accuracy
    assert m["sweep/acc_at_100"] >= test.accuracy[-1] - 1e-12
    frontier = np.array(out["frontier"])
    assert np.all(np.diff(frontier[:, 0]) > 0) and np.all(np.diff(frontier[:, 1]) > 0)
    assert "curve" not in out  # only with --curve
    assert out["thresholds_from"].endswith("(in-sample)")
    # patience P = K always waits for the last exit; P = 1 always leaves at the first
    pat = out["patience"]
    assert [p["patience"] for p in pat] == [1, 2, 3, 4]
    assert pat[0]["accuracy"] == pytest.approx(test.accuracy[0]) and pat[0]["mean_cost"] == pytest.approx(test.costs[0])
    assert pat[-1]["accuracy"] == pytest.approx(test.accuracy[-1]) and pat[-1]["mean_cost"] == pytest.approx(test.costs[-1])


def test_evaluate_with_calibration_fitted_on_val(files, capsys):
    val_path, test_path = files
    out = _json(capsys, ["exits", "evaluate", str(test_path), "--fit-on", str(val_path),
                         "--calibrate", "temperature", "--score", "entropy", "--json"])
    assert out["calibration"] == "temperature" and out["score"] == "entropy"
    taus = [out["metrics"][f"exit{k}/kendall_tau"] for k in (1, 2, 3, 4)]
    assert all(-1 <= t <= 1 for t in taus)
    assert out["thresholds_from"] == str(val_path)


def test_evaluate_curve_on_request(files, capsys):
    _, test_path = files
    out = _json(capsys, ["exits", "evaluate", str(test_path), "--json", "--curve"])
    curve = out["curve"]
    assert curve["threshold"][0] == "inf" and len(curve["threshold"]) == len(curve["accuracy"])
    # the frontier is the upper staircase of the curve
    best = max(curve["accuracy"])
    assert out["frontier"][-1][1] == best


def test_evaluate_human_table(files, capsys):
    _, test_path = files
    assert main(["exits", "evaluate", str(test_path)]) == 0
    text = capsys.readouterr().out
    assert "exit" in text and "auroc" in text and "acc_at_50" in text


def test_search_json_reports_val_chosen_policies_on_test(files, capsys):
    val_path, test_path = files
    out = _json(capsys, ["exits", "search", "--fit-on", str(val_path), "--evaluate-on", str(test_path),
                         "--trials", "100", "--json"])
    test = ExitOutputs.load(test_path)
    budgets = out["budgets"]["search"]
    assert [b["budget"] for b in budgets] == [25, 50, 75, 100]
    from eeopt.core.policies import ThresholdPolicy, evaluate_thresholds
    from eeopt.core.scores import compute_score

    for b in budgets:
        if b["thresholds"] is None:
            continue
        # the reported test numbers are those of the val-chosen thresholds applied to test, recomputed here
        policy = ThresholdPolicy.from_dict({"score": "msp", "thresholds": b["thresholds"]})
        res = evaluate_thresholds(compute_score("msp", test), test.correct, test.costs, np.array(policy.thresholds))
        assert b["test_accuracy"] == pytest.approx(float(res.accuracy[0]))
        assert b["test_mean_cost"] == pytest.approx(float(res.mean_cost[0]))
        assert b["val_mean_cost"] <= b["budget"] / 100 * test.costs[-1] * (1 + 1e-9)
    assert out["metrics"]["sweep/acc_cost_auc"] is not None and out["metrics"]["acc_cost_auc"] is not None
    assert out["fit_metrics"]["acc_cost_auc"] >= out["fit_metrics"]["sweep/acc_cost_auc"] - 1e-12  # never worse on val


def test_search_writes_policy_file(files, tmp_path, capsys):
    val_path, test_path = files
    policy = tmp_path / "policy.json"
    assert main(["exits", "search", "--fit-on", str(val_path), "--evaluate-on", str(test_path),
                 "--trials", "50", "--save-policy", str(policy)]) == 0
    saved = json.loads(policy.read_text())
    assert saved and all(len(p["thresholds"]) == 3 for p in saved)
    assert "per-exit" in capsys.readouterr().out


def _npy_as_npz(tmp_path):
    path = tmp_path / "array.npz"
    with open(path, "wb") as fh:  # np.save would append .npy
        np.save(fh, np.zeros((2, 4, 3)))
    return path


def _bad(tmp_path, name, **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda t: t / "missing.npz", "missing.npz: no such file"),
        (lambda t: _bad(t, "shape.npz", logits=np.zeros((3, 4)), labels=np.zeros(4, int), costs=np.ones(3)),
         "logits must have shape"),
        (lambda t: _bad(t, "nan.npz", logits=np.full((2, 4, 3), np.nan), labels=np.zeros(4, int), costs=np.ones(2)),
         "logits contains NaN"),
        (lambda t: _bad(t, "labels.npz", logits=np.zeros((2, 4, 3)), labels=np.array([0, 1, 2, 3]), costs=np.ones(2)),
         "labels out of range"),
        (lambda t: _npy_as_npz(t), "not an .npz archive of named arrays"),
        (lambda t: _bad(t, "zero.npz", logits=np.zeros((2, 4, 3)), labels=np.zeros(4, int), costs=np.zeros(2)),
         "the last exit's cost must be > 0"),
    ],
)
def test_bad_input_exit_2_one_line(tmp_path, capsys, make, expected):
    path = make(tmp_path)
    assert main(["exits", "evaluate", str(path)]) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1 and "Traceback" not in err


def test_mismatched_val_test_classes(tmp_path, capsys, files):
    val_path, _ = files
    other = synthetic_exit_outputs(4, 100, 7, seed=3).save(tmp_path / "other.npz")
    assert main(["exits", "evaluate", str(other), "--fit-on", str(val_path)]) == 2
    assert "7 classes" in capsys.readouterr().err


def test_calibrate_without_fit_on_and_unknown_names(files, capsys):
    _, test_path = files
    assert main(["exits", "evaluate", str(test_path), "--calibrate", "temperature"]) == 2
    assert "--fit-on" in capsys.readouterr().err
    assert main(["exits", "evaluate", str(test_path), "--score", "nope"]) == 2
    assert "unknown score 'nope'" in capsys.readouterr().err
    assert main(["exits", "evaluate", str(test_path), "--bogus"]) == 2
    assert "No such option" in capsys.readouterr().err


def test_console_script_exit_status_and_fast_help(tmp_path):
    exe = [sys.executable, "-m", "eeopt.cli"]
    done = subprocess.run(exe + ["exits", "evaluate", str(tmp_path / "nope.npz")], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0 and "no such file" in done.stderr
    # --help must not import the heavy libraries
    code = "import sys; from eeopt.cli import main; main(['--help']); " \
           "print(sorted(m for m in ('torch', 'ray', 'mlflow', 'optuna', 'sklearn') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip().endswith("[]"), done.stdout[-300:]


def _one_line_error(capsys, argv, expected):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1 and "Traceback" not in err, err


def test_all_zero_costs_in_tables_and_search(tmp_path, capsys, files):
    zero = _bad(tmp_path, "zero.npz", logits=np.zeros((2, 4, 3)), labels=np.zeros(4, int), costs=np.zeros(2))
    _one_line_error(capsys, ["exits", "evaluate", str(zero)], "the last exit's cost must be > 0")
    _one_line_error(capsys, ["exits", "search", "--fit-on", str(zero), "--evaluate-on", str(zero)],
                    "the last exit's cost must be > 0")


def test_output_paths_are_checked_before_any_work(tmp_path, capsys, files):
    val_path, test_path = files
    search = ["exits", "search", "--fit-on", str(val_path), "--evaluate-on", str(test_path), "--trials", "10"]
    _one_line_error(capsys, search + ["--save-policy", str(tmp_path)], "is a directory")
    _one_line_error(capsys, search + ["--save-policy", str(val_path / "p.json")], "is not a directory")
    _one_line_error(capsys, search + ["--save-policy", str(tmp_path / "no" / "p.json")], "no such directory")
    _one_line_error(capsys, ["exits", "synthesize", str(val_path)], "exists and is not a directory")
    _one_line_error(capsys, ["exits", "synthesize", str(val_path / "sub")], "exists and is not a directory")
    before = sorted(p.name for p in tmp_path.iterdir())
    study = tmp_path / "s.yaml"
    study.write_text("study: {name: s}\n")
    _one_line_error(capsys, ["study", "export", str(study), "-o", str(tmp_path / "missing_dir" / "x.csv")],
                    "no such directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, "s.yaml"])  # no store was created
