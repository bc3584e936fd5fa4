"""`eeopt train` on the quickstart config, read back by `eeopt exits evaluate`."""

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from eeopt.cli import main
from eeopt.core.outputs import ExitOutputs

QUICKSTART = Path(__file__).resolve().parents[1] / "studies" / "quickstart.yaml"


@pytest.mark.slow  # trains 4 epochs and renders the trial plots
def test_train_then_evaluate(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["train", str(QUICKSTART), "--output-dir", str(out), "--set", "training.epochs=4", "--quiet"]) == 0
    for name in ("model.pt", "val.npz", "test.npz", "config.yaml", "history.json", "plots/accuracy_vs_cost.png",
                 "plots/reliability.png", "plots/risk_coverage.png", "plots/per_exit_metrics.png", "metrics.json",
                 "metrics_table.csv", "pareto.json"):
        assert (out / name).is_file(), name  # what a study trial writes: the same pipeline (`eeopt.pipeline`)
    env = json.loads((out / "environment.json").read_text())  # what reproducing the run needs
    import torch

    assert env["env.torch"] == torch.__version__ and env["env.device"] == "cpu" and env["env.deterministic"] == "true"
    assert int(env["env.threads"]) == torch.get_num_threads() and env["env.cpu_model"] and env["env.git_commit"]
    capsys.readouterr()
    assert main(["exits", "evaluate", str(out / "test.npz"), "--fit-on", str(out / "val.npz"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    test = ExitOutputs.load(out / "test.npz")
    assert np.all(np.diff(test.costs) > 0)  # later exits cost more
    acc = [report["metrics"][f"exit{k}/accuracy"] for k in range(1, test.num_exits + 1)]
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


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--set", "model.exits=[2, 99]"],
         "model.exits: block 99 does not exist (tinyresnet has 5 blocks; use numbers 1..5)"),
        (["--set", "data.name=fashion-mnist", "--set", "data.root=MISSING"],
         "data.root: MISSING has no fashion-mnist files (train-images-idx3-ubyte[.gz] not found in MISSING"),
        (["--set", "data.name=imagefolder", "--set", "data.root=MISSING"],
         "data.root: MISSING has no imagefolder files (MISSING/train: not found"),
    ],
)
def test_missing_data_and_exits_beyond_the_backbone_exit_2_before_training(tmp_path, capsys, args, expected):
    missing = str(tmp_path / "missing")
    args = [arg.replace("MISSING", missing) for arg in args]
    assert main(["train", str(QUICKSTART), "--output-dir", str(tmp_path / "out"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {QUICKSTART}: " + expected.replace("MISSING", missing)), err
    assert err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []


def test_an_output_dir_that_is_a_file_exits_2_at_once(tmp_path, capsys):
    file = tmp_path / "out"
    file.write_text("not a folder")
    assert main(["train", str(QUICKSTART), "-o", str(file), "--quiet"]) == 2
    assert capsys.readouterr().err == f"error: --output-dir {file}: exists and is not a directory\n"
    assert file.read_text() == "not a folder" and [p.name for p in tmp_path.iterdir()] == ["out"]
