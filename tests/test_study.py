"""Studies end to end with real Optuna storage, real MLflow store and real Ray (local, 2 CPUs).

One Ray instance serves the module (starting Ray costs ~6 s); each test runs a tiny study on digits.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import optuna
import pytest
import yaml
from optuna.trial import TrialState

from eeopt.cli import main
from eeopt.study import Study

pytestmark = pytest.mark.slow

BASE = {
    "seed": 0,
    "data": {"name": "digits", "train_subset": 600},
    "model": {"backbone": "tinyresnet", "width": 8, "exits": [1, 3]},
    "training": {"epochs": 1, "batch_size": 64, "lr": 0.003},
    "policy": {"trials": 30},
    "search_space": {"training.lr": {"type": "float", "low": 0.001, "high": 0.01, "log": True}},
    "study": {"name": "tiny", "trials": 2, "sampler": "random",
              "resources": {"cpus_per_trial": 1, "max_concurrent": 2}, "max_failures": 3},
}


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def _write(folder, data, name="study.yaml"):
    path = folder / name
    path.write_text(yaml.safe_dump(data))
    return path


def _mlflow_runs(study: Study):
    import mlflow

    client = mlflow.MlflowClient(study.tracking_uri)
    exp = client.get_experiment_by_name(study.experiment_name)
    return client.search_runs([exp.experiment_id], max_results=1000)


def test_study_runs_then_continues(tmp_path, ray_local, capsys):
    # With a certified policy per trial (policy.risk_control): checked against the trial's files below.
    risk_control = {"risk": "performance-gap", "epsilon": 0.1, "delta": 0.1, "calibration_share": 0.5}
    # calibration.compare: the temperature variant's per-exit metrics are in metrics.json, not in the MLflow run.
    path = _write(tmp_path, {**BASE, "policy": {**BASE["policy"], "risk_control": risk_control},
                             "calibration": {"compare": ["none", "temperature"]}})
    study = Study.from_yaml(path)
    summary = study.run(progress=False)
    assert summary.completed == 2 and summary.failed == 0 and summary.running == 0

    storage = optuna.load_study(study_name="tiny", storage=study.storage_url)
    trials = storage.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert all(0.0 < t.values[0] <= 1.0 for t in trials)

    runs = _mlflow_runs(study)
    parents = [r for r in runs if r.data.tags.get("eeopt.role") == "study"]
    children = [r for r in runs if r.data.tags.get("eeopt.role") == "trial"]
    assert len(parents) == 1 and len(children) == 2
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert child.info.status == "FINISHED"
        metrics = child.data.metrics
        for key in ("val/acc_cost_auc", "test/acc_cost_auc", "val/acc_at_50", "test/acc_at_100", "val/mean_cost",
                    "val/exit1/ece", "test/exit2/auroc", "val/mean/eefp", "test/sweep/acc_cost_auc"):
            assert key in metrics, key
        assert "training.lr" in child.data.params and "sampled.training.lr" in child.data.params
        number = int(child.data.tags["optuna.trial_number"])
        optuna_trial = trials[number]
        # either side leads to the other, and the objective is the logged val metric
        assert optuna_trial.user_attrs["mlflow_run_id"] == child.info.run_id
        assert optuna_trial.values[0] == pytest.approx(metrics["val/acc_cost_auc"])
        last = f"test/exit{max(int(k.split('/')[1][4:]) for k in metrics if k.startswith('test/exit'))}/accuracy"
        assert optuna_trial.user_attrs[last] == pytest.approx(metrics[last])  # the headline test numbers
    # Each trial's certified policy: its logged test risk is the risk recomputed from its test.npz and
    # policies/certified.json (the file the study wrote and logged).
    from eeopt.core.outputs import ExitOutputs
    from eeopt.core.policy_file import PolicyFile
    from eeopt.risk_control import exit_losses

    for child in children:
        folder = study.runs_dir / f"trial-{child.data.tags['optuna.trial_number']}"
        policy = PolicyFile.load(folder / "policies" / "certified.json")
        test = ExitOutputs.load(folder / "test.npz")
        _, exits, _ = policy.decide(test)
        calibrator = policy.build_calibrator()  # None: the study calibrates nothing
        losses = exit_losses("performance-gap", calibrator.apply(test) if calibrator else test)
        risk = losses[exits, np.arange(test.num_samples)].mean()
        assert child.data.metrics["test/certified/risk"] == pytest.approx(risk, abs=1e-12)
        assert policy.certification["epsilon"] == 0.1 and "val/certified/mean_cost" in child.data.metrics

    # What reproducing a run needs is on every trial's run and on the study's (issue: reproducible results): the
    # versions, the commit, the CPU and the thread count the trial trained with.
    import torch

    for run in children:
        tags = run.data.tags
        assert tags["env.torch"] == torch.__version__ and tags["env.numpy"] == np.__version__
        assert tags["env.eeopt"] and tags["env.git_commit"] and tags["env.cpu_model"] and tags["env.cpu_simd"]
        assert tags["env.device"] == "cpu" and tags["env.deterministic"] == "true"
        assert int(tags["env.threads"]) >= 1 and tags["env.cpu_capability"]
    assert parents[0].data.tags["env.torch"] == torch.__version__ and parents[0].data.tags["env.cpu_model"]
    client_arts = {a.path for a in __import__("mlflow").MlflowClient(study.tracking_uri).list_artifacts(children[0].info.run_id)}
    assert {"val.npz", "test.npz", "config.yaml", "pareto.json", "plots"} <= client_arts

    # Run again with a larger total: the study continues (2 kept, 1 new), it does not restart.
    summary = Study.from_yaml(path, trials=3).run(progress=False)
    assert summary.completed == 3
    numbers = sorted(t.number for t in optuna.load_study(study_name="tiny", storage=study.storage_url).get_trials())
    assert numbers == [0, 1, 2]
    runs = _mlflow_runs(study)
    assert sum(r.data.tags.get("eeopt.role") == "study" for r in runs) == 2
    assert sum(r.data.tags.get("eeopt.role") == "trial" for r in runs) == 3

    # Already complete: a rerun adds nothing.
    assert Study.from_yaml(path, trials=3).run(progress=False).completed == 3

    # Export lists every trial with params, metrics and the MLflow run id.
    assert main(["study", "export", str(path), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 3 and all(r["mlflow_run_id"] and "test/acc_at_50" in r for r in rows)
    # every val/test metric the trial computed (metrics.json), not only those its MLflow run holds
    stored = json.loads((study.runs_dir / f"trial-{rows[0]['number']}" / "metrics.json").read_text())
    assert "val/calib/temperature/exit1/ece" in stored
    assert {k for k in stored if k.startswith(("val/", "test/"))} <= set(rows[0])
    assert main(["study", "list", "--storage", study.storage_url, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed[0]["name"] == "tiny" and listed[0]["complete"] == 3


def test_failing_trial_is_recorded_and_the_study_goes_on(tmp_path, ray_local):
    """A diverging trial fails, the study goes on. With `study.plots: false` the trials draw no plots."""
    cfg = dict(BASE, study=dict(BASE["study"], name="faulty", trials=1, plots=False))
    cfg["training"] = dict(BASE["training"], optimizer="sgd")
    path = _write(tmp_path, cfg)
    study = Study.from_yaml(path)
    # Queue a diverging trial first, then a sane one: the first fails, the study goes on to finish one.
    optuna_study = study.optuna_study()
    optuna_study.enqueue_trial({"training.lr": 1e12}, skip_if_exists=False)
    summary = study.run(progress=False)
    assert summary.completed == 1 and summary.failed == 1
    trials = optuna.load_study(study_name="faulty", storage=study.storage_url).get_trials()
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 1 and "diverged" in failed[0].user_attrs["eeopt_error"]
    runs = {r.info.run_id: r for r in _mlflow_runs(study)}
    failed_run = runs[failed[0].user_attrs["mlflow_run_id"]]
    assert failed_run.info.status == "FAILED" and "diverged" in failed_run.data.tags["eeopt.error"]
    (done,) = [t for t in trials if t.state == TrialState.COMPLETE]
    import mlflow

    client = mlflow.MlflowClient(study.tracking_uri)
    artifacts = {a.path for a in client.list_artifacts(done.user_attrs["mlflow_run_id"])}
    assert "metrics.json" in artifacts and "plots" not in artifacts, artifacts
    assert (study.runs_dir / f"trial-{done.number}" / "metrics.json").exists()
    assert not (study.runs_dir / f"trial-{done.number}" / "plots").exists()


def test_categorical_search_over_lists(tmp_path, ray_local):
    """`model.exits` searched over lists: the trial completes (every trial failed while the choices reached the
    config as repr strings), and Optuna's params and MLflow's show the readable value."""
    cfg = dict(BASE, study=dict(BASE["study"], name="exits", trials=1, plots=False))
    cfg["search_space"] = {"model.exits": {"type": "categorical", "choices": [[1, 3], [2, 3]]}}
    study = Study.from_yaml(_write(tmp_path, cfg))
    summary = study.run(progress=False)
    assert summary.completed == 1 and summary.failed == 0, summary
    (trial,) = optuna.load_study(study_name="exits", storage=study.storage_url).get_trials()
    assert trial.params["model.exits"] in ("[1, 3]", "[2, 3]")
    (child,) = [r for r in _mlflow_runs(study) if r.data.tags.get("eeopt.role") == "trial"]
    assert child.data.params["sampled.model.exits"] == child.data.params["model.exits"] == trial.params["model.exits"]


@pytest.mark.slow
def test_resources_no_node_has_are_refused_before_the_optuna_study_exists(tmp_path, ray_local, capsys):
    """A trial asking for more CPUs than any node of the (2-CPU) Ray has: one line, exit 2, and no Optuna study,
    MLflow store or runs folder written (Ray is checked before the study is created)."""
    path = _write(tmp_path, {**BASE, "study": {**BASE["study"], "resources": {"cpus_per_trial": 4}}})
    assert main(["study", "run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "error: study.resources.cpus_per_trial: a trial asks for 4 CPUs, but no node of" in err, err
    assert err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.yaml"]


def test_status_of_a_study_never_run_writes_nothing(tmp_path, capsys):
    path = _write(tmp_path, BASE)
    assert main(["study", "status", str(path)]) == 2
    assert "no study named 'tiny'" in capsys.readouterr().err
    assert main(["study", "export", str(path)]) == 2
    assert not (tmp_path / "eeopt.db").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"search_space": {"training.nope": {"type": "float", "low": 0, "high": 1}}}, "search_space.training.nope"),
        ({"search_space": {"training.lr": {"type": "float", "low": 1, "high": 0.1}}}, "empty range"),
        ({"search_space": {"training.head": {"type": "categorical", "choices": ["linear"]}}}, "no such config field"),
        ({"data": {"name": "mnist-typo"}}, "data.name: unknown dataset 'mnist-typo'"),
        ({"model": {"backbone": "resnet9000"}}, "model.backbone: unknown backbone 'resnet9000'"),
        ({"search_space": {"model.backbone": {"type": "categorical", "choices": ["tinyresnet", "vgg"]}}},
         "search_space.model.backbone: model.backbone: unknown backbone 'vgg'"),
        ({"calibration": {"method": "platt"}}, "calibration.method: unknown calibrator 'platt'"),
        ({"study": {"name": "x", "objectives": {"val/no_such_metric": "maximize"}}},
         "study.objectives: unknown metric 'val/no_such_metric'"),
        ({"study": {"name": "x", "objective": "no_such_pkg.mod:fn"}}, "cannot import 'no_such_pkg.mod:fn'"),
        ({"study": {"name": "x", "resources": {"max_concurrent": 0}}}, "study.resources.max_concurrent"),
    ],
)
def test_bad_study_files_fail_before_anything_is_written(tmp_path, capsys, change, expected):
    cfg = {**BASE, **{k: v for k, v in change.items() if k != "search_space"}}
    if "search_space" in change:
        cfg["search_space"] = change["search_space"]
    path = _write(tmp_path, cfg)
    assert main(["study", "run", str(path)]) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1, err
    assert not (tmp_path / "eeopt.db").exists() and not (tmp_path / "mlflow.db").exists()


def test_ctrl_c_requeues_running_trials_and_a_rerun_continues(tmp_path):
    """SIGINT to `eeopt study run`: running trials go back to the queue (never left RUNNING), MLflow marks them
    KILLED, and the same command continues the study (the requeued trials first, resuming their checkpoints).

    The objective is a module in the folder the command runs in: the workers of the Ray it starts import it too."""
    import os
    import signal
    import time

    epochs = 20
    (tmp_path / "folder_objective.py").write_text(
        "def auc(result):\n    return result.metrics['val/acc_cost_auc']\n")
    cfg = dict(BASE, study=dict(BASE["study"], name="interrupted", trials=2, plots=False,
                                objective="folder_objective:auc", objectives={"val/auc": "maximize"}))
    cfg["training"] = dict(BASE["training"], epochs=epochs)
    path = _write(tmp_path, cfg)
    log = tmp_path / "run.log"
    cmd = [sys.executable, "-m", "eeopt.cli", "study", "run", str(path)]
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env={**env, "PYTHONUNBUFFERED": "1"},
                                cwd=tmp_path)
        deadline = time.monotonic() + 240
        while "epoch 2:" not in log.read_text() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert proc.poll() is None, log.read_text()[-2000:]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 130, log.read_text()[-2000:]

    study = Study.from_yaml(path)
    trials = optuna.load_study(study_name="interrupted", storage=study.storage_url).get_trials()
    states = [t.state for t in trials]
    assert TrialState.RUNNING not in states and TrialState.WAITING in states, states
    killed = [r for r in _mlflow_runs(study) if r.data.tags.get("eeopt.role") == "trial"]
    assert killed and all(r.info.status == "KILLED" for r in killed)
    requeued = sorted(t.number for t in trials if t.state == TrialState.WAITING)

    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    trials = optuna.load_study(study_name="interrupted", storage=study.storage_url).get_trials()
    assert [t.state for t in trials].count(TrialState.COMPLETE) == 2
    assert {t.number for t in trials if t.state == TrialState.COMPLETE} >= set(requeued)
    assert all(f"trial {n} resumed" in done.stderr for n in requeued), done.stderr[-2000:]
    # A resumed run continued the training: its first logged epoch comes after the interrupted run's last. (With
    # two trials at once, the other one may have been stopped before its first epoch: it starts over, at epoch 1.)
    import mlflow

    client = mlflow.MlflowClient(study.tracking_uri)

    def logged_epochs(run_id: str) -> list[int]:
        return [m.step for m in client.get_metric_history(run_id, "train/train_loss")]

    for trial in (t for t in trials if t.state == TrialState.COMPLETE):  # the folder's objective, in the workers
        assert trial.values == [client.get_run(trial.user_attrs["mlflow_run_id"]).data.metrics["val/acc_cost_auc"]]

    checked = 0
    for number in requeued:
        old_steps = logged_epochs(next(r for r in killed if r.data.tags["optuna.trial_number"] == str(number)).info.run_id)
        steps = logged_epochs(next(t for t in trials if t.number == number).user_attrs["mlflow_run_id"])
        assert steps and max(steps) == epochs, (number, steps)
        assert min(steps) == (max(old_steps) + 1 if old_steps else 1), (number, old_steps, steps)
        checked += bool(old_steps)
    assert checked >= 1  # the trial whose epoch 2 was awaited had checkpoints to resume from


def test_asha_prunes_a_trial_that_learns_nothing(tmp_path, ray_local):
    """Trials run one at a time; the first learns, the next ones (lr 1e-7) fall below ASHA's cutoff at the first
    rung and are stopped: Optuna records them PRUNED, MLflow closes their runs."""
    cfg = dict(BASE, study=dict(BASE["study"], name="pruned", trials=3, pruner="asha", sampler="random",
                                plots=False,
                                resources={"cpus_per_trial": 1, "max_concurrent": 1}))
    cfg["training"] = dict(BASE["training"], epochs=4)
    path = _write(tmp_path, cfg)
    study = Study.from_yaml(path)
    optuna_study = study.optuna_study()
    for lr in (0.005, 1e-7, 1e-7):
        optuna_study.enqueue_trial({"training.lr": lr})
    summary = study.run(progress=False)
    assert summary.completed + summary.pruned == 3 and summary.pruned >= 1, summary
    trials = optuna.load_study(study_name="pruned", storage=study.storage_url).get_trials()
    assert trials[0].state == TrialState.COMPLETE
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert all(t.params["training.lr"] == 1e-7 for t in pruned)
    runs = {r.info.run_id: r for r in _mlflow_runs(study)}
    assert all(runs[t.user_attrs["mlflow_run_id"]].data.tags["eeopt.state"] == "PRUNED" for t in pruned)


def test_a_seeded_study_gives_bit_identical_exit_outputs_whatever_the_concurrency(tmp_path, ray_local):
    """The same seeded two-trial study, once one trial at a time and once two at once (fresh stores each), gives
    the same sampled values and bit-identical val.npz / test.npz for each trial: nothing a trial computes depends
    on what runs beside it (each trial has its own thread count, seeds and data order)."""
    outputs = {}
    for concurrent in (1, 2):
        folder = tmp_path / f"c{concurrent}"
        folder.mkdir()
        data = {**BASE, "data": {"name": "digits", "train_subset": 300}, "policy": {"trials": 10},
                "study": {**BASE["study"], "name": "repro", "plots": False,
                          "resources": {"cpus_per_trial": 1, "max_concurrent": concurrent}}}
        study = Study.from_yaml(_write(folder, data))
        summary = study.run(progress=False)
        assert summary.completed == 2 and summary.failed == 0
        trials = optuna.load_study(study_name="repro", storage=study.storage_url).get_trials()
        outputs[concurrent] = {
            t.number: (t.params, *(np.load(study.runs_dir / f"trial-{t.number}" / f"{s}.npz") for s in ("val", "test")))
            for t in trials}
    assert outputs[1].keys() == outputs[2].keys() == {0, 1}
    for number, (params, *files) in outputs[1].items():
        params2, *files2 = outputs[2][number]
        assert params == params2, number  # the seeded sampler suggests the same values
        for one, two in zip(files, files2):
            assert one.files == two.files
            for key in one.files:
                a, b = one[key], two[key]
                assert a.dtype == b.dtype and a.shape == b.shape, (number, key)
                if a.dtype.kind == "f":
                    assert a.tobytes() == b.tobytes(), (f"trial {number} {key}: max difference "
                                                        f"{np.nanmax(np.abs(a - b)) if a.size else 0}")
                else:
                    assert np.array_equal(a, b), (number, key)
