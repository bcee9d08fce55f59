"""int8 benchmark: float32 eager vs torch dynamic int8 vs onnxruntime float32 / dynamic / static int8, CPU latency.

Usage: OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_int8.py [--threads 1] [--batches 1,64] [--repeats 30]
       [--round-to]
Models: a 784-2048-2048-10 MLP and a small transformer encoder (2 layers, d_model 256, 4 heads, 32 tokens).
Weights are random (latency does not depend on them); deviation is max |int8 - float32 eager| on random inputs.
Every runner uses ``--threads`` intra-op threads (torch.set_num_threads; onnxruntime intra_op_num_threads).
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from torch import nn

from prunekit.int8 import OrtModule, quantize
from prunekit.int8.torch_backend import quiet_ao_deprecations
from timing import side_by_side


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batches", default="1,64")
    ap.add_argument("--repeats", type=int, default=30, help="shuffled rounds per batch size (median)")
    ap.add_argument("--round-to", action="store_true", help="also measure round_to's effect on int8 kernels")
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
        devs = {}
        for label, (runner, path) in runners.items():
            with torch.no_grad(), quiet_ao_deprecations():
                devs[label] = float((runner(check) - ref).abs().max())
        inputs = {b: make(b) for b in batches}
        with quiet_ao_deprecations():  # every runner in every round, shuffled: load hits them alike
            ms = {b: side_by_side({label: (lambda r=runner, x=inputs[b]: r(x)) for label, (runner, _) in runners.items()},
                                  rounds=args.repeats, threads=args.threads) for b in batches}
        for label, (runner, path) in runners.items():
            size = f"{path.stat().st_size / 1e6:.1f}" if path else "—"
            print(f"| {name} | {label} | {size} | {devs[label]:.1e} | " + " | ".join(f"{ms[b][label]:.3f}" for b in batches)
                  + " |")
    if args.round_to:
        round_to_study(args, tmp)


def round_to_study(args, tmp: Path) -> None:
    """Channel-pruned ResNet-20 (half of its MACs kept, random weights) with kept channels rounded to 1 / 8 / 16: does
    rounding help the int8 kernels? Float32 eager and ORT static int8 at batch 64, side by side."""
    import prunekit
    from prunekit.models import create_model

    torch.manual_seed(0)
    base = create_model("resnet20", in_channels=1).eval()
    x = torch.randn(64, 1, 28, 28)
    cal = [torch.randn(16, 1, 28, 28) for _ in range(4)]
    runners = {"dense float32 eager": base}
    for r in (None, 8, 16):
        slim = prunekit.prune(base, x[:1], granularity="channel", macs_target=0.5, round_to=r)
        tag = f"round_to={r or 1}"
        runners[f"{tag} float32 eager"] = slim
        runners[f"{tag} ORT static int8"] = quantize(slim, x[:1], mode="static", calibration=cal,
                                                     path=tmp / f"slim{r}.onnx")
    ms = side_by_side({k: (lambda m=m: m(x)) for k, m in runners.items()}, rounds=args.repeats, threads=args.threads)
    print(f"\nround_to and int8 (ResNet-20 1x28x28, half of the MACs kept, batch 64, {args.threads} thread(s)):")
    print("| variant | b64 ms | speed-up vs dense float32 |")
    print("|---|---:|---:|")
    for k, v in ms.items():
        print(f"| {k} | {v:.2f} | {ms['dense float32 eager'] / v:.2f} |")

if __name__ == "__main__":
    main()
