"""``sparsify``: measure dense against sparse kernels per Linear layer and keep whichever is faster."""
from __future__ import annotations

import difflib
import functools
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .._inputs import with_batch_size
from ..errors import ConfigError
from ..match import as_patterns, check_patterns, selects
from ..modelutils import clone_model
from ..unstructured.masks import finalize, masked_modules
from . import native
from .linear import FORMATS, SCIPY_DTYPES, SparseLinear, _blocksize, is_dense_linear
from .record import RECORD_ATTR, sparse_layers
from .timing import interleaved_median

DEFAULTS: Dict[str, Any] = {
    "inplace": False,  # change the given model (else a copy)
    "min_speedup": 1.1,  # sparse replaces dense only if dense_ms / sparse_ms >= this
    "min_sparsity": 0.5,  # layers sparser than this are measured; the rest stay dense unmeasured
    "formats": FORMATS,  # kernels tried: csr (torch/MKL), bsr (torch, block-structured weights), scipy, native
    "blocksize": None,  # bsr block (rows, cols) or int; None: the largest of 16/8/4/2 that fits and is filled enough
    "bsr_min_fill": 0.5,  # auto blocksize: stored blocks must be at least this full (else bsr is not tried)
    "repeats": 15,  # timed rounds (interleaved, shuffled; the median counts)
    "warmup": 3,  # untimed calls per candidate first
    "threads": None,  # torch.set_num_threads while measuring (restored after); None: the current setting
    "force": None,  # a format: use it for every eligible layer without timing (tests, or a known deploy target)
    "timer": None,  # timer(layer, {label: fn}) -> {label: ms}; default interleaved_median(repeats, warmup)
    "include": None,  # module patterns (prunekit.match) of the layers to consider
    "exclude": None,  # module patterns to leave dense
    "atol": 1e-4,  # a candidate whose outputs differ from dense by more (relative to the output scale) is refused
}
OPTIONS: Tuple[str, ...] = tuple(DEFAULTS)
AUTO_BLOCKS = (16, 8, 4, 2)


class SparsifyTable(list):
    """The per-layer decision rows (dicts) of :func:`sparsify`; ``str(table)`` / ``.table()`` print them.

    Row keys: ``name``, ``shape`` (out, in), ``input`` (the timed input shape), ``sparsity``, ``dense_ms``,
    ``sparse_ms`` ({format: ms, None where not measured}), ``choice`` ("dense" or a format), ``speedup``
    (dense_ms / the best sparse ms), ``blocksize`` and ``note`` (why a layer or format was skipped).
    """

    def __init__(self, rows=(), *, batch_size: int = 1, threads: int = 1, min_speedup: float = 1.1,
                 formats: Sequence[str] = FORMATS, finalized: bool = False, forced: Optional[str] = None):
        super().__init__(rows)
        self.batch_size, self.threads, self.min_speedup = batch_size, threads, min_speedup
        self.formats, self.finalized, self.forced = tuple(formats), finalized, forced

    def table(self) -> str:
        fmt_cols = list(self.formats)
        head = ["layer", "shape", "sparsity", "dense ms"] + [f"{f} ms" for f in fmt_cols] + ["choice", "speedup", "note"]
        lines = [head]
        for r in self:
            ms = r.get("sparse_ms") or {}
            lines.append([r["name"], "x".join(str(s) for s in r["shape"]), f"{r['sparsity']:.1%}",
                          _ms(r.get("dense_ms"))] + [_ms(ms.get(f)) for f in fmt_cols]
                         + [r["choice"], f"{r['speedup']:.2f}x" if r.get("speedup") else "-", r.get("note") or ""])
        widths = [max(len(str(row[i])) for row in lines) for i in range(len(head))]
        out = [f"sparse kernels at batch {self.batch_size}, {self.threads} thread(s), min_speedup {self.min_speedup}"
               + (f", forced {self.forced!r} (not timed)" if self.forced else "")
               + ("; masks finalized first" if self.finalized else "")]
        for i, row in enumerate(lines):
            out.append("  ".join(str(c).ljust(w) if j in (0, len(head) - 1, len(head) - 3) else str(c).rjust(w)
                                 for j, (c, w) in enumerate(zip(row, widths))).rstrip())
            if i == 0:
                out.append("  ".join("-" * w for w in widths))
        chosen = sum(r["choice"] != "dense" for r in self)
        out.append(f"{chosen} of {len(self)} Linear layer(s) sparse")
        return "\n".join(out)

    def __str__(self) -> str:
        return self.table()

    __repr__ = list.__repr__


def _ms(v) -> str:
    return "-" if v is None else f"{v:.4f}" if v < 0.01 else f"{v:.3f}"


def check_options(options: Dict[str, Any], batch_size: Any) -> Dict[str, Any]:
    unknown = [k for k in options if k not in DEFAULTS]
    if unknown:
        hint = difflib.get_close_matches(unknown[0], OPTIONS, n=1)
        raise ConfigError(f"prunekit.sparsify has no option {unknown[0]!r}"
                          + (f" (did you mean {hint[0]!r}?)" if hint else "")
                          + f"; its options are batch_size, {', '.join(OPTIONS)}")
    opts = {**DEFAULTS, **options}
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive int, got {batch_size!r}")
    for key in ("min_speedup", "min_sparsity", "bsr_min_fill", "atol"):
        v = opts[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or v != v:
            raise ConfigError(f"{key} must be a number >= 0, got {v!r}")
    if opts["min_sparsity"] > 1 or opts["bsr_min_fill"] > 1:
        raise ConfigError("min_sparsity and bsr_min_fill are fractions in [0, 1]")
    for key, low in (("repeats", 1), ("warmup", 0)):
        v = opts[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ConfigError(f"{key} must be an int >= {low}, got {v!r}")
    threads = opts["threads"]
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"threads must be None or a positive int, got {threads!r}")
    formats = opts["formats"]
    formats = (formats,) if isinstance(formats, str) else formats
    try:
        formats = tuple(formats)
    except TypeError:
        raise ConfigError(f"formats must be a list of {', '.join(FORMATS)}, got {formats!r}") from None
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ConfigError(f"formats must be a non-empty list of {', '.join(FORMATS)}, got {opts['formats']!r}")
    opts["formats"] = tuple(dict.fromkeys(formats))
    if opts["force"] is not None and opts["force"] not in FORMATS:
        raise ConfigError(f"force must be None or one of {', '.join(FORMATS)}, got {opts['force']!r}")
    if opts["blocksize"] is not None:
        opts["blocksize"] = _blocksize(opts["blocksize"])
    if opts["timer"] is not None and not callable(opts["timer"]):
        raise ConfigError(f"timer must be callable timer(layer, {{label: fn}}) -> {{label: ms}}, got {opts['timer']!r}")
    if not isinstance(opts["inplace"], bool):
        raise ConfigError(f"inplace must be True or False, got {opts['inplace']!r}")
    return opts


def choose_blocksize(weight: torch.Tensor, blocksize: Optional[Tuple[int, int]], min_fill: float,
                     forced: bool = False) -> Tuple[Optional[Tuple[int, int]], str]:
    """``(blocksize, note)``: the given one if it divides the shape, else the largest square auto block that
    divides it with stored blocks at least ``min_fill`` full (forced: the largest that divides); None + why not."""
    out_f, in_f = weight.shape
    if blocksize is not None:
        if out_f % blocksize[0] or in_f % blocksize[1]:
            return None, f"bsr: blocksize {blocksize} does not divide {out_f}x{in_f}"
        return blocksize, ""
    nz = weight != 0
    fits = [b for b in AUTO_BLOCKS if out_f % b == 0 and in_f % b == 0]
    if not fits:
        return None, f"bsr: no block of {'/'.join(map(str, AUTO_BLOCKS))} divides {out_f}x{in_f}"
    best_fill = 0.0
    for b in fits:
        blocks = nz.reshape(out_f // b, b, in_f // b, b).any(dim=(1, 3))
        stored = int(blocks.sum()) * b * b
        fill = int(nz.sum()) / stored if stored else 1.0
        best_fill = max(best_fill, fill)
        if fill >= min_fill:
            return (b, b), ""
    if forced:
        return (fits[-1], fits[-1]), ""
    return None, f"bsr: unstructured (blocks at most {best_fill:.0%} full)"


def sparsify(model: nn.Module, example_inputs, *, batch_size: int = 1, **options) -> Tuple[nn.Module, SparsifyTable]:
    """Replace each ``nn.Linear`` by a :class:`SparseLinear` where a sparse kernel measures faster.

    Masks (``weight_orig`` / ``weight_mask``) are finalized first. The model runs once on
    ``example_inputs`` resized to ``batch_size`` (sliced or tiled along dim 0) and every Linear's input
    is captured; each layer sparser than ``min_sparsity`` is then timed on that input: its dense forward
    against a SparseLinear per format in ``formats`` (interleaved shuffled rounds, the median, under
    ``torch.inference_mode`` and the current thread count, or ``threads`` if given, restored after).
    A layer becomes sparse only where ``dense_ms / sparse_ms >= min_speedup``; a candidate whose outputs
    differ from the dense layer's is refused. Layers the forward never calls (an ``nn.MultiheadAttention``'s
    ``out_proj``) and Linear subclasses with their own forward stay dense.

    Returns ``(model, table)``: the model (a copy unless ``inplace=True``) and a :class:`SparsifyTable`
    with one row per Linear. Decisions are recorded on ``model._prunekit_sparse``; ``prunekit.save`` stores
    them and ``prunekit.load`` rebuilds the same layers without measuring again. Timings are specific to
    the machine, thread count and batch size: rerun ``prunekit.sparsify`` on the deploy machine.

    Options: see :data:`DEFAULTS` (an unknown option is a :class:`ConfigError` listing them).
    """
    opts = check_options(options, batch_size)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    include, exclude = as_patterns(opts["include"], "include"), as_patterns(opts["exclude"], "exclude")
    check_patterns(model, "include", include, error=ConfigError)
    check_patterns(model, "exclude", exclude, error=ConfigError)
    from ..api import run_once

    finalized = any(True for _ in masked_modules(model))
    model = model if opts["inplace"] else clone_model(model)
    if finalized:
        finalize(model)
    inputs = capture_inputs(model, with_batch_size(example_inputs, batch_size), run_once)
    timer: Callable = opts["timer"] or functools.partial(interleaved_median, repeats=opts["repeats"],
                                                         warmup=opts["warmup"])
    old_threads = torch.get_num_threads()
    if opts["threads"] is not None:
        torch.set_num_threads(opts["threads"])
    try:
        threads = torch.get_num_threads()
        rows = [decide(model, name, layer, inputs.get(name), opts, timer, include, exclude)
                for name, layer in list(model.named_modules()) if isinstance(layer, (nn.Linear, SparseLinear))]
    finally:
        torch.set_num_threads(old_threads)
    setattr(model, RECORD_ATTR, {n: m.record() for n, m in sparse_layers(model)})
    return model, SparsifyTable(rows, batch_size=batch_size, threads=threads, min_speedup=opts["min_speedup"],
                                formats=opts["formats"], finalized=finalized, forced=opts["force"])


def capture_inputs(model: nn.Module, inputs, run_once) -> Dict[str, torch.Tensor]:
    """The first input tensor each plain Linear receives when ``model`` runs on ``inputs`` (eval, no grad)."""
    seen: Dict[str, torch.Tensor] = {}
    handles = []
    for name, module in model.named_modules():
        if is_dense_linear(module):
            def hook(mod, args, name=name):
                if name not in seen and args and isinstance(args[0], torch.Tensor):
                    seen[name] = args[0].detach().clone()
            handles.append(module.register_forward_pre_hook(hook))
    try:
        run_once(model, inputs)
    finally:
        for h in handles:
            h.remove()
    return seen


def decide(model: nn.Module, name: str, layer: nn.Module, x: Optional[torch.Tensor], opts: Dict[str, Any],
           timer: Callable, include: list, exclude: list) -> Dict[str, Any]:
    """Time one layer, replace it if a sparse kernel wins; its table row."""
    if isinstance(layer, SparseLinear):
        return _row(name, layer.out_features, layer.in_features, layer.sparsity, None, None, {}, layer.format, None,
                    "already sparse", layer.blocksize)
    w = layer.weight.detach()
    out_f, in_f = w.shape
    sparsity = 1.0 - int(torch.count_nonzero(w)) / w.numel() if w.numel() else 0.0
    row = functools.partial(_row, name, out_f, in_f, sparsity, None if x is None else tuple(x.shape))
    if not name:
        return row(None, {}, "dense", None, "the model itself is the Linear; sparsify a model that holds it")
    if not is_dense_linear(layer):
        return row(None, {}, "dense", None, f"{type(layer).__name__} has its own forward")
    if (include and not selects(model, name, include)) or selects(model, name, exclude):
        return row(None, {}, "dense", None, "not selected (include / exclude)")
    if x is None:
        return row(None, {}, "dense", None, "not called by the model's forward")
    if sparsity < opts["min_sparsity"]:
        return row(None, {}, "dense", None, f"sparsity below min_sparsity {opts['min_sparsity']:g}")
    candidates: Dict[str, nn.Module] = {}
    notes: List[str] = []
    formats = (opts["force"],) if opts["force"] else opts["formats"]
    with torch.inference_mode():
        ref = layer(x)
    for fmt in formats:
        made, why = candidate(layer, fmt, x, ref, opts)
        if made is None:
            notes.append(why)
        else:
            candidates[fmt] = made
    if opts["force"]:
        fmt = opts["force"]
        if fmt not in candidates:
            return row(None, {fmt: None}, "dense", None, "; ".join(notes))
        _replace(model, name, candidates[fmt])
        return row(None, {fmt: None}, fmt, None, "forced", candidates[fmt].blocksize)
    if not candidates:
        return row(None, {f: None for f in formats}, "dense", None, "; ".join(notes))
    fns = {"dense": functools.partial(layer, x)}
    fns.update({f: functools.partial(m, x) for f, m in candidates.items()})
    ms = timer(name, fns)
    dense_ms = float(ms["dense"])
    sparse_ms = {f: (float(ms[f]) if f in candidates else None) for f in formats}
    best = min(candidates, key=lambda f: sparse_ms[f])
    speedup = dense_ms / sparse_ms[best] if sparse_ms[best] > 0 else float("inf")
    if speedup >= opts["min_speedup"]:
        _replace(model, name, candidates[best])
        return row(dense_ms, sparse_ms, best, speedup, "; ".join(notes), candidates[best].blocksize)
    notes.insert(0, f"dense wins ({best} {speedup:.2f}x < {opts['min_speedup']:g}x)")
    return row(dense_ms, sparse_ms, "dense", speedup, "; ".join(notes))


def candidate(layer: nn.Linear, fmt: str, x: torch.Tensor, ref: torch.Tensor,
              opts: Dict[str, Any]) -> Tuple[Optional[SparseLinear], str]:
    """A SparseLinear of ``fmt`` whose outputs match the dense layer's, or ``(None, why not)``."""
    w = layer.weight.detach()
    blocksize = None
    if fmt == "bsr":
        blocksize, why = choose_blocksize(w, opts["blocksize"], opts["bsr_min_fill"], forced=opts["force"] == "bsr")
        if blocksize is None:
            return None, why
    if fmt == "scipy" and (w.device.type != "cpu" or w.dtype not in SCIPY_DTYPES):
        return None, f"scipy: needs float32/float64 on the CPU (got {w.dtype} on {w.device.type})"
    if fmt == "native":
        why = native.unsupported(w.dtype, w.device) or native.unsupported(x.dtype, x.device)
        if not why:
            ok, where = native.status()
            why = "" if ok else f"unavailable ({where})"
        if why:
            return None, f"native: {why}"
    try:
        made = SparseLinear.from_linear(layer, format=fmt, blocksize=blocksize).train(layer.training)
        with torch.inference_mode():
            out = made(x)
    except Exception as exc:  # a kernel this torch / device lacks: that format is not available here
        return None, f"{fmt}: {type(exc).__name__}: {' '.join(str(exc).split())[:80]}"
    scale = float(ref.abs().max()) if ref.numel() else 0.0
    if out.shape != ref.shape or not torch.allclose(out, ref, rtol=1e-3, atol=opts["atol"] * max(scale, 1.0)):
        return None, f"{fmt}: outputs differ from the dense layer"
    return made, ""


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def _row(name, out_f, in_f, sparsity, input_shape, dense_ms, sparse_ms, choice, speedup, note="", blocksize=None):
    return {"name": name, "shape": (out_f, in_f), "input": input_shape, "sparsity": sparsity, "dense_ms": dense_ms,
            "sparse_ms": dict(sparse_ms), "choice": choice, "speedup": speedup,
            "blocksize": list(blocksize) if blocksize else None, "note": note}
