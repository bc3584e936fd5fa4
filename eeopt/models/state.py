"""The state a backbone passes between blocks, handled whatever its structure.

A state is a tensor whose first dimension is the batch ([B, C, H, W] maps, [B, N, D] tokens) or a list, tuple or
dict of states (MSDNet's multi-scale maps). Early-exit inference keeps only the samples still running
(`index_state`); nothing here knows a family.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

__all__ = ["index_state", "state_batch_size"]


def index_state(state: Any, index: Tensor) -> Any:
    """`state` with only the samples `index` (int64 [B'] on the state's device) of every tensor in it.

    Raises:
        TypeError: a leaf that is not a tensor (a family whose state holds something else must not).
    """
    if isinstance(state, Tensor):
        return state.index_select(0, index)
    if isinstance(state, (list, tuple)):
        return type(state)(index_state(s, index) for s in state)
    if isinstance(state, dict):
        return {key: index_state(value, index) for key, value in state.items()}
    raise TypeError(f"a backbone state holds tensors, lists, tuples or dicts, not {type(state).__name__}")


def state_batch_size(state: Any) -> int:
    """B: the first dimension of the state's first tensor."""
    while not isinstance(state, Tensor):
        state = next(iter(state.values())) if isinstance(state, dict) else state[0]
    return int(state.shape[0])
