"""int8 benchmark: float32 eager vs torch dynamic int8 vs onnxruntime float32 / dynamic / static int8, CPU latency.

Usage: OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_int8.py [--threads 1] [--batches 1,64] [--repeats 30]
Models: a 784-2048-2048-10 MLP and a small transformer encoder (2 layers, d_model 256, 4 heads, 32 tokens).
Weights are random (latency does not depend on them); deviation is max |int8 - float32 eager| on random inputs.
Every runner uses ``--threads`` intra-op threads (torch.set_num_threads; onnxruntime intra_op_num_threads).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from prunekit.int8 import OrtModule, quantize
from prunekit.int8.torch_backend import quiet_ao_deprecations


class Encoder(nn.Module):
    def __init__(self, d: int = 256, heads: int = 4, layers: int = 2, classes: int = 10):
        super().__init__()
        layer = nn.TransformerEncoderLayer(d, heads, dim_feedforward=4 * d, batch_first=True, dropout=0.0)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, classes)

    def forward(self, x):
        return self.head(self.encoder(x).mean(1))


def models():
    mlp = nn.Sequential(nn.Linear(784, 2048), nn.ReLU(), nn.Linear(2048, 2048), nn.ReLU(), nn.Linear(2048, 10))
    return {"mlp 784-2048-2048-10": (mlp.eval(), lambda b: torch.randn(b, 784)),
            "transformer encoder (2x256, 32 tokens)": (Encoder().eval(), lambda b: torch.randn(b, 32, 256))}


def median_ms(fn, x, repeats: int, warmup: int = 5) -> float:
    times = []
    with torch.inference_mode(), quiet_ao_deprecations():
        for i in range(warmup + repeats):
            t = time.perf_counter()
            fn(x)
            if i >= warmup:
                times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batches", default="1,64")
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    batches = [int(b) for b in args.batches.split(",")]
    print(f"torch {torch.__version__}, threads {args.threads}")
    print(f"| model | runner | file MB | max dev | " + " | ".join(f"b{b} ms" for b in batches) + " |")
    print("|---|---|---:|---:|" + "---:|" * len(batches))
    tmp = Path(tempfile.mkdtemp())
    for name, (model, make) in models().items():
        x = make(2)
        cal = [make(16) for _ in range(8)]
        runners = {"float32 eager": (model, None)}
        with quiet_ao_deprecations():
            runners["torch dynamic int8"] = (quantize(model, x, backend="torch"), None)
        from prunekit.export import export

        export(model, x, tmp / "f32.onnx")
        runners["ORT float32"] = (OrtModule(tmp / "f32.onnx", threads=args.threads), tmp / "f32.onnx")
        for mode in ("dynamic", "static"):
            p = tmp / f"{mode}.onnx"
            quantize(model, x, mode=mode, calibration=cal, path=p)
            runners[f"ORT {mode} int8"] = (OrtModule(p, threads=args.threads), p)
        check = make(64)
        with torch.no_grad():
            ref = model(check)
        for label, (runner, path) in runners.items():
            with torch.no_grad(), quiet_ao_deprecations():
                dev = float((runner(check) - ref).abs().max())
            size = f"{path.stat().st_size / 1e6:.1f}" if path else "—"
            ms = [median_ms(runner, make(b), args.repeats) for b in batches]
            print(f"| {name} | {label} | {size} | {dev:.1e} | " + " | ".join(f"{m:.3f}" for m in ms) + " |")


if __name__ == "__main__":
    main()
