"""`eeopt exits certify` end to end on files the tests write, through the real entry point."""

import json

import numpy as np
import pytest

from eeopt.cli import main
from eeopt.names import parse_key
from eeopt.core.outputs import ExitOutputs
from eeopt.core.policy_file import PolicyFile
from eeopt.risk_control import exit_losses
from eeopt.core.synthetic import synthetic_exit_outputs


@pytest.fixture
def files(tmp_path):
    val = synthetic_exit_outputs(4, 1500, 10, seed=1)
    test = synthetic_exit_outputs(4, 1200, 10, seed=2)
    return val.save(tmp_path / "val.npz"), test.save(tmp_path / "test.npz")


def test_certify_json_numbers_are_the_policy_files(files, tmp_path, capsys):
    val_path, test_path = files
    policy_path = tmp_path / "certified.json"
    argv = ["exits", "certify", "--fit-on", str(val_path), "--evaluate-on", str(test_path), "--risk",
            "performance-gap", "--epsilon", "0.03", "--delta", "0.1", "--method", "ucb-wsr", "--policy-out",
            str(policy_path), "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["certified"] and out["bound"] <= 0.03 and out["n"] == 1500
    for key in (*out["metrics"], *out["fit_metrics"]):
        assert parse_key(key).method in ("certified", "uncontrolled")
    # the realised test risk, recomputed from test.npz and the written policy file
    test = ExitOutputs.load(test_path)
    policy = PolicyFile.load(policy_path)
    _, exits, _ = policy.decide(test)
    risk = exit_losses("performance-gap", test)[exits, np.arange(test.num_samples)].mean()
    assert out["metrics"]["certified/risk"] == pytest.approx(risk, abs=1e-15)
    assert out["metrics"]["certified/mean_cost"] == pytest.approx(policy.evaluate(test)["mean_cost"])
    assert out["metrics"]["certified/speedup"] == pytest.approx(test.costs[-1] / out["metrics"]["certified/mean_cost"])
    assert policy.certification["method"] == "ucb-wsr" and policy.certification["calibration_source"] == str(val_path)
    assert policy.certification["p_value_or_bound"] == out["bound"]


def test_certify_table_fits_80_columns(files, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    val_path, test_path = files
    assert main(["exits", "certify", "--fit-on", str(val_path), "--evaluate-on", str(test_path), "--epsilon", "0.02",
                 "--per-exit", "--trials", "60"]) == 0
    text = capsys.readouterr().out
    flat = " ".join(text.split())
    assert "certified:" in flat and "per-exit thresholds" in flat and "val-optimal" in flat
    assert max(len(line) for line in text.splitlines()) <= 80


def test_impossible_request_prints_no_policy_certified_and_exits_0(files, tmp_path, capsys):
    val_path, test_path = files
    small = ExitOutputs.load(val_path).subset(np.arange(100)).save(tmp_path / "small.npz")
    policy_path = tmp_path / "p.json"
    assert main(["exits", "certify", "--fit-on", str(small), "--evaluate-on", str(test_path), "--epsilon", "0",
                 "--delta", "0.01", "--policy-out", str(policy_path)]) == 0
    assert "no policy certified" in capsys.readouterr().out
    policy = PolicyFile.load(policy_path)
    assert all(np.isinf(policy.thresholds)) and policy.certification["n"] == 100
    assert policy.evaluate(ExitOutputs.load(test_path))["exit_shares"][-1] == 1.0


@pytest.mark.parametrize("extra, message", [
    (["--epsilon", "1"], "--epsilon: expected a risk level in [0, 1), got 1.0"),
    (["--epsilon", "0.02", "--delta", "0"], "--delta: expected a probability in (0, 1), got 0.0"),
    (["--epsilon", "0.02", "--risk", "gap"], "--risk: unknown risk 'gap'"),
    (["--epsilon", "0.02", "--method", "bonferroni"], "--method: unknown method 'bonferroni'"),
    (["--epsilon", "0.02", "--split-share", "0"], "--split-share: expected a share in (0, 1)"),
    (["--epsilon", "0.02", "--policy-out", "VAL"], "is the --fit-on file"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_written(files, tmp_path, capsys, extra, message):
    val_path, test_path = files
    before = val_path.read_bytes()
    extra = [str(val_path) if e == "VAL" else e for e in extra]
    assert main(["exits", "certify", "--fit-on", str(val_path), "--evaluate-on", str(test_path), *extra,
                 "--policy-out" if "--policy-out" not in extra else "--json",
                 *([str(tmp_path / "p.json")] if "--policy-out" not in extra else [])]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert val_path.read_bytes() == before and not (tmp_path / "p.json").exists()


def test_missing_file_is_one_line(files, tmp_path, capsys):
    _, test_path = files
    assert main(["exits", "certify", "--fit-on", str(tmp_path / "nope.npz"), "--evaluate-on", str(test_path),
                 "--epsilon", "0.02"]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'nope.npz'}: no such file"

