"""What the driver and a Ray worker say to each other about one trial, as typed records.

The searcher (driver) hands the worker a `TrialSpec` through the Tune trial config; the worker reports each epoch as
an `EpochReport`, where it stands within an epoch (every few seconds) as a `ProgressReport`, and the outcome as a
`TrialReport` through `tune.report`. Each record turns into the dict Tune
carries, and back, here and nowhere else. Tune flattens nested result dicts, so a record travels as one JSON string
under one key; only the numbers Tune's schedulers watch (`epoch`, `EPOCH_METRIC`) stay top-level. A `ProgressReport` carries no
`epoch`, so the schedulers (which count time in epochs) pass over it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from typing import Any, Literal

#: What early stopping watches: the last exit's validation accuracy after each epoch (a top-level Tune metric).
EPOCH_METRIC = "val_acc_last"
#: Test numbers the worker reports beside the objectives; they are kept on the Optuna trial as user attributes
#: for summaries and the dashboard. The last exit's test accuracy (`test/exit{K}/accuracy`) is added to them.
HEADLINE_METRICS = ("test/acc_cost_auc", "test/acc_at_50", "test/acc_at_100", "test/mean/ece", "test/mean/auroc",
                    "test/mean/eefp")
#: Seconds between two `ProgressReport`s of one trial (each costs a round trip to the driver).
PROGRESS_EVERY = 5.0

_SPEC_KEY = "eeopt_trial"
_REPORT_KEY = "eeopt_report"
_PROGRESS_KEY = "eeopt_progress"


@dataclasses.dataclass(frozen=True)
class TrialSpec:
    """Everything a worker needs to run one trial, from the searcher on the driver.

    Attributes:
        train_config: the resolved `TrainConfig` as JSON-ready data (`model_dump(mode="json")`).
        sampled: the sampled parameters by dotted config path, decoded (`model.exits: [2, 4]`, not its JSON text).
        objective_ref: a custom objective as 'package.module:function', or None for the named metrics.
        output_dir: where the trial writes: a folder, or a URI its folder is synced to (`cluster.TrialFolder`).

    The spec is written into Ray Tune's files (params.json, params.pkl): it carries no secret. The tracking URI,
    which may hold a password, reaches the worker through `tune.with_parameters` (Ray's object store) instead.
    """

    trial_number: int
    train_config: dict[str, Any]
    sampled: dict[str, Any]
    output_dir: str
    mlflow_run_id: str
    objectives: tuple[str, ...]
    objective_ref: str | None

    def to_config(self) -> dict[str, str]:
        """The Tune trial config that carries this spec (what `Searcher.suggest` returns)."""
        return {_SPEC_KEY: json.dumps(dataclasses.asdict(self))}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> TrialSpec:
        data = json.loads(config[_SPEC_KEY])
        return cls(**{**data, "objectives": tuple(data["objectives"])})


@dataclasses.dataclass(frozen=True)
class EpochReport:
    """One finished epoch of a running trial (what schedulers such as ASHA decide on)."""

    epoch: int
    val_acc_last: float

    def to_result(self) -> dict[str, float]:
        return {"epoch": self.epoch, EPOCH_METRIC: self.val_acc_last}

    @classmethod
    def from_result(cls, result: Mapping[str, Any]) -> EpochReport | None:
        """The epoch report in a Tune result; None for a trial's final result, a progress report, or a result
        without an epoch."""
        if _REPORT_KEY in result or _PROGRESS_KEY in result or "epoch" not in result:
            return None
        return cls(int(result["epoch"]), float(result.get(EPOCH_METRIC, math.nan)))


@dataclasses.dataclass(frozen=True)
class ProgressReport:
    """Where a running trial stands: epoch `epoch` of `epochs` (from 1), `batch` of `batches` optimizer steps done in
    it, or `phase` "evaluate" once training is over (calibrators, metrics, threshold search), or "store" while it
    waits for a store that does not answer (`waited` seconds so far, `store` says which). `val_acc_last` is the
    last finished epoch's `EPOCH_METRIC` (NaN before the first); `epoch` is 0 while a resumed trial has not yet
    finished an epoch here (the checkpoint's epoch is not known before)."""

    epoch: int
    epochs: int
    batch: int
    batches: int
    phase: Literal["train", "evaluate", "store"] = "train"
    val_acc_last: float = math.nan
    store: str = ""
    waited: float = 0.0

    @property
    def fraction(self) -> float:
        """Share of the training done, in [0, 1] (1 while evaluating; 0 when unknown)."""
        if self.phase == "evaluate":
            return 1.0
        if self.epoch < 1 or self.epochs < 1:
            return 0.0
        within = self.batch / self.batches if self.batches else 0.0
        return min(1.0, (self.epoch - 1 + within) / self.epochs)

    def to_result(self) -> dict[str, Any]:
        """A Tune result without `epoch` (schedulers skip it), with `EPOCH_METRIC` (Tune wants it in every result)."""
        return {EPOCH_METRIC: self.val_acc_last, _PROGRESS_KEY: json.dumps(dataclasses.asdict(self))}

    @classmethod
    def from_result(cls, result: Mapping[str, Any] | None) -> ProgressReport | None:
        """The progress report in a Tune result; None for any other result."""
        if not result or _PROGRESS_KEY not in result:
            return None
        return cls(**json.loads(result[_PROGRESS_KEY]))


@dataclasses.dataclass(frozen=True)
class TrialReport:
    """How a trial ended on its worker: COMPLETE with objective values and headline test metrics, or FAIL with
    the error. `val_acc_last` is the last epoch's value of `EPOCH_METRIC` (NaN before the first epoch)."""

    status: Literal["COMPLETE", "FAIL"]
    values: tuple[float, ...] = ()
    headline: dict[str, float | None] = dataclasses.field(default_factory=dict)
    error: str | None = None
    val_acc_last: float = math.nan
    plots_sent: bool = False  # its plots were handed to the study's plot writer (which the driver waits for)

    @classmethod
    def complete(cls, values, headline: Mapping[str, float], val_acc_last: float,
                 plots_sent: bool = False) -> TrialReport:
        """A finished trial; NaN headline metrics (undefined on this trial) become None."""
        clean = {k: None if v is None or math.isnan(v) else float(v) for k, v in headline.items()}
        return cls("COMPLETE", tuple(float(v) for v in values), clean, None, val_acc_last, plots_sent)

    @classmethod
    def fail(cls, error: str, val_acc_last: float = math.nan) -> TrialReport:
        return cls("FAIL", error=error, val_acc_last=val_acc_last)

    def to_result(self) -> dict[str, Any]:
        """The final Tune result: the record as JSON, plus `EPOCH_METRIC` (Tune expects a scheduler's metric in
        every result)."""
        return {EPOCH_METRIC: self.val_acc_last, _REPORT_KEY: json.dumps(dataclasses.asdict(self))}

    @classmethod
    def from_result(cls, result: Mapping[str, Any] | None) -> TrialReport | None:
        """The report in a Tune result; None for an epoch result, or when the trial never reported its end."""
        if not result or _REPORT_KEY not in result:
            return None
        data = json.loads(result[_REPORT_KEY])
        return cls(**{**data, "values": tuple(data["values"])})
