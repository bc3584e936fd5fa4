"""The Optuna side of a study: the study in its storage, and the life of its trials (ask, complete, fail, prune,
requeue, heartbeat, dead-trial failing), behind one typed interface.

The rest of eeopt never touches Optuna trial objects or storage ids: it holds `TrialTicket`s. Only public Optuna
APIs are used (the `RDBStorage` is the one this module built, trial ids come from
`get_trial_id_from_study_id_trial_number`), except in `_stale_trial_ids`, whose docstring says why.

States: a trial is RUNNING from `ask` to `complete` / `fail` / `prune`; `requeue` puts it back to WAITING, and the
next `ask` (of any worker on the storage) takes it first with the same number and params. "Occupied" trials
(COMPLETE, PRUNED, RUNNING) count against the study's total, so reruns and workers share it.

Every storage call is retried while the database does not answer (`eeopt.stores.retrying`), so a database restart
delays a study instead of ending it. A trial that another worker already finished (it failed it as dead while
this process was silent) is reported, not raised: `complete`, `fail` and `prune` return False.

What Optuna samples is here too: the search space of a study file as Optuna sees it and the way back from sampled
parameters to a config (`SearchSpace`; Optuna's categorical choices must be None, bool, int, float or str, so other
choices such as `model.exits: [[2, 4], [1, 3, 5]]` are given to Optuna as their JSON text, readable in Optuna's
params and dashboard, and decoded before the train config is built), and the sampler, seeded per trial
(`create_sampler`: a sampler seeded once per process replays its draws in every process, so parallel workers and
reruns would suggest the same parameters; trial `n` draws from a generator seeded with `(study.seed, n)`).

At about 600 lines this is over the ~400 the project aims for: it is one concept, the study as Optuna holds it, and
every method leans on the same retry, ticket and state rules; split, each part would need the others'.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import re
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from optuna.samplers import BaseSampler, NSGAIISampler, RandomSampler, TPESampler

from eeopt.config import CategoricalDistribution, FloatDistribution, StudyConfig, TrainConfig
from eeopt.errors import ConfigError, StorageError, StudyError
from eeopt.stores import RETRY_FOR, databases, mask_secrets, mask_url, retrying, translate_errors
from eeopt.stores.locks import claim_lock, creation_lock
from eeopt.stores.urls import is_sqlite


#: Optuna trial user attributes eeopt writes.
ATTR_MLFLOW_RUN = "mlflow_run_id"
ATTR_MLFLOW_URL = "mlflow_run_url"
ATTR_ERROR = "eeopt_error"
ATTR_RAY_TRIAL = "ray_trial_id"
#: Optuna study user attribute: the objective names, in order (Optuna itself keeps only their directions).
STUDY_ATTR_OBJECTIVES = "objectives"
DEAD_TRIAL_REASON = "its process stopped sending heartbeats (killed?)"
MAX_ERROR_LENGTH = 2000
#: Where a trial's parameters came from: the sampler, the queue (`enqueue_trial`), or an interrupted run of it.
ORIGINS = ("sampled", "queued", "requeued")


@dataclasses.dataclass(frozen=True)
class TrialTicket:
    """A trial this process asked for and has to finish (or requeue).

    Attributes:
        requeued: an interrupted trial taken from the queue: same number, params and output folder as before.
        origin: one of `ORIGINS`: 'sampled' (fresh draws), 'queued' (parameters given) or 'requeued'.
    """

    number: int
    trial_id: int
    params: dict[str, Any]
    requeued: bool
    origin: str = "sampled"


@dataclasses.dataclass(frozen=True)
class DeadTrial:
    """A trial `fail_dead_trials` marked failed, with the MLflow run that still has to be closed."""

    number: int
    mlflow_run_id: str | None


@dataclasses.dataclass(frozen=True)
class TrialCounts:
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    running: int = 0
    waiting: int = 0

    @property
    def finished(self) -> int:
        """Trials that count as done: COMPLETE and PRUNED."""
        return self.complete + self.pruned

    @property
    def occupied(self) -> int:
        """Trials that count against the study's total: finished or running."""
        return self.finished + self.running


@dataclasses.dataclass(frozen=True)
class StoredStudy:
    """One study of a storage as `list_studies` shows it."""

    name: str
    directions: list[str]
    objectives: list[str] | None
    counts: TrialCounts
    trials: int
    started: datetime | None


class TrialStore:
    """An Optuna study in persistent storage, and the bookkeeping of its trials.

    Args:
        url: the storage URL (any SQLAlchemy URL; passwords are masked in every message).
        directions: 'maximize' / 'minimize' per objective; must match a study that exists (not checked when empty).
        objectives: the objective names, kept as a study user attribute; must match a study that exists.
        create: create the storage and the study when missing. With False nothing is ever created: a storage
            without Optuna's tables or without the study raises `StudyError`.
    Raises:
        StorageError: the storage cannot be reached or used. StudyError: `create=False` and no such study.
        ConfigError: the study exists with other objectives or directions.
    """

    def __init__(self, url: str, name: str, *, directions: Sequence[str] = (), objectives: Sequence[str] = (),
                 sampler=None, create: bool = True, grace: float = databases.HEARTBEAT_GRACE,
                 retry_for: float = RETRY_FOR):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.url = url
        self.name = name
        self.grace = grace
        self.retry_for = retry_for
        if not create and not databases.has_optuna_schema(url):
            raise StudyError(f"no study named {name!r}: no Optuna storage at {mask_url(url)} "
                             "(run the study first)")
        self.storage, self.study = self._open(sampler, list(directions), create)
        self._study_id = self._do(lambda: self.storage.get_study_id_from_name(name))
        if directions:
            self._check_objectives(list(directions), list(objectives), record=create)

    @property
    def is_sqlite(self) -> bool:
        return is_sqlite(self.url)

    # -------------------------------------------------------------------------------------------- opening
    def _open(self, sampler, directions: list[str], create: bool):
        """(RDBStorage, optuna.Study), retrying the race of workers that start together on a new storage."""
        import optuna

        for attempt in range(5):
            try:
                # Workers starting together on a new database server create its tables once, under the creation
                # lock (SQLite serialises them itself; the race on the study's row is retried below).
                with (creation_lock(self.url, what="Optuna storage", retry_for=self.retry_for)
                      if create and not is_sqlite(self.url) else contextlib.nullcontext()):
                    storage = retrying(lambda: databases.open_storage(self.url, create=create, grace=self.grace),
                                       self.url, retry_for=self.retry_for)
                with self._errors():
                    if not create:
                        return storage, optuna.load_study(study_name=self.name, storage=storage, sampler=sampler)
                    return storage, optuna.create_study(study_name=self.name, storage=storage, sampler=sampler,
                                                        directions=directions, load_if_exists=True)
            except KeyError:
                raise StudyError(f"no study named {self.name!r} in {mask_url(self.url)} "
                                 "(run it first)") from None
            except StorageError as exc:
                # Both create the schema or the study ("duplicate key"); the loser finds it a moment later.
                if not re.search(r"duplicate key|already exists|UNIQUE constraint", str(exc)) or attempt == 4:
                    raise
                time.sleep(0.5 + attempt)
        raise AssertionError("unreachable")

    def _check_objectives(self, directions: list[str], objectives: list[str], record: bool) -> None:
        """The study's directions and objective names are this file's; `record` keeps the names on a study that
        has none yet."""
        where = f"study {self.name!r} in {mask_url(self.url)}"
        existing = [d.name.lower() for d in self.study.directions]
        if existing != directions:
            raise ConfigError(f"study.objectives: {where} was created with directions {existing}, this file asks "
                              f"for {directions}; use another study.name")
        stored = self.study.user_attrs.get(STUDY_ATTR_OBJECTIVES)
        if stored is None and record:
            with self._errors():
                self.study.set_user_attr(STUDY_ATTR_OBJECTIVES, objectives)
        elif stored is not None and stored != objectives:
            raise ConfigError(f"study.objectives: {where} optimises {stored}, this file asks for {objectives}; "
                              "use another study.name")
        if record and objectives and self.study.metric_names != objectives:
            with self._errors(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # experimental in Optuna; optuna-dashboard shows these names
                self.study.set_metric_names(objectives)

    def _errors(self):
        return translate_errors(self.url)

    def _do(self, call):
        """`call()`, retried while the database does not answer (`eeopt.stores.retrying`)."""
        return retrying(call, self.url, retry_for=self.retry_for)

    # -------------------------------------------------------------------------------------------- trials
    def ask(self, distributions: Mapping[str, Any]) -> TrialTicket:
        """Start a trial: a queued or requeued (WAITING) one first, else a new one the sampler fills; its heartbeat
        starts.

        A requeued trial still carries the heartbeat of its interrupted run: another worker may fail it as dead in
        the moment between taking it and the fresh heartbeat; then the next trial is asked for instead.
        """
        from optuna.trial import TrialState

        while True:
            trial = self._do(lambda: self._ask_once(distributions))
            trial_id = self._do(lambda: self.storage.get_trial_id_from_study_id_trial_number(
                self._study_id, trial.number))
            self._do(lambda: self.storage.record_heartbeat(trial_id))
            if self._do(lambda: self.storage.get_trial(trial_id)).state == TrialState.RUNNING:
                break
        system = self._do(lambda: self.storage.get_trial_system_attrs(trial_id))
        requeued = ATTR_MLFLOW_RUN in trial.user_attrs
        origin = "requeued" if requeued else "queued" if "fixed_params" in system else "sampled"
        return TrialTicket(trial.number, trial_id, dict(trial.params), requeued, origin)

    def _ask_once(self, distributions: Mapping[str, Any]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "heartbeat is supposed to be used with Study.optimize": we beat it
            return self.study.ask(dict(distributions))

    def claim(self, distributions: Mapping[str, Any], total: int) -> TrialTicket | None:
        """`ask`, unless `total` trials are already occupied; None when there is no slot left.

        The count and the ask hold the study's claim lock (`locks.claim_lock`), so two workers never take the
        last slot together. Where the database has no such lock and another worker took the slot between the
        count and the ask, the trial goes back to the queue (the caller waits while others' trials run, so a slot
        freed later is still taken; see `waiting_on`).
        """
        with claim_lock(self.url, self.storage.engine, self._study_id, retry_for=self.retry_for):
            if self.counts().occupied >= total:
                return None
            ticket = self.ask(distributions)
        if self.occupied(up_to=ticket.number) > total:
            self.requeue(ticket)
            return None
        return ticket

    def set_attrs(self, ticket: TrialTicket, attrs: Mapping[str, Any]) -> bool:
        """Set user attributes of a running trial (None, bool, int, float, str or JSON-able lists and dicts).
        False when the trial is finished already (another worker failed it as dead)."""
        from optuna.exceptions import UpdateFinishedTrialError

        try:
            for key, value in attrs.items():
                self._do(lambda: self.storage.set_trial_user_attr(ticket.trial_id, key, value))
        except UpdateFinishedTrialError:
            return False
        return True

    def report(self, ticket: TrialTicket, step: int, value: float) -> None:
        """The trial's intermediate value at `step` (an epoch; NaN is skipped): what Optuna's pruners and
        optuna-dashboard's intermediate-value plot read."""
        if value != value:
            return
        self._do(lambda: self.storage.set_trial_intermediate_value(ticket.trial_id, step, float(value)))

    def set_note(self, ticket: TrialTicket, markdown: str) -> None:
        """The trial's note in optuna-dashboard (Markdown: links work there, user attributes are plain text);
        nothing where optuna-dashboard is not installed."""
        try:
            from optuna_dashboard import save_note
        except ImportError:
            return
        import optuna

        self._do(lambda: save_note(optuna.Trial(self.study, ticket.trial_id), markdown))

    def complete(self, ticket: TrialTicket, values: Sequence[float], attrs: Mapping[str, Any] | None = None) -> bool:
        """Finish a trial with its objective values, after setting `attrs` (e.g. headline test metrics).
        False when another worker had already finished it (as dead)."""
        from optuna.trial import TrialState

        return self._finish(ticket, TrialState.COMPLETE, list(values), attrs)

    def fail(self, ticket: TrialTicket, error: str | None) -> bool:
        """Mark a trial FAIL; `error` is kept as the `eeopt_error` user attribute (passwords masked)."""
        from optuna.trial import TrialState

        attrs = {ATTR_ERROR: mask_secrets(error)[:MAX_ERROR_LENGTH]} if error else None
        return self._finish(ticket, TrialState.FAIL, None, attrs)

    def prune(self, ticket: TrialTicket) -> bool:
        from optuna.trial import TrialState

        return self._finish(ticket, TrialState.PRUNED, None, None)

    def _finish(self, ticket: TrialTicket, state, values: list[float] | None, attrs) -> bool:
        """Tell Optuna how the trial ended. A retried tell may find its first attempt went through: that counts
        as done; a trial another worker finished first does not (False)."""
        from optuna.exceptions import UpdateFinishedTrialError

        try:
            if self.set_attrs(ticket, attrs or {}):
                self._do(lambda: self.study.tell(ticket.number, values, state=state))
                return True
        except (UpdateFinishedTrialError, ValueError):
            pass
        except StorageError as exc:
            if not isinstance(exc.__cause__, (UpdateFinishedTrialError, ValueError)):
                raise
        return self._do(lambda: self.storage.get_trial(ticket.trial_id)).state == state

    def requeue(self, ticket: TrialTicket) -> None:
        """Put a running trial back in the queue (WAITING): the next `ask` takes it, same number and params.
        Its heartbeat is renewed first, so that whoever takes it soon does not find it stale."""
        from optuna.trial import TrialState

        self._do(lambda: self.storage.record_heartbeat(ticket.trial_id))
        self._do(lambda: self.storage.set_trial_state_values(ticket.trial_id, TrialState.WAITING))

    def heartbeat(self, tickets: Iterable[TrialTicket]) -> None:
        """Tell the storage these trials' process is alive (call well within `grace`)."""
        for ticket in tickets:
            self._do(lambda: self.storage.record_heartbeat(ticket.trial_id))

    def fail_dead_trials(self, exclude: Iterable[int] = ()) -> list[DeadTrial]:
        """Mark failed the RUNNING trials whose heartbeat stopped longer than `grace` seconds ago (their process
        was killed), with `DEAD_TRIAL_REASON` as their error, except the trial ids in `exclude` (the caller's own,
        alive whatever their heartbeat says). Returns them, for their MLflow runs to be closed."""
        skip = set(exclude)
        return self._do(lambda: self._fail_dead_trials(skip))

    def _fail_dead_trials(self, skip: set[int]) -> list[DeadTrial]:
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        dead = []
        for trial_id in set(_stale_trial_ids(self.storage, self._study_id)) - skip:
            trial = self.storage.get_trial(trial_id)
            try:
                # The reason first: a finished trial's attributes can no longer be set.
                self.storage.set_trial_user_attr(trial_id, ATTR_ERROR, DEAD_TRIAL_REASON)
                if not self.storage.set_trial_state_values(trial_id, TrialState.FAIL):
                    continue
            except UpdateFinishedTrialError:  # its process (or another worker) finished it meanwhile
                continue
            dead.append(DeadTrial(trial.number, trial.user_attrs.get(ATTR_MLFLOW_RUN)))
        return dead

    def waiting_on(self, own: Iterable[int]) -> list[int]:
        """Numbers of RUNNING trials other than `own` (this process's): trials of other workers, or of a killed
        driver whose heartbeat is not yet `grace` seconds old. A worker with no slot left waits for them."""
        from optuna.trial import TrialState

        mine = set(own)
        return [t.number for t in self.trials((TrialState.RUNNING,)) if t.number not in mine]

    # -------------------------------------------------------------------------------------------- counts
    def trials(self, states: Sequence[Any] | None = None) -> list:
        """The study's trials (Optuna `FrozenTrial`s, read-only), optionally only those in `states`."""
        return self._do(lambda: self.study.get_trials(deepcopy=False, states=tuple(states) if states else None))

    def counts(self) -> TrialCounts:
        return _count(self.trials())

    def occupied(self, up_to: int | None = None) -> int:
        """Trials that count against the total (COMPLETE, PRUNED, RUNNING), up to trial number `up_to`."""
        from optuna.trial import TrialState

        trials = self.trials((TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
        return sum(1 for t in trials if up_to is None or t.number <= up_to)

    def best_value(self) -> float | None:
        """The best value of the first objective over the completed trials (None before the first)."""
        from optuna.trial import TrialState

        values = [t.values[0] for t in self.trials((TrialState.COMPLETE,)) if t.values]
        if not values:
            return None
        return max(values) if self.study.directions[0].name == "MAXIMIZE" else min(values)

    def best_trial(self):
        """The best COMPLETE trial (an Optuna `FrozenTrial`): by the objective; with several objectives, the
        Pareto-optimal trial best on the first (the rule of the study summary). None before the first."""
        front = self.best_trials()
        if not front:
            return None
        pick = max if self.study.directions[0].name == "MAXIMIZE" else min
        return pick(front, key=lambda t: t.values[0])

    def best_trials(self) -> list:
        """The best trial, or the Pareto front with several objectives (by number); [] before the first."""
        from optuna.trial import TrialState

        if not self.trials((TrialState.COMPLETE,)):
            return []
        if len(self.study.directions) == 1:
            return [self._do(lambda: self.study.best_trial)]
        return sorted(self._do(lambda: self.study.best_trials), key=lambda t: t.number)


def read_studies(url: str) -> list[StoredStudy]:
    """Every study in the storage at `url`, with its trial counts. Creates nothing.

    Raises:
        StorageError: the storage cannot be reached, or holds no Optuna storage ("no Optuna storage at ...").
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = databases.open_storage(url, heartbeat=False, create=False)
    out = []
    with translate_errors(url):
        for s in optuna.get_all_study_summaries(storage, include_best_trial=False):
            trials = storage.get_all_trials(storage.get_study_id_from_name(s.study_name), deepcopy=False)
            out.append(StoredStudy(
                name=s.study_name,
                directions=[d.name.lower() for d in s.directions],
                objectives=s.user_attrs.get(STUDY_ATTR_OBJECTIVES),
                counts=_count(trials),
                trials=len(trials),
                started=s.datetime_start,
            ))
    return out


def _count(trials) -> TrialCounts:
    from optuna.trial import TrialState

    names = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed",
             TrialState.RUNNING: "running", TrialState.WAITING: "waiting"}
    counts = dict.fromkeys(names.values(), 0)
    for t in trials:
        counts[names[t.state]] += 1
    return TrialCounts(**counts)


def _stale_trial_ids(storage, study_id: int) -> list[int]:
    """Ids of the study's RUNNING trials whose heartbeat is older than the storage's grace period.

    Why a private method: Optuna's only public way, `optuna.storages.fail_stale_trials`, fails those trials in one
    go, and a finished trial's user attributes can no longer be set; eeopt needs to write the reason
    (`ATTR_ERROR`) first, so it asks the storage for the ids that `fail_stale_trials` itself uses.
    """
    if storage.get_heartbeat_interval() is None:
        return []
    return storage._get_stale_trial_ids(study_id)


# ----------------------------------------------------------------------------------------------------
# The search space of a study file as Optuna sees it, and back to a config
def _is_primitive(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def encode_choice(value: Any) -> Any:
    """A categorical choice as Optuna stores it: primitives as they are, anything else as JSON text."""
    return value if _is_primitive(value) else json.dumps(value)


class SearchSpace:
    """The `search_space` of a study file: Optuna distributions, decoding of sampled params, resolved configs."""

    def __init__(self, config: StudyConfig):
        self.config = config
        # per dotted path: {JSON text given to Optuna: the choice it stands for}
        self._decode: dict[str, dict[str, Any]] = {}
        for path, dist in config.search_space.items():
            if not isinstance(dist, CategoricalDistribution):
                continue
            encoded = {encode_choice(c): c for c in dist.choices if not _is_primitive(c)}
            clash = [c for c in dist.choices if isinstance(c, str) and c in encoded]
            if clash:
                raise ConfigError(
                    f"search_space.{path}: the choice {clash[0]!r} is also the JSON text of another choice; "
                    "write one of them differently"
                )
            if encoded:
                self._decode[path] = encoded

    def distributions(self) -> dict[str, Any]:
        """Optuna distributions keyed by dotted config path (the one place search-space types become Optuna's)."""
        import optuna.distributions as d

        out: dict[str, Any] = {}
        for path, dist in self.config.search_space.items():
            if isinstance(dist, CategoricalDistribution):
                out[path] = d.CategoricalDistribution([encode_choice(c) for c in dist.choices])
            elif isinstance(dist, FloatDistribution):
                out[path] = d.FloatDistribution(dist.low, dist.high, log=dist.log, step=dist.step)
            else:
                out[path] = d.IntDistribution(dist.low, dist.high, log=dist.log, step=dist.step)
        return out

    def decode(self, params: dict[str, Any]) -> dict[str, Any]:
        """Sampled Optuna params -> the values they stand for (JSON text of a list choice -> the list)."""
        return {k: self._decode.get(k, {}).get(v, v) if isinstance(v, str) else v for k, v in params.items()}

    def train_config(self, params: dict[str, Any], threads: int | None = None) -> TrainConfig:
        """The train config of one trial: decoded `params` applied to the fixed config; `threads` fills
        `training.threads` when the file leaves it unset.

        Raises:
            ConfigError: the sampled combination does not validate.
        """
        cfg = self.config.train_config(self.decode(params))
        if threads is not None and cfg.training.threads is None:
            cfg = cfg.model_copy(update={"training": cfg.training.model_copy(update={"threads": threads})})
        return cfg

    def check_names(self) -> None:
        """Registry names (dataset, backbone, calibrator, score) of the fixed config and of every categorical
        choice, checked before anything runs.

        Raises:
            ConfigError (UnknownNameError): the first unknown name, with the search-space path that holds it.
        """
        from eeopt.training.checks import check_train_config

        check_train_config(self.config.train_config(), source="study file")
        for path, dist in self.config.search_space.items():
            if isinstance(dist, CategoricalDistribution):
                for choice in dist.choices:
                    check_train_config(self.config.train_config({path: choice}), source=f"search_space.{path}")


# ----------------------------------------------------------------------------------------------------
# The Optuna sampler of a study, seeded per trial
def trial_seed(seed: int, number: int) -> int:
    """The 32-bit seed of trial `number` of a study seeded with `seed`."""
    return int.from_bytes(hashlib.sha256(f"eeopt:{seed}:{number}".encode()).digest()[:4], "little")


def create_sampler(kind: str, seed: int, trials: int) -> BaseSampler:
    """The sampler named in `study.sampler` (tpe, nsga2 or random), seeded per trial from `seed`."""

    def make(trial_seed_: int) -> BaseSampler:
        if kind == "tpe":
            return TPESampler(seed=trial_seed_, multivariate=True, constant_liar=True)
        if kind == "nsga2":
            return NSGAIISampler(seed=trial_seed_, population_size=max(4, min(20, trials)))
        return RandomSampler(seed=trial_seed_)

    return SeedPerTrial(make, seed)


class SeedPerTrial(BaseSampler):
    """Delegates each trial to a sampler built by `make(trial_seed(seed, trial.number))`.

    The samplers eeopt uses keep no state between trials besides their random generator (TPE and NSGA-II read the
    history from the storage), so a fresh one per trial number changes only where the draws come from.
    """

    _KEEP = 32  # samplers of recent trial numbers kept (a trial's hooks all come while it is being asked)

    def __init__(self, make, seed: int):
        self._make = make
        self._seed = seed
        self._by_number: dict[int, BaseSampler] = {}

    def _for(self, trial) -> BaseSampler:
        sampler = self._by_number.get(trial.number)
        if sampler is None:
            if len(self._by_number) >= self._KEEP:
                self._by_number.pop(next(iter(self._by_number)))
            sampler = self._by_number[trial.number] = self._make(trial_seed(self._seed, trial.number))
        return sampler

    def infer_relative_search_space(self, study, trial) -> dict[str, Any]:
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space) -> dict[str, Any]:
        return self._for(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution) -> Any:
        return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial) -> None:
        self._for(trial).before_trial(study, trial)

    def after_trial(self, study, trial, state, values) -> None:
        self._for(trial).after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._by_number.clear()
