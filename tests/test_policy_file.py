"""eeopt.core.policy_file: the policy file's round trip and validation, `decide` against a per-sample loop, the per-exit
decision against `decide`, and `exits search --policy-out` against `exits search --json`. No torch here."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
from scipy.special import softmax as scipy_softmax

from eeopt.core.calibration import create_calibrator, list_calibrators
from eeopt.cli import main
from eeopt.errors import ExitOutputsError
from eeopt.core.outputs import ExitOutputs
from eeopt.core.policy_choice import knee_index
from eeopt.core.policy_file import FORMAT, ONE_ROW_MAX_CLASSES, ExitDecider, PolicyFile, PolicyFileError
from eeopt.core.scores import compute_score, list_scores
from eeopt.core.synthetic import synthetic_exit_outputs


@pytest.fixture(scope="module")
def pair():
    return (synthetic_exit_outputs(4, 800, 6, seed=11, with_scores=True),
            synthetic_exit_outputs(4, 700, 6, seed=12, with_scores=True))


def midpoint_thresholds(scores: np.ndarray) -> tuple[float, ...]:
    """Thresholds that send about 1/(K-k) of the samples still running out at exit k, each half-way between two
    neighbouring scores (so no sample sits on a threshold)."""
    k_all, n = scores.shape
    running = np.ones(n, dtype=bool)
    out = []
    for k in range(k_all - 1):
        s = np.unique(scores[k][running])
        cut = int(round(len(s) * (1 - 1 / (k_all - k))))
        t = float((s[cut - 1] + s[cut]) / 2)
        out.append(t)
        running &= scores[k] < t
    return tuple(out)


def _policy(val, test, score="msp", calibrator="none", **kw) -> PolicyFile:
    cal = create_calibrator(calibrator).fit(val) if calibrator != "none" else None
    calibrated = cal.apply(test) if cal is not None else test
    fields = dict(score=score, thresholds=midpoint_thresholds(compute_score(score, calibrated)),
                  costs=tuple(test.costs), cost_unit="flops", budget=None, calibrator=calibrator,
                  calibrator_state=cal.state_dict() if cal is not None else None)
    return PolicyFile(**{**fields, **kw})


# ------------------------------------------------------------------------------------------------ round trip
def test_round_trip_keeps_every_field_and_writes_strict_json(pair, tmp_path):
    val, test = pair
    policy = dataclasses.replace(_policy(val, test, "entropy", "temperature"),
                                 thresholds=(-math.inf, 0.5, math.inf), budget=0.5,
                                 chosen_on={"split": "val", "accuracy": 0.9, "mean_cost": 4e5},
                                 report={"split": "test", "accuracy": float("nan"), "mean_cost": 5e5,
                                         "exit_shares": [1.0, 0.0, 0.0, 0.0]},
                                 source={"run_id": "abc", "trial": 3})
    path = tmp_path / "policy.json"
    policy.save(path)
    text = path.read_text()
    assert "Infinity" not in text and "NaN" not in text
    raw = json.loads(text)
    assert raw["format"] == FORMAT and raw["thresholds"] == ["-inf", 0.5, "inf"]
    assert raw["report"]["accuracy"] is None  # NaN -> null
    loaded = PolicyFile.load(path)
    assert loaded.thresholds == (-math.inf, 0.5, math.inf) and loaded.budget == 0.5
    assert loaded.calibrator_state == policy.calibrator_state and loaded.source == policy.source
    assert dataclasses.replace(loaded, report=None) == dataclasses.replace(policy, report=None)
    # the rebuilt calibrator is the fitted one, bit for bit
    a, b = policy.build_calibrator().apply(test), loaded.build_calibrator().apply(test)
    np.testing.assert_array_equal(a.probs, b.probs)


def _valid_dict(pair) -> dict:
    val, test = pair
    return _policy(val, test, "msp", "temperature").to_dict()


@pytest.mark.parametrize("mutate, field, fragment", [
    (lambda d: d.update(format="eeopt.policy/2"), "format", "unsupported version 'eeopt.policy/2'"),
    (lambda d: d.pop("format"), "format", "not an eeopt policy file"),
    (lambda d: d.update(score="confidence"), "score", "unknown score 'confidence'"),
    (lambda d: d.update(thresholds=[0.5, 0.6]), "thresholds", "expected K-1 = 3 thresholds for 4 exits"),
    (lambda d: d.update(thresholds=[0.5, "high", 0.7]), "thresholds.1", "'high'"),
    (lambda d: d.update(thresholds=[0.5, None, 0.7]), "thresholds.1", "None"),
    (lambda d: d.update(costs=[3.0, 2.0, 4.0, 5.0]), "costs", "cumulative"),
    (lambda d: d.update(costs=[0.0, 0.0, 0.0, 0.0]), "costs", "last exit's cost must be > 0"),
    (lambda d: d.update(cost_unit="seconds"), "cost_unit", "'seconds'"),
    (lambda d: d.update(budget=50), "budget", "got 50"),
    (lambda d: d.update(calibrator="platt"), "calibrator", "unknown calibrator 'platt'"),
    (lambda d: d.update(calibrator_state=None), "calibrator_state", "needs its fitted state"),
    (lambda d: d["calibrator_state"].update(temperature=[1.0, -2.0, 1.0, 1.0]), "calibrator_state",
     "temperatures must be > 0"),
    (lambda d: d["calibrator_state"].update(name="vector"), "calibrator_state", "state is for calibrator 'vector'"),
    (lambda d: d["calibrator_state"].update(num_exits=3, temperature=[1.0, 1.0, 1.0]),
     "calibrator_state.num_exits", "the policy has 4 exits"),
    (lambda d: d.update(calibrator="none"), "calibrator_state", "must be null"),
    (lambda d: d.update(thresholds_per_exit=[1]), "thresholds_per_exit", "unknown field"),
    (lambda d: d.pop("costs"), "costs", "missing"),
    (lambda d: d.update(report={"exit_shares": [1.0]}), "report.exit_shares", "expected 4 shares"),
])
def test_a_bad_file_is_one_line_naming_the_file_and_field(pair, tmp_path, mutate, field, fragment):
    data = _valid_dict(pair)
    mutate(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(PolicyFileError) as info:
        PolicyFile.load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {field}") and fragment in message and "\n" not in message, message


@pytest.mark.parametrize("content, fragment", [
    ("{not json", "not a JSON policy file"),
    ('{"thresholds": [Infinity]}', "not a JSON policy file"),
    ("[1, 2]", "expected a JSON object"),
])
def test_unreadable_files(tmp_path, content, fragment):
    path = tmp_path / "p.json"
    path.write_text(content)
    with pytest.raises(PolicyFileError, match=fragment):
        PolicyFile.load(path)
    with pytest.raises(PolicyFileError, match="no such file"):
        PolicyFile.load(tmp_path / "missing.json")


def test_cli_refuses_a_bad_policy_with_one_line_and_writes_nothing(pair, tmp_path, capsys):
    data = _valid_dict(pair)
    data["thresholds"] = [0.1]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    out = tmp_path / "pred.npz"
    # the policy is checked before the model folder (which does not exist here) is even read
    code = main(["predict", str(tmp_path / "no-model"), "--policy", str(bad), "--split", "test",
                 "--output", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0, err
    assert f"{bad}: thresholds" in err and "K-1 = 3" in err
    assert not out.exists()
    for argv, fragment in [
        (["--split", "train"], "--split: expected val or test, got 'train'"),
        ([], "exactly one of --split"),
        (["--split", "test", "--input", str(bad)], "exactly one of --split"),
    ]:
        assert main(["predict", str(tmp_path), "--policy", str(bad), *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert fragment in err and err.count("\n") == 0, err


# ------------------------------------------------------------------------------------------------ decide
def test_decide_equals_a_per_sample_loop_with_scipy_probabilities(pair):
    val, test = pair
    policy = _policy(val, test, "msp", "temperature")
    temperature = np.asarray(policy.calibrator_state["temperature"])
    predictions, exits, scores = policy.decide(test)
    thresholds = list(policy.thresholds)
    for n in range(test.num_samples):
        for k in range(test.num_exits):
            p = scipy_softmax(test.logits[k, n].astype(np.float64) / temperature[k])
            if k == test.num_exits - 1 or p.max() >= thresholds[k]:
                assert exits[n] == k and predictions[n] == p.argmax()
                assert scores[n] == pytest.approx(p.max(), rel=1e-12)
                break
    assert np.all(np.bincount(exits, minlength=4) > 0)
    summary = policy.evaluate(test)
    assert summary["accuracy"] == pytest.approx(np.mean(predictions == test.labels))
    assert summary["mean_cost"] == pytest.approx(np.mean(test.costs[exits]))


@pytest.mark.parametrize("calibrator", ["none", *list_calibrators()])
@pytest.mark.parametrize("score", list_scores())
def test_exit_by_exit_decisions_with_compaction_equal_decide(pair, score, calibrator):
    """`ExitDecider` on shrinking batches (what the predictor does between stages) gives `decide`'s answer bit
    for bit: calibration and scores act on each sample on its own."""
    val, test = pair
    policy = _policy(val, test, score, calibrator)
    predictions, exits, scores = policy.decide(test)
    decider = ExitDecider(policy)
    got = np.full((3, test.num_samples), -1.0)
    for start in range(0, test.num_samples, 97):  # uneven batches, the last one short
        running = np.arange(start, min(start + 97, test.num_samples))
        for k in range(test.num_exits):
            learned = test.scores[k, running] if test.scores is not None else None
            pred, score_k, leave = decider(k, test.logits[k, running], learned)
            done = running[leave]
            got[0, done], got[1, done], got[2, done] = pred[leave], k, score_k[leave]
            running = running[~leave]
            if running.size == 0:
                break
    np.testing.assert_array_equal(got[0], predictions)
    np.testing.assert_array_equal(got[1], exits)
    np.testing.assert_array_equal(got[2], scores)
    assert np.all(np.bincount(exits, minlength=4) > 0)


def _exits_one_by_one(decider: ExitDecider, outputs: ExitOutputs) -> np.ndarray:
    """int [N]: each sample's exit from `leaves`, exit by exit (the predictor at batch 1)."""
    exits = np.full(outputs.num_samples, outputs.num_exits - 1)
    for n in range(outputs.num_samples):
        for k in range(outputs.num_exits - 1):
            learned = float(outputs.scores[k, n]) if outputs.scores is not None else None
            leaves = decider.leaves(k, outputs.logits[k, n].tolist(), learned)
            assert type(leaves) is bool
            if leaves:
                exits[n] = k
                break
    return exits


@pytest.mark.parametrize("calibrator", ["none", *list_calibrators()])
@pytest.mark.parametrize("score", list_scores())
def test_one_sample_exits_equal_decide(pair, score, calibrator):
    """`ExitDecider.leaves` sends each sample out where `decide` does: on Python floats where the policy allows it
    (msp and learned; no calibrator, temperature or vector scaling), else through the batch path."""
    val, test = pair
    policy = _policy(val, test, score, calibrator)
    test = test.subset(np.arange(200))  # keeps the test short
    _, exits, _ = policy.decide(test)
    decider = ExitDecider(policy)
    np.testing.assert_array_equal(_exits_one_by_one(decider, test), exits)
    assert (decider._lean is not None) == (score in ("msp", "learned")
                                           and calibrator in ("none", "temperature", "vector"))


@pytest.mark.parametrize("classes", [2, 3, 100, ONE_ROW_MAX_CLASSES, ONE_ROW_MAX_CLASSES + 1])
@pytest.mark.parametrize("calibrator", ["none", "temperature"])
def test_one_sample_msp_exits_for_any_number_of_classes_and_ties(classes, calibrator):
    """The msp decision on Python floats for any C up to the limit (and past it, through the batch path): rows
    spanning tiny to large logit scales, rows with tied top classes and permuted copies of rows."""
    rng = np.random.default_rng(classes)
    n = 120
    logits = rng.normal(size=(2, n, classes)) * rng.choice([1e-3, 1.0, 40.0], size=(2, n, 1))
    logits[:, 0::4, 1] = logits[:, 0::4].max(axis=-1)  # a tie at the top
    logits[:, 1::4] = logits[:, 0::4][:, :, rng.permutation(classes)][:, : logits[:, 1::4].shape[1]]
    outputs = ExitOutputs(logits.astype(np.float32), np.zeros(n, dtype=np.int64), np.array([1.0, 2.0]))
    cal = create_calibrator(calibrator).fit(outputs) if calibrator != "none" else None
    reference = compute_score("msp", cal.apply(outputs) if cal is not None else outputs)
    policy = PolicyFile(score="msp", thresholds=(float(np.median(reference[0])),), costs=(1.0, 2.0),
                        cost_unit="flops", budget=None, calibrator=calibrator,
                        calibrator_state=cal.state_dict() if cal is not None else None)
    _, exits, _ = policy.decide(outputs)
    assert 0 < exits.sum() < n
    np.testing.assert_array_equal(_exits_one_by_one(ExitDecider(policy), outputs), exits)


@pytest.mark.parametrize("calibrator", ["none", "temperature"])
def test_one_sample_on_a_threshold_at_its_own_score(pair, calibrator):
    """A threshold equal to a sample's msp, or one float below it, lets the sample out; one float above keeps it in,
    as in `decide`: the `math.exp` msp never decides a sample this close to the threshold."""
    val, test = pair
    base = _policy(val, test, "msp", calibrator)
    cal = base.build_calibrator()
    reference = compute_score("msp", cal.apply(test) if cal is not None else test)[0]
    for n in range(0, test.num_samples, 50):
        for threshold, leaves in ((reference[n], True), (np.nextafter(reference[n], -1), True),
                                  (np.nextafter(reference[n], 2), False)):
            policy = dataclasses.replace(base, thresholds=(float(threshold), *base.thresholds[1:]))
            assert (policy.decide(test.subset([n]))[1][0] == 0) == leaves
            assert ExitDecider(policy).leaves(0, test.logits[0, n].tolist()) == leaves, (n, threshold)


def test_one_sample_errors_are_the_batch_paths(pair):
    """`leaves` reports what the batch path reports: a NaN or inf at the network's exit, a learned score that is
    missing or NaN, another number of classes than the calibrator's."""
    val, test = pair
    row = test.logits[2, 0].tolist()
    for calibrator in ("none", "temperature"):
        decider = ExitDecider(_policy(val, test, "msp", calibrator))
        for bad, kind in ((math.nan, "NaN"), (math.inf, "inf"), (-math.inf, "inf")):
            with pytest.raises(ExitOutputsError, match=rf"network batch: logits contains {kind} \(exit 3, sample 0"):
                decider.leaves(2, row[:3] + [bad] + row[4:])
    with pytest.raises(ExitOutputsError, match="network batch: has 7 classes but calibrator 'temperature' was fitted "
                                               "on 6 classes"):
        decider.leaves(2, row + [0.0])
    learned = ExitDecider(_policy(val, test, "learned", "none"))
    with pytest.raises(ExitOutputsError, match="score 'learned' needs a 'scores' array"):
        learned.leaves(0, row)
    with pytest.raises(ExitOutputsError, match=r"network batch: scores contains NaN \(exit 1, sample 0"):
        learned.leaves(0, row, math.nan)


@pytest.mark.parametrize("calibrator", ["none", "temperature"])
def test_exit_decider_names_the_network_exit_of_a_nan(pair, calibrator):
    """A NaN in the network's batch at exit 3 is reported at exit 3 (the decider's one-exit view is its exit 1)."""
    val, test = pair
    decider = ExitDecider(_policy(val, test, "msp", calibrator))
    logits = test.logits[2, :5].copy()
    logits[4, 1] = np.nan
    with pytest.raises(ExitOutputsError, match=r"network batch: logits contains NaN \(exit 3, sample 4"):
        decider(2, logits)


def test_decide_rejects_outputs_of_another_model(pair):
    val, test = pair
    with pytest.raises(Exception, match="has 3 exits but the policy has 4"):
        _policy(val, test).decide(test.select_exits([0, 1, 3]))


# ------------------------------------------------------------------------------------------------ from a search
@pytest.fixture
def files(pair, tmp_path):
    val, test = pair
    return val.save(tmp_path / "val.npz"), test.save(tmp_path / "test.npz")


@pytest.mark.parametrize("calibrate", ["none", "temperature"])
def test_search_policy_out_matches_search_json_at_its_budget(files, tmp_path, capsys, calibrate):
    val_path, test_path = files
    policy_path = tmp_path / "policy.json"
    argv = ["exits", "search", "--fit-on", str(val_path), "--evaluate-on", str(test_path), "--trials", "60",
            "--calibrate", calibrate, "--score", "entropy"]
    assert main([*argv, "--json", "--policy-out", str(policy_path), "--budget", "0.5"]) == 0
    out = json.loads(capsys.readouterr().out)
    policy = PolicyFile.load(policy_path)
    chosen = next(b for b in out["budgets"]["search"] if b["budget"] == 50)
    assert policy.budget == 0.5 and policy.score == "entropy" and policy.calibrator == calibrate
    assert [float(t) for t in chosen["thresholds"]] == list(policy.thresholds)
    assert policy.report["accuracy"] == chosen["test_accuracy"]
    assert policy.report["mean_cost"] == chosen["test_mean_cost"]
    assert policy.chosen_on["accuracy"] == chosen["val_accuracy"]
    # applying the file to the test outputs (calibrator rebuilt from its state) gives the same numbers again
    test = ExitOutputs.load(test_path)
    applied = policy.evaluate(test)
    assert applied["accuracy"] == pytest.approx(chosen["test_accuracy"], abs=1e-12)
    assert applied["mean_cost"] == pytest.approx(chosen["test_mean_cost"], rel=1e-12)
    np.testing.assert_allclose(applied["exit_shares"], policy.report["exit_shares"], atol=1e-12)
    assert policy.chosen_on["mean_cost"] <= 0.5 * test.costs[-1] * (1 + 1e-9)


def test_search_policy_out_without_budget_is_the_val_front_knee(files, tmp_path, capsys):
    val_path, test_path = files
    policy_path = tmp_path / "policy.json"
    assert main(["exits", "search", "--fit-on", str(val_path), "--evaluate-on", str(test_path), "--trials", "60",
                 "--policy-out", str(policy_path)]) == 0
    assert "policy file written" in capsys.readouterr().out
    policy = PolicyFile.load(policy_path)
    assert policy.budget is None and "knee" in policy.chosen_on["rule"]
    pareto = np.array(json.loads(json.dumps(_search_json(val_path, test_path, capsys)["pareto"])))
    cost_share, acc = pareto[:, 0] / policy.costs[-1], pareto[:, 1]
    row = np.flatnonzero((pareto[:, 1] == policy.chosen_on["accuracy"]) & (pareto[:, 0] == policy.chosen_on["mean_cost"]))
    assert row.size == 1 and knee_index(cost_share, acc) == row[0]
    assert 0 < row[0] < len(pareto) - 1  # a real knee, not an end of the front


def _search_json(val_path, test_path, capsys) -> dict:
    assert main(["exits", "search", "--fit-on", str(val_path), "--evaluate-on", str(test_path), "--trials", "60",
                 "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("extra, fragment", [
    (["--budget", "50"], "--budget: expected a share of the last exit's cost in (0, 1]"),
    (["--budget", "0"], "--budget: expected a share"),
])
def test_search_policy_out_bad_budget_is_one_line_and_writes_nothing(files, tmp_path, capsys, extra, fragment):
    val_path, test_path = files
    policy_path = tmp_path / "policy.json"
    code = main(["exits", "search", "--fit-on", str(val_path), "--evaluate-on", str(test_path), "--trials", "10",
                 "--policy-out", str(policy_path), *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and fragment in err and err.count("\n") == 0, err
    assert not policy_path.exists()
    assert main(["exits", "search", "--fit-on", str(val_path), "--evaluate-on", str(test_path), "--budget",
                 "0.5"]) == 2
    assert "only with --policy-out" in capsys.readouterr().err


def test_knee_by_hand():
    # front (0.1, 0.5) (0.3, 0.85) (0.6, 0.9) (1.0, 0.95): normalised heights 0, 0.6, 0.33, 0 -> the second point
    cost = np.array([1.0, 0.6, 0.1, 0.3, 0.7])
    acc = np.array([0.95, 0.9, 0.5, 0.85, 0.6])  # the last point is dominated
    assert knee_index(cost, acc) == 3
    assert knee_index(np.array([0.2, 1.0]), np.array([0.7, 0.9])) == 1  # two points: the more accurate


def test_the_policy_file_loads_no_torch(tmp_path):
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from eeopt.core.synthetic import synthetic_exit_outputs\n"
        "from eeopt.core.policy_file import PolicyFile\n"
        "out = synthetic_exit_outputs(3, 200, 5, seed=1)\n"
        "p = PolicyFile('margin', (0.5, 0.6), tuple(out.costs), 'flops', 0.5)\n"
        f"p.save({str(tmp_path / 'p.json')!r})\n"
        f"PolicyFile.load({str(tmp_path / 'p.json')!r}).decide(out)\n"
        "print(sorted(m for m in ('torch', 'ray', 'mlflow') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]", done.stdout
