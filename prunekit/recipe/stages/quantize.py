"""The ``quantize:`` recipe stage: int8 of the fine-tuned model, written as model.int8.onnx and checked against float32.

It runs after fine-tuning and before export, on rank 0 only, and leaves ``ctx.model`` (float32) as it is:
results.json gets ``quantize`` (mode, backend, file bytes and ratio to the float32 ONNX, deviation and top-1
agreement vs float32 on the validation split, int8 and float32 accuracy on the test split, batch-1 latency).
Static calibration reads training-split batches only.
"""
from __future__ import annotations

import io
import statistics
import time
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Literal, Optional

import torch

from ...errors import ConfigError
from . import ORDER_QUANTIZE, RunContext, register_stage


@dataclass
class QuantizeConfig:
    """int8 quantization (recipe ``quantize:``); ``options`` are prunekit.int8.quantize's backend options."""

    mode: Literal["dynamic", "static"] = "dynamic"  # static: activation ranges from training batches (best for CNNs)
    backend: Literal["onnxruntime", "torch"] = "onnxruntime"  # torch: dynamic int8 of Linear layers, no file
    calibration_batches: int = 16  # static: training-split batches read for the activation ranges
    batch_size: int = 64  # size of those batches and of the validation / test batches compared
    filename: str = "model.int8.onnx"  # written in the run's output folder (onnxruntime backend)
    verify: bool = True  # deviation / top-1 agreement vs float32 on val, int8 accuracy on test
    latency: bool = True  # batch-1 latency of int8 and float32 side by side (one thread, median)
    options: dict = field(default_factory=dict)  # e.g. {per_channel: false, calibrate_method: entropy, op_types: [...]}

    def validate(self) -> None:
        if self.calibration_batches < 1 or self.batch_size < 1:
            raise ConfigError(f"quantize.calibration_batches and quantize.batch_size must be >= 1, got "
                              f"{self.calibration_batches} and {self.batch_size}")
        name = PurePath(self.filename)
        if name.is_absolute() or ".." in name.parts or not name.name or not self.filename.endswith(".onnx"):
            raise ConfigError(f"quantize.filename must be a relative .onnx file name inside the run's output folder, "
                              f"got {self.filename!r}")

    def request(self) -> dict:
        """The keyword options of prunekit.int8.quantize this section asks for."""
        opts = dict(self.options)
        if "calibration_batches" in opts:
            raise ConfigError("set quantize.calibration_batches directly, not inside quantize.options")
        if self.mode == "static":
            opts["calibration_batches"] = self.calibration_batches
        return opts


def check_quantize(ctx: RunContext, cfg: QuantizeConfig) -> None:
    """Pre-flight: options valid for the backend and mode, and onnxruntime importable when it is the backend."""
    from ...int8 import check_request

    check_request(cfg.mode, cfg.backend, require_calibration=False, **cfg.request())


def training_batches(ctx: RunContext, cfg: QuantizeConfig) -> list:
    """The first ``calibration_batches`` shuffled batches of the training split: calibration never sees val / test."""
    loader = ctx.data.loader("train", cfg.batch_size, shuffle=True, seed=ctx.seed)
    return [x for _, (x, _y) in zip(range(cfg.calibration_batches), loader)]


@register_stage("quantize", config=QuantizeConfig, order=ORDER_QUANTIZE, check=check_quantize, main_only=True,
                help="int8 quantization (onnxruntime dynamic / static, or torch dynamic), checked against float32")
def run_quantize(ctx: RunContext, cfg: QuantizeConfig) -> None:
    from ...int8 import compare, quantize

    calibration = training_batches(ctx, cfg) if cfg.mode == "static" else None
    path = ctx.out_dir / cfg.filename if cfg.backend == "onnxruntime" else None
    qmodel = quantize(ctx.model, ctx.example_inputs, mode=cfg.mode, backend=cfg.backend, calibration=calibration,
                      path=path, **cfg.request())
    info = {"mode": cfg.mode, "backend": cfg.backend, **_sizes(qmodel, ctx.model)}
    if calibration is not None:
        info["calibration"] = {"split": "train", "batches": len(calibration),
                               "samples": sum(len(x) for x in calibration)}
    if path is not None:
        info["path"] = str(path)
        ctx.artifacts["int8_onnx"] = str(path)
    if cfg.verify:
        val = compare(qmodel, ctx.model, ctx.data.loader("val", cfg.batch_size))
        test = compare(qmodel, ctx.model, ctx.data.loader("test", cfg.batch_size))
        info.update(max_abs_diff=val.max_abs_diff, mean_abs_diff=val.mean_abs_diff,
                    top1_agreement=val.top1_agreement, val_samples=val.samples, test_accuracy=test.accuracy,
                    float_test_accuracy=test.float_accuracy, test_top1_agreement=test.top1_agreement)
    if cfg.latency:
        info.update(_latency_b1(qmodel, ctx.model, ctx.example_inputs))
    ctx.results["quantize"] = info
    ctx.record("quantize", **{k: v for k, v in info.items() if not isinstance(v, dict)})


def _sizes(qmodel, model) -> dict:
    """Bytes of the int8 file (onnxruntime) or serialized state_dict (torch), and the ratio to float32's."""
    if hasattr(qmodel, "file_bytes"):
        size, base = qmodel.file_bytes(), getattr(qmodel, "float_bytes", None)
    else:
        size, base = _state_bytes(qmodel), _state_bytes(model)
    return {"bytes": size, "float32_bytes": base, "size_ratio": (size / base) if base else None}


def _state_bytes(module) -> int:
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    return buf.tell()


def _latency_b1(qmodel, model, example_inputs, repeats: int = 30, warmup: int = 5) -> dict:
    """Median batch-1 forward time of both models with one thread (onnxruntime: a one-thread session)."""
    from ..._inputs import run_model, with_batch_size
    from ...int8 import OrtModule
    from ...int8.torch_backend import quiet_ao_deprecations
    from ...measure.latency import eval_state, num_threads

    x = with_batch_size(example_inputs, 1)
    runner = OrtModule(qmodel.path, threads=1) if isinstance(qmodel, OrtModule) else qmodel

    def median_ms(fn) -> float:
        times = []
        for i in range(warmup + repeats):
            t = time.perf_counter()
            fn()
            if i >= warmup:
                times.append((time.perf_counter() - t) * 1e3)
        return statistics.median(times)

    with eval_state(model), num_threads(1), torch.inference_mode(), quiet_ao_deprecations():
        float_ms = median_ms(lambda: run_model(model, x))
        int8_ms = median_ms(lambda: run_model(runner, x) if not isinstance(runner, OrtModule) else runner(x))
    return {"latency_ms_b1": int8_ms, "float32_latency_ms_b1": float_ms, "speedup_b1": float_ms / int8_ms}
