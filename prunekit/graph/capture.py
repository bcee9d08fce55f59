"""Capture a model's graph with torch.fx (plus shapes of every value), mapping nodes back to modules."""
from __future__ import annotations

import contextlib
import logging
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.fx as fx
from torch import nn

from .._inputs import Inputs, split_inputs
from ..errors import TraceError
from ..match import as_patterns, check_patterns, matches_any
from .export_capture import is_transposed_linear

log = logging.getLogger(__name__)

MAX_AUTO_LEAVES = 16  # how many untraceable submodules may be made opaque before giving up


@dataclass
class Captured:
    """A traced graph with per-node example values' shapes, and the modules made opaque to trace it."""

    gm: fx.GraphModule
    args: Tuple[Any, ...]  # example inputs in placeholder order
    auto_leaves: Dict[str, str] = field(default_factory=dict)  # module name -> why it was made opaque
    exported: bool = False  # captured with torch.export: sizes in reshapes are all spelled out

    def shape(self, node: fx.Node):
        meta = node.meta.get("tensor_meta")
        return None if meta is None or not hasattr(meta, "shape") else tuple(meta.shape)


class _Tracer(fx.Tracer):
    """fx tracer whose leaves are torch.nn layers plus user-named modules; remembers where tracing failed."""

    def __init__(self, leaves: Sequence[Any], keep_whole: Optional[Callable[[nn.Module], bool]] = None):
        super().__init__()
        self.record_stack_traces = True  # each node's source line (a factory's sizes are checked against it)
        self.leaves = list(leaves)
        self.keep_whole = keep_whole
        self.failed_in: List[str] = []

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if getattr(type(m), "prunekit_leaf", False):  # prunekit's own layers (e.g. InputSelectedLinear) stay whole
            return True
        if matches_any(qualname, m, self.leaves):  # prunekit.match: name, glob, prefix, class name, type, module
            return True
        if is_transposed_linear(m):  # Hugging Face's Conv1D: one layer, like nn.Linear
            return True
        if self.keep_whole is not None and self.keep_whole(m):  # a layer with its own channel rule
            return True
        return super().is_leaf_module(m, qualname)

    def call_module(self, m, forward, args, kwargs):
        qualname = self.path_of_module(m)
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if not self.failed_in:
                self.failed_in.append(qualname)
            raise


def capture(model: nn.Module, example_inputs: Inputs, leaf_modules: Sequence[Any] = (), tracer: str = "auto",
            keep_whole: Optional[Callable[[nn.Module], bool]] = None) -> Captured:
    """Trace ``model`` with torch.fx; an untraceable submodule is made opaque (its channels are left out).

    ``leaf_modules``: module patterns (:mod:`prunekit.match`: names, globs, prefixes, class names, types,
    modules of ``model``) fx keeps whole; one that names no module raises :class:`PruningError`.

    ``tracer``: "auto" (fx; torch.export when the model's own forward defeats fx, or when fx could only trace
    it by keeping submodules whole and torch.export captures it all), "fx" or "export".
    ``keep_whole(module)``: modules that stay one node in either capture (layers with a channel rule of
    their own, e.g. an RMSNorm class of a model library).

    Raises :class:`TraceError` naming the failing line when no capture works.
    """
    if tracer not in ("auto", "fx", "export"):
        raise TraceError(f"tracer must be 'auto', 'fx' or 'export', got {tracer!r}")
    leaves = as_patterns(leaf_modules, "leaf_modules")
    check_patterns(model, "leaf_modules", leaves)  # a leaf pattern that names no module is a typo, not a no-op
    with _without_kv_cache(model):
        return _capture(model, example_inputs, leaves, tracer, keep_whole)


@contextlib.contextmanager
def _without_kv_cache(model: nn.Module):
    """A Hugging Face model's key-value cache (``config.use_cache``) is off while the graph is captured.

    The cache is a generation-time object that holds copies of each layer's keys and values; the channel
    dependencies are those of the forward without it, and with it the capture would see cache updates
    (concatenations with empty tensors, Python cache objects in the output). Restored afterwards.
    """
    config = getattr(model, "config", None)
    if getattr(config, "use_cache", None) is not True:
        yield
        return
    config.use_cache = False
    try:
        yield
    finally:
        config.use_cache = True


def _capture(model: nn.Module, example_inputs: Inputs, leaves: list, tracer: str, keep_whole) -> Captured:
    if tracer == "export":
        return _export_fallback(model, example_inputs, None, keep_whole)
    auto: Dict[str, str] = {}
    for _ in range(MAX_AUTO_LEAVES + 1):
        fx_tracer = _Tracer(leaves, keep_whole)  # not `tracer`: that is the user's "auto" / "fx" choice, checked below
        try:
            graph = fx_tracer.trace(model)
            break
        except Exception as exc:  # fx raises many types; we turn them into one actionable error
            where = fx_tracer.failed_in[0] if fx_tracer.failed_in else ""
            if not where:
                if tracer == "fx":  # fx was asked for: no silent switch to torch.export
                    raise TraceError(_message(model, exc) + " (tracer='fx' was asked for; tracer='auto' or "
                                     "'export' would try torch.export)") from exc
                return _export_fallback(model, example_inputs, exc, keep_whole)
            auto[where] = f"untraceable by torch.fx ({_failing_line(exc)}: {exc.__class__.__name__}: {_first_line(exc)})"
            log.warning("structured: module %r cannot be traced; it is kept whole: %s", where, auto[where])
            leaves.append(where)
    else:
        raise TraceError(f"gave up after making {MAX_AUTO_LEAVES} untraceable modules opaque: {sorted(auto)}")
    if auto and tracer == "auto":  # torch.export sees inside what fx had to keep whole: prefer it when it works
        try:
            return _export_fallback(model, example_inputs, None, keep_whole)
        except TraceError as exc:
            log.info("structured: torch.export cannot capture %s either (%s); keeping %s whole",
                     type(model).__name__, _first_line(exc), sorted(auto))
    gm = fx.GraphModule(fx_tracer.root, graph, model.__class__.__name__)
    args = _placeholder_args(gm, example_inputs)
    _propagate_shapes(gm, args)
    return Captured(gm=gm, args=args, auto_leaves=auto)


def _export_fallback(model: nn.Module, example_inputs: Inputs, fx_error, keep_whole=None) -> Captured:
    """fx failed in the model's own forward (or export was asked for): capture with torch.export (non-strict)."""
    from .export_capture import export_graph

    if fx_error is not None:
        log.info("structured: torch.fx cannot trace %s (%s); using torch.export", type(model).__name__, _first_line(fx_error))
    try:
        gm = export_graph(model, example_inputs, keep_whole)
    except Exception as exc:
        if fx_error is None:
            raise TraceError(f"torch.export (non-strict) cannot capture {type(model).__name__}: {_first_line(exc)}") from exc
        raise TraceError(_message(model, fx_error) + f" torch.export (non-strict) failed too: {_first_line(exc)}") from exc
    args = _placeholder_args(gm, example_inputs)
    _propagate_shapes(gm, args)
    return Captured(gm=gm, args=args, exported=True)


def _placeholder_args(gm: fx.GraphModule, example_inputs: Inputs) -> Tuple[Any, ...]:
    pos, kw = split_inputs(example_inputs)
    pos = list(pos)
    out = []
    for node in gm.graph.nodes:
        if node.op != "placeholder":
            continue
        name = str(node.target).lstrip("*")
        if pos:
            out.append(pos.pop(0))
        elif name in kw:
            out.append(kw[name])
        elif node.args:
            out.append(node.args[0])
        else:
            raise TraceError(f"no example input for the model argument {name!r}; pass it in example_inputs")
    return tuple(out)


class TensorMeta(NamedTuple):
    """Shape and dtype of one example value (what ``node.meta['tensor_meta']`` holds)."""

    shape: Tuple[int, ...]
    dtype: torch.dtype


def _meta(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return TensorMeta(tuple(value.shape), value.dtype)
    if isinstance(value, (tuple, list)):
        return tuple(_meta(v) for v in value)
    if isinstance(value, dict):
        return {k: _meta(v) for k, v in value.items()}
    return None


class _ShapeRecorder(fx.Interpreter):
    """Runs the graph once and stores every value's shape in its node's meta (a light ShapeProp)."""

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        n.meta["tensor_meta"] = _meta(result)
        return result


def _propagate_shapes(gm: fx.GraphModule, args: Tuple[Any, ...]) -> None:
    modes = {m: m.training for m in gm.modules()}
    gm.eval()
    try:
        with torch.no_grad():
            _ShapeRecorder(gm).run(*args)
    except Exception as exc:
        raise TraceError(
            f"the traced graph could not run on the example inputs ({_failing_line(exc)}: {exc}). "
            "Check the example inputs, or mark the module that fails as a leaf (leaf_modules=[...]) or ignore it."
        ) from exc
    finally:
        for m, was in modes.items():
            m.train(was)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else ""


def _failing_line(exc: BaseException) -> str:
    """file:line `source` of the innermost frame outside torch — the op fx could not trace."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/torch/" not in f.filename.replace("\\", "/")]
    if not frames:
        return "inside torch"
    f = frames[-1]
    return f"{f.filename}:{f.lineno} `{(f.line or '').strip()}`"


def _message(model: nn.Module, exc: BaseException) -> str:
    return (
        f"torch.fx cannot trace {type(model).__name__}.forward: the failing op is at {_failing_line(exc)} "
        f"({exc.__class__.__name__}: {_first_line(exc)}). Workarounds: move the data-dependent code into a "
        "submodule and mark it as a leaf (leaf_modules=['name'] or leaf_modules=[ModuleType]) or list it in "
        "ignore=[...], so it is kept whole; or replace Python control flow on tensor values with tensor ops."
    )
