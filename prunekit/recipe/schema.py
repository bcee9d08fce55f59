"""Typed recipe sections: the dict -> dataclass checks live in :mod:`prunekit.typed` (shared with the library layers)."""
from ..typed import coerce, describe_type, from_dict, to_dict

__all__ = ["coerce", "describe_type", "from_dict", "to_dict"]
