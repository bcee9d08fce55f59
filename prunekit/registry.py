"""A named registry filled by a decorator: the extension point for criteria, models, reducers, stages..."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Dict, Generic, Hashable, Iterator, TypeVar

from .errors import ConfigError

T = TypeVar("T")

_MISSING = object()


class Registry(Generic[T]):
    """Maps a name to an object. ``@REG.register("name")`` adds one.

    One registry holds one kind of thing: classes (criteria, regularizers), functions (models,
    datasets, exporters, report sections, schedules) or records (stages, reducers, export
    runners), never a mix. Names are strings except in the graph op-rule tables, which key on
    the callable itself (``torch.add``); any hashable key works.

    - ``@REG.register("name")`` / ``REG.add("name", obj)`` add an entry; a name that is
      already taken raises :class:`ConfigError` unless ``override=True`` is passed.
    - ``REG.unregister("name")`` removes an entry and returns it (:class:`ConfigError` if absent).
    - ``with REG.scoped("name", obj, override=False): ...`` registers ``obj`` for the block
      only: on exit, even by an exception, the name is removed again, or the entry it
      overrode is put back. Tests and plugins use this instead of editing the table.

    Lookups of unknown names raise :class:`ConfigError` listing the known names, so a
    typo in a recipe tells the user what they could have written.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._items: Dict[Any, T] = {}

    def register(self, name: Hashable | None = None, *, override: bool = False) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            key = name
            if key is None or (isinstance(key, str) and not key):
                key = getattr(obj, "__name__", None)
            if not key:
                raise ConfigError(f"cannot register an unnamed {self.kind}")
            if key in self._items and not override:
                raise ConfigError(f"{self.kind} {_label(key)} is already registered; pass override=True to replace it")
            self._items[key] = obj
            return obj

        return deco

    def add(self, name: Hashable, obj: T, *, override: bool = False) -> T:
        return self.register(name, override=override)(obj)

    def unregister(self, name: Hashable) -> T:
        """Remove ``name`` and return what it held; :class:`ConfigError` if it is not registered."""
        try:
            return self._items.pop(name)
        except KeyError:
            raise ConfigError(f"cannot unregister {self.kind} {_label(name)}: it is not registered") from None

    @contextmanager
    def scoped(self, name: Hashable, obj: T, *, override: bool = False) -> Iterator[T]:
        """Register ``obj`` as ``name`` inside the ``with`` block and restore the previous state on exit."""
        previous = self._items.get(name, _MISSING)
        self.add(name, obj, override=override)
        try:
            yield obj
        finally:
            if previous is _MISSING:
                self._items.pop(name, None)
            else:
                self._items[name] = previous  # type: ignore[assignment]

    def get(self, name: Hashable) -> T:
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(_label(k) for k in self.names()) or "(none registered)"
            raise ConfigError(f"unknown {self.kind} {_label(name)}; known {self.kind}s: {known}") from None

    def find(self, name: Hashable, default: Any = None) -> Any:
        """``get`` without the error: the entry for ``name``, or ``default`` when there is none."""
        return self._items.get(name, default)

    def create(self, name: Hashable, *args: Any, **kwargs: Any) -> Any:
        """Look ``name`` up and call it with the given arguments."""
        return self.get(name)(*args, **kwargs)  # type: ignore[operator]

    def names(self) -> list:
        return sorted(self._items, key=_sort_key)

    def __contains__(self, name: object) -> bool:
        try:
            return name in self._items
        except TypeError:  # an unhashable name is never registered
            return False

    def __iter__(self) -> Iterator[Any]:
        return iter(self.names())

    def registration_order(self) -> list:
        """Registered names, oldest first (``names()`` is sorted)."""
        return list(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


def _label(key: Any) -> str:
    """How a key is named in messages: ``'name'`` for strings, the qualified name for callables."""
    if isinstance(key, str):
        return repr(key)
    mod, qual = getattr(key, "__module__", None), getattr(key, "__qualname__", None) or getattr(key, "__name__", None)
    return f"{mod}.{qual}" if mod and qual else repr(key)


def _sort_key(key: Any) -> tuple:
    return (not isinstance(key, str), key if isinstance(key, str) else _label(key))
