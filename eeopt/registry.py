"""One registry shape for everything users extend by name: backbones, datasets, scores and calibrators.

Each kind keeps one `Registry` and exposes `register_x` (a decorator), `create_x` / `get_x` and `list_x`. An unknown
name is always an `UnknownNameError` (a `ConfigError`, so the CLI prints one line and exits 2) with the same
message: ``unknown backbone 'x' (known: resnet18, ...)``.

`Registry.restoring()` and `restoring_registries()` undo registrations made inside a block: the test suite wraps
every test in the latter, so a score or dataset one test registers is never seen by the next.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, Generic, TypeVar

from eeopt.errors import ConfigError

T = TypeVar("T")


class UnknownNameError(ConfigError):
    """A name that no registry entry has (a backbone, dataset, score or calibrator)."""


class Registry(Generic[T]):
    """Names -> entries of one kind (functions or classes), in the order they were registered.

    Args:
        kind: what an entry is, as the messages say it ("backbone", "dataset", "score", "calibrator").
    """

    #: Every registry alive, for `restoring_registries` (weak: a registry made and dropped by a test goes away).
    _alive: ClassVar[weakref.WeakSet[Registry[Any]]] = weakref.WeakSet()

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}
        Registry._alive.add(self)

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering an entry under `name` (the stable snake_case key used in YAML, CLI and MLflow).

        Raises:
            ValueError: `name` is empty or already registered.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} names must be non-empty strings, got {name!r}")

        def deco(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = entry
            return entry

        return deco

    def get(self, name: str, where: str = "") -> T:
        """The entry registered as `name`.

        Args:
            where: a prefix for the message, e.g. the dotted config path ("model.backbone").
        Raises:
            UnknownNameError: no entry has that name; the message lists the known ones.
        """
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            prefix = f"{where}: " if where else ""
            raise UnknownNameError(f"{prefix}{self.unknown(name)}") from None

    def unknown(self, name: object) -> str:
        """The message for an unknown name: ``unknown backbone 'x' (known: a, b)``."""
        return f"unknown {self.kind} {name!r} (known: {', '.join(self.names()) or 'none'})"

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    @contextlib.contextmanager
    def restoring(self) -> Iterator[Registry[T]]:
        """A block after which this registry holds exactly what it held before it (its entries, and any other
        table a subclass keeps, such as the backbone registry's library prefixes), whatever was registered in it."""
        saved = {name: (table, dict(table)) for name, table in vars(self).items() if isinstance(table, dict)}
        try:
            yield self
        finally:
            for name, (table, contents) in saved.items():
                table.clear()
                table.update(contents)
                setattr(self, name, table)  # the same dict again, should the block have swapped it


@contextlib.contextmanager
def restoring_registries() -> Iterator[None]:
    """`Registry.restoring()` for every registry that exists on entering the block (backbones, datasets, scores,
    calibrators, once their modules are imported)."""
    with contextlib.ExitStack() as stack:
        for registry in list(Registry._alive):
            stack.enter_context(registry.restoring())
        yield
