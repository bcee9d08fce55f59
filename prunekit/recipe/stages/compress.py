"""The ``compress:`` recipe stage: Deep Compression (Han et al. 2016) of the pruned, fine-tuned model.

Weight sharing (:func:`prunekit.compress.share_weights`: ``2**bits`` centroids per layer), a centroid
fine-tune on the training split (:func:`prunekit.compress.finetune_centroids`, the validation split
only picks its best epoch), then the entropy-coded file (``prunekit.save(..., codec="deep")``) in the
output folder. The file is read back with ``prunekit.load`` and its outputs must equal the in-memory
shared model's bit for bit (else :class:`OutputError`). The shared model becomes ``ctx.model``, so
quantize / export / the final measure see it.

results.json gets ``compress``: the resolved widths, the sizes of
:func:`prunekit.compress.deep_compression_sizes` and ``waterfall``, the paper's table: one row per step
(dense float32, pruned, + weight sharing, + centroid fine-tune, + entropy coding, the file) with its
bytes, how many times smaller than dense it is and its test accuracy.

Under torchrun every rank shares and fine-tunes (the model changes on all of them, like ``finetune:``);
rank 0 alone evaluates, writes the file and checks it (:func:`prunekit.recipe.runner.on_main`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Dict, Literal, Optional, Union

import torch

from ...errors import ConfigError, OutputError
from ...train.loop import FitConfig
from . import ORDER_COMPRESS, RunContext, register_stage

Bits = Union[int, Dict[str, Optional[int]], None]


@dataclass
class CentroidFitConfig(FitConfig):
    """The centroid fine-tune (``compress.finetune``): finetune_centroids' defaults, one epoch of Adam at 1e-4."""

    epochs: int = 1  # 0: no centroid fine-tune
    lr: float = 1e-4
    scheduler: Literal["cosine", "step", "none"] = "none"


@dataclass
class CompressConfig:
    """Deep Compression of the final model (recipe ``compress:``)."""

    bits: Bits = None  # an int (every Linear / conv), or {conv: 8, linear: 5, <module pattern>: n | null}; null: 8/5
    finetune: CentroidFitConfig = field(default_factory=CentroidFitConfig)  # epochs 0: share only
    centroids_only: bool = False  # freeze every other parameter (biases, norms) during the fine-tune, as the paper
    filename: str = "model.deep"  # written in the run's output folder

    def validate(self) -> None:
        from ...compress.sharing import check_bits

        if isinstance(self.bits, dict):
            for key, value in self.bits.items():
                check_bits(value, f"compress.bits[{key!r}]")
        elif self.bits is not None:
            check_bits(self.bits, "compress.bits")
        name = PurePath(self.filename)
        if name.is_absolute() or ".." in name.parts or not name.name:
            raise ConfigError(f"compress.filename must be a relative file name inside the run's output folder, "
                              f"got {self.filename!r}")


def check_compress(ctx: RunContext, cfg: CompressConfig) -> None:
    """Pre-flight: the widths and module patterns of ``bits`` fit ctx.model, and it has weights to share."""
    from ...compress import resolve_bits

    try:
        widths = resolve_bits(ctx.model, cfg.bits)
    except ConfigError as exc:
        raise ConfigError(f"recipe section 'compress': {exc}") from exc
    if not widths:
        raise ConfigError("recipe section 'compress': the model has no Linear / conv weight to share at these bits "
                          f"({cfg.bits!r}); name a layer or width, or remove compress:")


STEPS = (  # (key, label, sizes key, accuracy key) of the waterfall, in order
    ("dense", "dense float32", "dense_fp32", "dense"),
    ("pruned", "pruned (sparse)", "pruned", "pruned"),
    ("shared", "+ weight sharing", "shared", "shared"),
    ("finetuned", "+ centroid fine-tune", "shared", "finetuned"),
    ("entropy_coded", "+ entropy coding", "entropy_coded", "file"),
    ("file", "file (with header)", "file", "file"),
)


@register_stage("compress", config=CompressConfig, order=ORDER_COMPRESS, check=check_compress,
                help="Deep Compression: weight sharing + centroid fine-tune + entropy-coded file (model.deep)")
def run_compress(ctx: RunContext, cfg: CompressConfig) -> None:
    from ...compress import finetune_centroids, share_weights
    from ..runner import on_main

    pruned = ctx.model
    shared, layers = share_weights(pruned, cfg.bits)  # a copy: the pruned model stays as it was
    accuracy: Dict[str, Optional[float]] = {}

    def measure_inputs():
        accuracy["dense"] = _dense_accuracy(ctx)
        accuracy["pruned"] = _test_accuracy(ctx, pruned)
        accuracy["shared"] = _test_accuracy(ctx, shared)

    on_main(measure_inputs)
    fit_info = {"epochs": 0, "centroids_only": cfg.centroids_only}
    interrupted = False
    if cfg.finetune.epochs > 0:
        _, layers, result = finetune_centroids(shared, ctx.data, cfg.finetune, layers=layers,
                                               centroids_only=cfg.centroids_only, loss_fn=ctx.loss_fn,
                                               progress=ctx.progress)
        ctx.history.extend(result.history)
        interrupted = result.interrupted
        fit_info.update(epochs=len(result.history), best_epoch=result.best_epoch,
                        val_accuracy=result.best_val_accuracy, lr=cfg.finetune.lr)
    ctx.model = shared
    if interrupted:  # Ctrl-C in the fine-tune: keep its weights, write no file; the runner stops the run
        ctx.record("compress", interrupted=True, **fit_info)
        return
    info: dict = {}
    on_main(lambda: info.update(_write_and_check(ctx, cfg, shared, accuracy, fit_info)))
    if info:
        ctx.results["compress"] = info
        ctx.artifacts["deep"] = info["path"]
    ctx.record("compress", **{k: v for k, v in info.items() if not isinstance(v, (dict, list))},
               interrupted=False, **({} if info else fit_info))


def _write_and_check(ctx: RunContext, cfg: CompressConfig, shared, accuracy: dict, fit_info: dict) -> dict:
    """Rank 0: write the file, reload it, check its outputs bit for bit, and build the waterfall."""
    from ...compress import deep_compression_sizes, resolve_bits
    from ...io import load, save
    from ...measure import classification_metrics

    path = ctx.out_dir / cfg.filename
    path.parent.mkdir(parents=True, exist_ok=True)
    shared._prunekit_spec = getattr(shared, "_prunekit_spec", ctx.model_spec)
    save(shared, path, codec="deep", model_spec=ctx.model_spec or None, metadata={"stage": "compress"})
    loaded = load(path, _architecture(ctx, shared))
    x, y = ctx.data.x_test, ctx.data.y_test
    ours, theirs = _logits(shared, x), _logits(loaded, x)
    if ours.shape != theirs.shape or not torch.equal(ours, theirs):
        diff = (ours - theirs).abs().max().item() if ours.shape == theirs.shape else float("nan")
        raise OutputError(f"compress: the model read back from {str(path)!r} does not reproduce the shared model's "
                          f"test outputs exactly (max |difference| {diff:.3g}); the file is not trusted")
    accuracy["finetuned"] = float(classification_metrics(y.numpy(), ours.argmax(1).numpy(),
                                                         ctx.data.num_classes)["accuracy"])
    accuracy["file"] = float(classification_metrics(y.numpy(), theirs.argmax(1).numpy(),
                                                     ctx.data.num_classes)["accuracy"])
    assert accuracy["file"] == accuracy["finetuned"], "identical outputs must give the same accuracy"
    sizes = deep_compression_sizes(shared)
    layer_rows = [{k: s[k] for k in ("name", "bits", "numel", "kept", "dense_fp32", "pruned", "shared", "stored",
                                     "positions", "positions_codec", "indices_codec") if k in s}
                  for s in sizes.pop("layers") if s.get("kind") == "shared"]
    sizes.pop("ratios", None)
    sizes["file"] = path.stat().st_size  # the file as written (with the run's model spec in its header)
    dense = sizes["dense_fp32"]
    unpruned = _unpruned_fp32(ctx, shared)
    if unpruned is not None and unpruned != dense:  # structured pruning shrank the layers: dense means unpruned
        sizes["dense_fp32_pruned_shape"], sizes["dense_fp32"] = dense, unpruned
        dense = unpruned
    ran_finetune = fit_info["epochs"] > 0
    waterfall = []
    for key, label, size_key, acc_key in STEPS:
        if key == "finetuned" and not ran_finetune:
            continue
        acc = accuracy.get(acc_key)
        waterfall.append({"step": key, "label": label, "bytes": int(sizes[size_key]),
                          "ratio": dense / sizes[size_key] if sizes[size_key] else float("inf"),
                          "test_accuracy": acc,
                          "delta_vs_dense": (acc - accuracy["dense"]) if key != "dense" and acc is not None
                          and accuracy.get("dense") is not None else None})
    return {"bits": resolve_bits(shared, cfg.bits), "requested_bits": cfg.bits, "path": str(path),
            "file_bytes": sizes["file"], "ratio": dense / sizes["file"], "sizes": sizes,
            "ratios": {k: dense / sizes[k] for k in ("pruned", "shared", "entropy_coded", "file") if sizes[k]},
            "test_accuracy": accuracy["file"], "accuracy": dict(accuracy), "finetune": fit_info,
            "verified": True, "waterfall": waterfall, "layers": layer_rows}


def _architecture(ctx: RunContext, shared):
    """What prunekit.load builds the model from: the run's model spec (a fresh instance), else the shared model."""
    spec = ctx.model_spec or {}
    if spec.get("name"):
        from ...models import create_model

        return lambda: create_model(spec["name"], **dict(spec.get("kwargs") or {}))
    return shared


def _logits(model, x) -> torch.Tensor:
    from ...train.loop import predict

    with torch.no_grad():
        return predict(model, x)


def _test_accuracy(ctx: RunContext, model) -> float:
    from ...train.loop import evaluate

    return float(evaluate(model, ctx.data.x_test, ctx.data.y_test, num_classes=ctx.data.num_classes,
                          loss_fn=ctx.loss_fn)["accuracy"])


def _dense_accuracy(ctx: RunContext) -> Optional[float]:
    """Test accuracy of the unpruned model: the run's ``before`` measure, else the teacher evaluated now."""
    before = ctx.results.get("before") or {}
    if isinstance(before.get("accuracy"), float):
        return before["accuracy"]
    return _test_accuracy(ctx, ctx.teacher) if ctx.teacher is not None else None


def _unpruned_fp32(ctx: RunContext, shared) -> Optional[int]:
    """Float32 bytes of the unpruned model (ctx.teacher) when structured pruning changed the parameter count,
    counted as deep_compression_sizes counts dense_fp32; None when the shapes are the same (or there is no teacher)."""
    if ctx.teacher is None:
        return None
    if sum(p.numel() for p in ctx.teacher.parameters()) == sum(p.numel() for p in shared.parameters()):
        return None
    return sum(t.numel() * 4 if t.is_floating_point() else t.numel() * t.element_size()
               for name, t in ctx.teacher.state_dict().items() if not name.endswith("_mask"))
