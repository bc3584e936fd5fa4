"""`eeopt train` on the quickstart config, read back by `eeopt exits evaluate`."""

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from eeopt.cli import main
from eeopt.outputs import ExitOutputs

QUICKSTART = Path(__file__).resolve().parents[1] / "studies" / "quickstart.yaml"


def test_train_then_evaluate(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["train", str(QUICKSTART), "--output-dir", str(out), "--set", "training.epochs=4", "--quiet"]) == 0
    for name in ("model.pt", "val.npz", "test.npz", "config.yaml", "history.json"):
        assert (out / name).is_file(), name
    capsys.readouterr()
    assert main(["exits", "evaluate", str(out / "test.npz"), "--fit-on", str(out / "val.npz"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    test = ExitOutputs.load(out / "test.npz")
    assert np.all(np.diff(test.costs) > 0)  # later exits cost more
    acc = [row["accuracy"] for row in report["exits"]]
    assert spearmanr(np.arange(len(acc)), acc).statistic > 0.5 and acc[-1] > acc[0]  # and, on average, do better
    assert test.scores is not None  # the quickstart model has failure heads
    assert main(["exits", "evaluate", str(out / "test.npz"), "--fit-on", str(out / "val.npz"),
                 "--score", "learned", "--json"]) == 0


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--set", "training.epochs=-1"], "training.epochs: Input should be greater than or equal to 0"),
        (["--set", "model.backbone=resnet9"], "model.backbone: unknown backbone 'resnet9'"),
        (["--set", "training.nope=1"], "training.nope: unknown field"),
        (["--set", "data.name=mnist"], "data.name: unknown dataset 'mnist'"),
    ],
)
def test_bad_train_config_exit_2_and_writes_nothing(tmp_path, capsys, args, expected):
    out = tmp_path / "out"
    assert main(["train", str(QUICKSTART), "--output-dir", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1, err
    assert not out.exists()
