"""ExportError lives in prunekit.errors; re-exported here for prunekit.export users."""
from ..errors import ExportError

__all__ = ["ExportError"]
