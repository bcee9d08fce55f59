"""prunekit: make trained PyTorch networks smaller and faster while keeping their accuracy."""
import logging

from . import measure as _measure_package  # noqa: F401  load the subpackage first: binding the function below
from .api import measure, plan, prune, quantize, sparsify  # then wins, and later `import prunekit.measure.x` cannot overwrite it
from .errors import (BudgetError, CheckpointError, ConfigError, ExportError, InputError, OutputError, PrunekitError,
                     PruningError, ReducerError, TraceError, TrainingError)
from .io import load, save
from .modelutils import clone_model
from .spec import PruneSpec
from .unstructured import finalize

logging.getLogger(__name__).addHandler(logging.NullHandler())  # the library never prints: the CLI configures output

__version__ = "0.1.0"

__all__ = ["prune", "plan", "PruneSpec", "measure", "quantize", "sparsify", "save", "load", "finalize", "clone_model", "PrunekitError", "ConfigError",
           "PruningError", "InputError", "CheckpointError", "TraceError", "ReducerError", "BudgetError", "ExportError", "OutputError",
           "TrainingError"]
