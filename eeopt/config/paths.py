"""Dotted paths over raw config trees (`training.lr`) and one-line messages from pydantic errors."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError


def set_path(tree: dict[str, Any], path: str, value: Any, must_exist: bool = False) -> None:
    """Set `tree[a][b][c] = value` for path 'a.b.c', creating sections as needed (or KeyError with must_exist)."""
    *parents, leaf = path.split(".")
    node = tree
    for part in parents:
        if not isinstance(node, dict):
            raise KeyError(path)
        if part not in node or node[part] is None:
            if must_exist:
                raise KeyError(path)
            node[part] = {}
        node = node[part]
    if not isinstance(node, dict) or (must_exist and leaf not in node):
        raise KeyError(path)
    node[leaf] = value


def first_error(source: str, exc: ValidationError) -> str:
    errors = exc.errors(include_url=False)
    err = errors[0]
    loc = ".".join(str(part) for part in err["loc"] if not _is_union_tag(part))
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown field"
    elif err["type"] == "missing":
        msg = "field required"
    got = ""
    if err["type"] not in ("missing", "extra_forbidden") and "input" in err and not isinstance(err["input"], dict):
        got = f" (got {err['input']!r})"
    more = f" (and {len(errors) - 1} more errors)" if len(errors) > 1 else ""
    where = f"{loc}: " if loc else ""
    return f"{source}: {where}{msg}{got}{more}"


def _is_union_tag(part: Any) -> bool:
    # pydantic puts the chosen union member in error locations ("literal['every_block']", "list[...]", "float"...).
    return isinstance(part, str) and (
        part in ("float", "int", "categorical") or "[" in part or part in ("FlopShares",) or part.startswith("function-")
    )


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists and scalars are leaves."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, path + "."))
        else:
            flat[path] = value
    return flat
