"""The exception family prunekit raises: one type per failure family, each message names the cause and the fix."""


class PrunekitError(Exception):
    """Base class of every error prunekit raises on purpose."""


class ConfigError(PrunekitError, ValueError):
    """A recipe key, argument or registered name is unknown or has the wrong type/value."""


class PruningError(PrunekitError, ValueError):
    """A pruning request cannot be satisfied (bad ratio, empty selection, impossible target)."""


class InputError(PrunekitError, ValueError):
    """Example inputs or data do not fit the model (wrong shape, dtype or structure)."""


class CheckpointError(PrunekitError):
    """A checkpoint is corrupt, truncated, or does not match the model it is loaded into."""


class TraceError(PrunekitError):
    """The model's graph could not be captured; the message names the op and the workaround."""


class ReducerError(PrunekitError, ValueError):
    """A dimensionality reducer was misconfigured or applied to data of the wrong dimension."""


class BudgetError(PrunekitError):
    """An accuracy / size budget cannot be met by any allowed setting."""


class ExportError(PrunekitError):
    """Export to ONNX / TorchScript failed, or the exported model disagrees with the eager model."""


class OutputError(PrunekitError):
    """An output file or folder cannot be written (disk full, read-only folder, path is a file, run in progress)."""


class TrainingError(PrunekitError):
    """Training diverged (loss or weights became NaN / inf); the model is left at its last finite weights."""
