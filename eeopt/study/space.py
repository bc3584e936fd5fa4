"""The search space of a study file as Optuna sees it, and the way back from sampled parameters to a config.

Optuna's categorical choices must be None, bool, int, float or str. Other choices (`model.exits: [[2, 4], [1, 3,
5]]`) are given to Optuna as their JSON text, which is readable in Optuna's params and dashboard, and decoded
before the train config is built.
"""

from __future__ import annotations

import json
from typing import Any

from eeopt.config import CategoricalDistribution, FloatDistribution, StudyConfig, TrainConfig
from eeopt.errors import ConfigError


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
