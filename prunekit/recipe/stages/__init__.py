"""Recipe stages: each recipe section maps to a registered stage (config dataclass + run function).

A stage is registered with ``@register_stage("key", config=SomeConfig, order=N)`` on a
function ``run(ctx: RunContext, cfg: SomeConfig) -> None``. The runner validates the
recipe section with the dataclass, calls every stage's ``check(ctx, cfg)`` (pre-flight,
before anything trains), then runs the stages present in ``order``, saving the model after
each one.
The built-in stages live in this package, one module per feature (builtin, reduce, regularize,
analyze, schedule, search): each imports the library package it runs, and no library package
imports the recipe driver. A user stage registers itself the same way from a ``plugins:`` module,
so adding one never edits the runner.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from torch import nn

from ...data.base import DataSplits
from ...progress import Progress, NULL_PROGRESS
from ...registry import Registry


@dataclass
class Stage:
    key: str  # the recipe section name
    config: type  # dataclass validated from the section
    run: Callable[["RunContext", Any], None]
    order: int  # lower runs first
    help: str = ""
    check: Optional[Callable[["RunContext", Any], None]] = None  # pre-flight: validate cfg against the model and
    # data before any stage runs (name patterns, options), so a typo never costs a finished training run
    main_only: bool = False  # under torchrun only rank 0 runs it (stages that only write files, e.g. export)


STAGES: Registry[Stage] = Registry("recipe stage")

# Conventional orders (leave gaps so users can slot theirs in):
ORDER_REDUCE = 10  # input dimensionality reduction (changes data + model input)
ORDER_TRAIN = 20  # train the model from scratch if asked
ORDER_REGULARIZE = 25  # sparsity-inducing training
ORDER_ANALYZE = 28  # sensitivity / layer analysis of the trained model
ORDER_PRUNE = 30  # one-shot prune
ORDER_SCHEDULE = 32  # iterative / gradual pruning
ORDER_SEARCH = 34  # accuracy-budgeted search
ORDER_FINETUNE = 40  # recovery fine-tune (+ distillation)
ORDER_COMPRESS = 60  # Deep Compression: weight sharing + centroid fine-tune + model.deep; the shared model becomes ctx.model
ORDER_QUANTIZE = 80  # int8 copy of the final model (model.int8.onnx); the float32 model stays ctx.model
ORDER_EXPORT = 90


def register_stage(key: str, *, config: type, order: int, help: str = "",
                   check: Optional[Callable[["RunContext", Any], None]] = None, main_only: bool = False):
    def deco(fn):
        STAGES.add(key, Stage(key=key, config=config, run=fn, order=order, help=help, check=check,
                              main_only=main_only))
        return fn

    return deco


@dataclass
class RunContext:
    """Everything stages share during one ``prunekit run``.

    ``model`` is the current model (stages replace it); ``teacher`` is a frozen copy of
    the model before any pruning (for distillation and before/after comparisons).
    ``results`` is what ends up in results.json: stages append to ``results["stages"]``
    dicts with at least ``{"stage": key, ...metrics}``; ``history`` rows
    (``{"stage", "epoch", "val_accuracy", ...}``) feed the report's curves.
    """

    model: nn.Module
    data: DataSplits
    out_dir: Path
    recipe: dict
    example_inputs: Any
    loss_fn: Callable
    device: str = "cpu"
    teacher: Optional[nn.Module] = None
    progress: Progress = NULL_PROGRESS
    seed: int = 0
    model_spec: dict = field(default_factory=dict)  # how to rebuild the architecture: {"name":..., "kwargs":...}
    results: dict = field(default_factory=lambda: {"stages": []})
    history: list = field(default_factory=list)
    artifacts: dict = field(default_factory=dict)  # name -> path of files written (checkpoints, plots)
    extras: dict = field(default_factory=dict)  # free room for stages to pass objects (e.g. a fitted reducer)

    def record(self, stage: str, **values) -> dict:
        row = {"stage": stage, **values}
        self.results["stages"].append(row)
        return row
