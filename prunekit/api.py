"""The public one-call API: ``prunekit.prune`` dispatching to weight or structured pruning.

Every request is checked before anything is copied, traced or pruned (:func:`check_prune_request`):
option names (a typo is a :class:`ConfigError`, never silently ignored), options the chosen
granularity does not use (:data:`PRUNE_OPTIONS`), values, and name patterns against the model's
module names (a pattern that matches nothing is a :class:`PruningError`).
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Iterable, Optional, Tuple

import torch
from torch import nn

from .errors import ConfigError, InputError, PrunekitError, PruningError
from .spec import GRANULARITIES, PRUNE_OPTIONS, PruneSpec  # noqa: F401  (re-exported)

ALL_OPTIONS: Tuple[str, ...] = tuple(dict.fromkeys(o for opts in PRUNE_OPTIONS.values() for o in opts))


def run_once(model: nn.Module, example_inputs) -> Any:
    """Run ``model`` once on ``example_inputs`` (eval mode, no gradients, training flags restored).

    Any failure becomes an :class:`InputError` naming the example inputs' shapes / dtypes and the error,
    so a wrong example input is reported as such, not as a tracing or pruning failure.
    """
    from ._inputs import describe, split_inputs

    args, kwargs = split_inputs(example_inputs)  # InputError for a container that is no Tensor / tuple / dict
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            return model(*args, **kwargs)
    except PrunekitError:
        raise
    except Exception as exc:
        text = " ".join(str(exc).split())
        text = text[:400] + ("..." if len(text) > 400 else "")
        raise InputError(
            f"the model could not run on the example inputs {describe(example_inputs)}: {type(exc).__name__}: "
            f"{text or '(no message)'}. Pass example inputs with the shape and dtype "
            f"{type(model).__name__}.forward() expects (for a single image classifier: a batch tensor such as "
            "torch.randn(1, C, H, W)); nothing was pruned."
        ) from exc
    finally:
        for m, flag in flags:
            m.training = flag


def check_prune_request(model: nn.Module, example_inputs=None, spec: Optional[PruneSpec] = None, *,
                        calibration: Optional[Iterable] = None, loss_fn: Optional[Callable] = None,
                        **fields) -> PruneSpec:
    """Validate a :func:`prune` request against ``model`` without pruning, copying or tracing it; returns the spec.

    Checks, raising what :func:`prune` would raise: option names (unknown -> :class:`ConfigError`) and
    options the granularity does not use (:class:`ConfigError`); values (ratio, scope, threshold,
    criterion...); module patterns (include / exclude / ignore / freeze / layer_ratios / leaf_modules)
    against the model's modules (:class:`PruningError` naming the pattern and example names); a
    data-driven criterion without ``calibration``; with ``example_inputs``, one eval-mode forward
    (:class:`InputError` naming the input shapes). Channel pruning's layer_ratios are matched against
    module names here; after tracing they must also select a layer that produces channels.
    """
    if not isinstance(model, nn.Module):
        raise PruningError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    spec = named_patterns(model, PruneSpec.from_fields(spec, **fields))
    part = spec.part()
    if spec.granularity == "weight":
        from .unstructured.pruner import weight_criterion
        from .unstructured.select import layer_ratio_overrides, select_params

        targets = select_params(model, include=part.include, exclude=part.exclude, include_types=part.include_types)
        layer_ratio_overrides([t.key for t in targets], part.layer_ratios, {t.key: t.module_name for t in targets},
                              model=model)
        weight_criterion(part.criterion, part.seed, calibration, loss_fn, check_data=True)
    else:
        from .structured.api import check_data, check_structured_patterns

        check_structured_patterns(model, part)
        check_data(part, calibration)
    if example_inputs is not None:
        run_once(model, example_inputs)
    return spec


def named_patterns(model: nn.Module, spec: PruneSpec) -> PruneSpec:
    """``spec`` with module objects in its patterns replaced by their names in ``model`` (so the spec also
    selects the same modules on a copy of the model, and is JSON-able); a foreign module is a PruningError."""
    import dataclasses

    from .match import as_patterns, check_patterns, to_names

    changes = {}
    for key in ("include", "exclude", "ignore", "freeze", "leaf_modules"):
        patterns = as_patterns(getattr(spec, key), key)
        if any(isinstance(p, nn.Module) for p in patterns):
            check_patterns(model, key, [p for p in patterns if isinstance(p, nn.Module)])
            changes[key] = to_names(model, patterns)
    if spec.layer_ratios and any(isinstance(k, nn.Module) for k in spec.layer_ratios):
        check_patterns(model, "layer_ratios", [k for k in spec.layer_ratios if isinstance(k, nn.Module)])
        names = to_names(model, list(spec.layer_ratios))
        changes["layer_ratios"] = dict(zip(names, spec.layer_ratios.values()))
    return dataclasses.replace(spec, **changes) if changes else spec


def plan(model: nn.Module, example_inputs, spec: Optional[PruneSpec] = None, *,
         calibration: Optional[Iterable] = None, loss_fn: Optional[Callable] = None, progress=None, **fields):
    """What :func:`prune` would remove, as an editable :class:`~prunekit.structured.Plan`; ``model`` is unchanged.

    Takes the same arguments as :func:`prune` (structured granularities: channel, block, input). The plan
    lists the traced groups, their scores, the units each would lose and the predicted parameters and
    MACs after (``plan.predicted()``); print it for a table, ``plan.to_json()`` / ``Plan.from_json`` to
    keep it, ``plan.drop(g, idxs)`` / ``plan.keep(g, idxs)`` / ``plan.set_ratio(g, r)`` to edit it and
    ``plan.apply(model)`` to perform it (on this model or a fresh one of the same architecture).
    """
    spec = check_prune_request(model, None, spec, calibration=calibration, loss_fn=loss_fn, **fields)
    if spec.granularity == "weight":
        raise ConfigError("prunekit.plan describes structured pruning (granularity='channel', 'block' or 'input'); "
                          "weight pruning masks weights in place: call prunekit.prune(..., granularity='weight') and "
                          "read prunekit.unstructured.sparsity_report(model)")
    from .structured.api import make_criterion, needs_data, plan_structured

    run_once(model, example_inputs)
    target = model
    if spec.granularity != "block" and needs_data(make_criterion(spec.part().criterion, spec.part().seed)):
        target = copy.deepcopy(model)  # calibration runs backward passes: the user's model must stay untouched
    return plan_structured(target, example_inputs, spec, calibration=calibration, loss_fn=loss_fn, progress=progress)


def prune(model: nn.Module, example_inputs, spec: Optional[PruneSpec] = None, *,
          calibration: Optional[Iterable] = None, loss_fn: Optional[Callable] = None, inplace: bool = False,
          progress=None, **fields) -> nn.Module:
    """Prune ``model`` and return the pruned model (a copy unless ``inplace=True``).

    The request is a :class:`~prunekit.PruneSpec`: pass one as ``spec``, or its fields as keywords
    (they replace the spec's). granularity:

    * ``"weight"``  — unstructured: mask individual weights (torch.nn.utils.prune convention);
      ``criterion`` l1 / l2 / random / taylor / ...; ``scope`` global (one ranking) or local (same
      ratio per layer); ``ratio`` or ``threshold`` (keep score > t); ``layer_ratios``; ``include`` /
      ``exclude`` module patterns; ``include_types``; ``relative_to`` ("remaining" | "total").
      Linear / Conv weights and nn.MultiheadAttention's ``in_proj_weight`` are pruned.
    * ``"channel"`` — structured: physically remove filters / channels / neurons / heads with every
      coupled layer kept consistent: ``ratio``, ``macs_target`` or ``latency_target`` (a fraction of the measured
      latency, or ``"12ms"``; ``prunekit.structured.latency``), ``scope``, ``layer_ratios``,
      ``include`` / ``include_types``, ``ignore`` (the module's outputs are kept, its inputs may
      shrink), ``freeze`` (every group touching the module is kept), ``round_to``, ``layer_floor``,
      ``reduction`` / ``normalize``, ``leaf_modules``, ``tracer``.
    * ``"block"``   — remove whole blocks: in a model with a config (Hugging Face), the layers of its transformer
      stacks (taken out of their ``nn.ModuleList``; ``num_hidden_layers`` and per-layer indices stay true,
      ``prunekit.structured.layers``); otherwise residual blocks ``x + f(x)``, replaced with identity skips
      (``include`` / ``ignore`` choose the candidates; criterion ``residual_norm`` or ``random``).
    * ``"input"``   — remove input features of the first Linear layer.

    ``calibration`` (iterable of ``(inputs, targets)``; at most ``calibration_batches`` are read) and
    ``loss_fn`` feed data-driven criteria (taylor, activation statistics). An unknown option, or one the
    granularity does not use (:data:`PRUNE_OPTIONS`), raises :class:`ConfigError`. Structured pruning is
    :func:`plan` followed by ``Plan.apply``.
    """
    spec = check_prune_request(model, None, spec, calibration=calibration, loss_fn=loss_fn, **fields)
    if spec.granularity == "weight":
        from .unstructured import prune_weights

        return prune_weights(model, example_inputs, spec.part(), calibration=calibration, loss_fn=loss_fn,
                             inplace=inplace, progress=progress)
    from .structured.api import plan_structured

    target = model if inplace else copy.deepcopy(model)
    run_once(target, example_inputs)  # a wrong example input is an InputError, not a tracing failure
    the_plan = plan_structured(target, example_inputs, spec, calibration=calibration, loss_fn=loss_fn,
                               progress=progress)
    pruned = the_plan.apply(target, example_inputs)
    if getattr(the_plan, "latency", None) is not None:  # latency_target: the pruned model measured against the table
        from .structured.latency_check import measure_pruned

        measure_pruned(pruned, example_inputs, the_plan.latency, dense=None if inplace else model)
    return pruned


def measure(model: nn.Module, example_inputs, **kwargs) -> dict:
    """Parameters, non-zeros, MACs (dense and non-zero), bytes on disk and measured latency (see prunekit.measure)."""
    from .measure import measure as _measure

    return _measure(model, example_inputs, **kwargs)


def quantize(model: nn.Module, example_inputs, *, mode: str = "dynamic", calibration: Optional[Iterable] = None,
             backend: str = "onnxruntime", path=None, **options):
    """int8 quantization (see :mod:`prunekit.int8`): a runnable quantized model; ``path`` also writes the .onnx."""
    from .int8 import quantize as _quantize

    return _quantize(model, example_inputs, mode=mode, calibration=calibration, backend=backend, path=path, **options)


def sparsify(model: nn.Module, example_inputs, *, batch_size: int = 1, **options):
    """Sparse kernels where they measure faster (see :mod:`prunekit.sparse`): ``(model, decision table)``."""
    from .sparse import sparsify as _sparsify

    return _sparsify(model, example_inputs, batch_size=batch_size, **options)
