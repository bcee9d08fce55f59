"""What every schedule shares: the result type, results rows, rewinding (the callables are in ``recovery.py``)."""
from __future__ import annotations

import logging
from dataclasses import MISSING, dataclass, field, replace
from typing import Dict, List, Literal, Optional

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from .budget import accuracy_drop_points, within_budget

log = logging.getLogger(__name__)


@dataclass
class ScheduleResult:
    """What a schedule returns: the final model (after any rollback) and one row per round / epoch."""

    model: nn.Module
    steps: List[dict] = field(default_factory=list)  # per round: ratio, metrics, params, MACs, latency, ok
    baseline: dict = field(default_factory=dict)  # the unpruned model's metrics and size
    stopped: str = "target"  # "target" reached, "budget" violated (rolled back) or "interrupted"
    rolled_back: bool = False  # the returned model is an earlier one than the last round's
    best_round: int = 0  # round whose model is returned (0 = the unpruned input)
    interrupted: bool = False  # Ctrl-C ended the run; the model is the best one found so far
    message: str = ""  # a sentence saying how the run ended
    histories: List[List[dict]] = field(default_factory=list)  # fit history rows of each round's fine-tune (AGP: one run)

    @property
    def fit_history(self) -> List[dict]:
        """Every fine-tune epoch row, in training order."""
        return [row for rows in self.histories for row in rows]

    def summary(self) -> dict:
        """JSON-able view (everything but the model and fit histories) for results.json."""
        return {"steps": self.steps, "baseline": self.baseline, "stopped": self.stopped,
                "rolled_back": self.rolled_back, "best_round": self.best_round, "interrupted": self.interrupted,
                "message": self.message}


def clone(model: nn.Module) -> nn.Module:
    from ..modelutils import clone_model

    return clone_model(model)


def no_restore_best(fit_cfg):
    """A FitConfig that keeps the last weights: restoring an earlier epoch would also restore older masks."""
    if fit_cfg is not None and getattr(fit_cfg, "restore_best", False):
        return replace(fit_cfg, restore_best=False)
    return fit_cfg


def baseline_metrics(model: nn.Module, recovery) -> dict:
    """Validation metrics (``val_*``) and size of the unpruned model: the reference of every budget."""
    metrics = check_metrics(recovery.evaluate(model))
    return {**{f"val_{k}": float(v) for k, v in metrics.items()}, **recovery.measure(model)}


def check_metrics(metrics) -> dict:
    """``Recovery.evaluate``'s answer, or a ConfigError when it is not a dict with ``accuracy``."""
    if not isinstance(metrics, dict) or "accuracy" not in metrics:
        raise ConfigError(f"Recovery.evaluate must return a dict of metrics with 'accuracy', got {metrics!r:.80}")
    return metrics


def step_row(k: int, metrics: dict, size: dict, baseline: dict, max_drop: Optional[float], **extra) -> dict:
    """One results row: round, ratios, validation metrics, drop vs baseline, size, and the budget verdict."""
    acc = float(metrics["accuracy"])
    row = {"round": k, **extra, **{f"val_{key}": float(v) for key, v in metrics.items()}, **size,
           "drop_points": accuracy_drop_points(baseline["val_accuracy"], acc)}
    row["within_budget"] = True if max_drop is None else within_budget(baseline["val_accuracy"], acc, max_drop)
    if size.get("params"):
        row["achieved_sparsity"] = 1.0 - size["nonzero_params"] / baseline["params"]
    return row


# --- lottery-ticket rewinding -------------------------------------------------------------------


def snapshot_state(model: nn.Module) -> Dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class RewindCheckpoint:
    """Fit callback saving the weights after training step ``step`` (Frankle et al.'s rewinding point).

    ``RewindCheckpoint.capture(model)`` takes the state right away (step 0: the original
    lottery-ticket reset to initialisation). ``.state`` is what ``iterative_prune(rewind_state=...)`` takes.
    """

    def __init__(self, step: int = 0):
        self.step = int(step)  # training step after which to snapshot
        self.state: Optional[Dict[str, torch.Tensor]] = None

    @classmethod
    def capture(cls, model: nn.Module) -> "RewindCheckpoint":
        cp = cls(0)
        cp.state = snapshot_state(model)
        return cp

    def __call__(self, event: str, state: dict) -> None:
        if event == "step" and state["step"] == self.step and self.state is None:
            self.state = snapshot_state(state["model"])


@torch.no_grad()
def rewind_weights(model: nn.Module, early_state: Dict[str, torch.Tensor]) -> nn.Module:
    """Reset every parameter and buffer to ``early_state`` while keeping the current pruning masks.

    Masked weights: ``weight_orig`` takes the early ``weight`` (or ``weight_orig``), so the
    effective weight becomes ``early * mask``. Shapes must match (rewinding needs weight pruning).
    """
    from ..unstructured.masks import masked_modules

    for key, tensor in model.state_dict().items():
        if key.endswith("_mask"):
            continue
        src = key if key in early_state else (key[: -len("_orig")] if key.endswith("_orig") else None)
        if src not in early_state:
            raise CheckpointError(f"the rewind checkpoint has no entry for {key!r}; capture it from the same architecture")
        if early_state[src].shape != tensor.shape:
            raise CheckpointError(
                f"cannot rewind {key!r}: checkpoint shape {tuple(early_state[src].shape)} vs model {tuple(tensor.shape)}; "
                "lottery-ticket rewinding needs weight (unstructured) pruning, channel pruning changes shapes")
        tensor.copy_(early_state[src])
    for _, module, pname in masked_modules(model):
        setattr(module, pname, getattr(module, f"{pname}_orig") * getattr(module, f"{pname}_mask"))
    return model


def _spec_default(name: str):
    """A dataclass field whose default is PruneSpec's, so a schedule: / search: key defaults like the prune: key."""
    from ..spec import PruneSpec

    f = PruneSpec.__dataclass_fields__[name]
    if f.default_factory is not MISSING:  # type: ignore[misc]
        return field(default_factory=f.default_factory)
    return field(default=f.default)


@dataclass
class PruneTargetConfig:
    """What a ``schedule:`` or ``search:`` recipe section prunes: the PruneSpec fields a round may set (same
    names, same defaults), besides the ratio the schedule chooses."""

    granularity: Literal["weight", "channel"] = _spec_default("granularity")
    criterion: Optional[str] = _spec_default("criterion")  # registered criterion (None: l1)
    scope: Optional[Literal["global", "local", "row"]] = _spec_default("scope")  # None: the criterion's default
    include: Optional[List[str]] = _spec_default("include")  # module patterns to prune
    exclude: Optional[List[str]] = _spec_default("exclude")  # module patterns never pruned
    round_to: Optional[int] = _spec_default("round_to")  # channel pruning: kept channels rounded to a multiple

    def spec(self):
        """The PruneSpec of one round (ratio left at its default: the schedule sets it); raises ConfigError for an
        option the granularity does not use (``round_to`` with weights)."""
        from ..spec import PruneSpec

        return PruneSpec.from_fields(None, caller=f"the {self.granularity} schedule", granularity=self.granularity,
                                     criterion=self.criterion, scope=self.scope, include=self.include,
                                     exclude=self.exclude, round_to=self.round_to)

    def prune_kwargs(self) -> dict:
        """The spec fields besides granularity and criterion that differ from their defaults (``prunekit.prune``
        keywords; Recovery.default sets granularity and criterion itself)."""
        return {k: v for k, v in self.spec().given().items() if k not in ("granularity", "criterion")}


def check_prune_target(ctx, cfg: PruneTargetConfig) -> None:
    """Recipe pre-flight of a ``schedule:`` / ``search:`` section: options and name patterns against the model."""
    from ..api import check_prune_request

    spec = cfg.spec()
    criterion = spec.part().criterion
    from ..importance import create_criterion

    if create_criterion(criterion).needs_data:
        raise ConfigError(f"criterion {criterion!r} needs calibration batches, which schedule: and search: do not "
                          "feed to each round; use a magnitude criterion (l1, l2, fpgm, bn_scale) here, or a one-shot "
                          "prune: stage, which calibrates on the training split")
    check_prune_request(ctx.model, None, spec)
