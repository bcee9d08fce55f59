"""A named registry filled by a decorator: the extension point for criteria, models, reducers, stages..."""
from __future__ import annotations

from typing import Any, Callable, Dict, Generic, Iterator, TypeVar

from .errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps a name to an object (class or factory). ``@REG.register("name")`` adds one.

    Lookups of unknown names raise :class:`ConfigError` listing the known names, so a
    typo in a recipe tells the user what they could have written.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._items: Dict[str, T] = {}

    def register(self, name: str | None = None, *, override: bool = False) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            key = name or getattr(obj, "__name__", None)
            if not key:
                raise ConfigError(f"cannot register an unnamed {self.kind}")
            if key in self._items and not override:
                raise ConfigError(f"{self.kind} {key!r} is already registered; pass override=True to replace it")
            self._items[key] = obj
            return obj

        return deco

    def add(self, name: str, obj: T, *, override: bool = False) -> T:
        return self.register(name, override=override)(obj)

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "(none registered)"
            raise ConfigError(f"unknown {self.kind} {name!r}; known {self.kind}s: {known}") from None

    def create(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Look ``name`` up and call it with the given arguments."""
        return self.get(name)(*args, **kwargs)  # type: ignore[operator]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
