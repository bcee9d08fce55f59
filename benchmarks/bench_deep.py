"""Deep Compression on LeNet-300-100 / Fashion-MNIST: prune -> recover -> share weights -> fine-tune centroids -> file.

Trains LeNet-300-100, prunes it (AGP-style: a few rounds of global magnitude pruning with short
fine-tunes in between), shares weights (--bits per Linear layer), fine-tunes the centroids, and
writes the Deep-Compression file with prunekit.save(codec="deep"). Reports test accuracy at each
step, the size waterfall (dense fp32 -> pruned -> shared -> entropy coded -> file) and, for every
stream of the file, the size and encode/decode time of each coder (raw bits, Huffman, zlib, lzma, bz2).

Usage: python benchmarks/bench_deep.py [--sparsity 0.9,0.95] [--bits 5] [--epochs 8] [--rounds 3]
       [--recovery-epochs 2] [--threads 2] [--out DIR]
Data: apt-get install dataset-fashion-mnist (gzipped IDX in /usr/share/datasets/fashion-mnist/).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import prunekit
from prunekit.compress import deep_compression_sizes, finetune_centroids, share_weights
from prunekit.compress import streams
from prunekit.compress.deep_read import read_deep
from prunekit.data import load_data
from prunekit.models import create_model
from prunekit.train import FitConfig, evaluate, fit


def parse():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sparsity", default="0.9,0.95")
    ap.add_argument("--bits", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--recovery-epochs", type=int, default=2)
    ap.add_argument("--centroid-epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    return ap.parse_args()


def acc(model, data):
    return 100.0 * evaluate(model, *data.split("test"), num_classes=data.num_classes)["accuracy"]


def codec_table(path: Path) -> dict:
    """Per coder: total bytes over the file's weight streams (positions + indices) and encode / decode seconds."""
    state, header = read_deep(path)
    model_streams = []
    for e in header["entries"]:
        if e["kind"] != "shared":
            continue
        w = state[e["name"]].reshape(-1)
        kept = (state[e["mask"]].reshape(-1) != 0).numpy() if e["mask"] else (w != 0).numpy()
        values = w[torch.from_numpy(kept)]
        _, idx = torch.unique(values, return_inverse=True)
        pos = e["positions"]
        sym = np.packbits(kept) if pos["scheme"] == "bitmap" else streams.gap_symbols(np.flatnonzero(kept), pos["gap_width"])
        model_streams.append((f"{e['name']}/positions", sym, pos["width"]))
        model_streams.append((f"{e['name']}/indices", idx.numpy(), e["bits"]))
    out = {}
    for codec in streams.CODECS:
        total, enc, dec = 0, 0.0, 0.0
        for _, sym, width in model_streams:
            t = time.perf_counter()
            found = streams.candidates(sym, width, [codec])
            enc += time.perf_counter() - t
            desc, payload = min(found.values(), key=lambda dp: streams.cost(*dp))
            t = time.perf_counter()
            for _ in range(5):
                streams.decode_stream(desc, payload, "bench")
            dec += (time.perf_counter() - t) / 5
            total += streams.cost(desc, payload)
        out[codec] = {"bytes": total, "encode_ms": 1e3 * enc, "decode_ms": 1e3 * dec}
    return out


def main():
    args = parse()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data = load_data(name="fashion_mnist", layout="flat")
    x = data.example_inputs(2)
    base = create_model("lenet300_100")
    fit(base, data, FitConfig(epochs=args.epochs, lr=1e-3, batch_size=128, restore_best=False))
    dense_acc = acc(base, data)
    results = {"dense_test_acc": dense_acc, "runs": []}
    for target in [float(s) for s in args.sparsity.split(",")]:
        model = prunekit.clone_model(base)
        t0 = time.time()
        for r in range(1, args.rounds + 1):
            ratio = target * (1 - (1 - r / args.rounds) ** 3)  # cubic (AGP) path to the target sparsity
            model = prunekit.prune(model, x, ratio=ratio, relative_to="total")
            fit(model, data, FitConfig(epochs=args.recovery_epochs, lr=1e-3, batch_size=128, restore_best=False))
        pruned_acc = acc(model, data)
        shared, layers = share_weights(model, bits={"linear": args.bits})
        shared_acc = acc(shared, data)
        finetune_centroids(shared, data, FitConfig(epochs=args.centroid_epochs, lr=1e-4, batch_size=128,
                                                   restore_best=False, scheduler="none"))
        tuned_acc = acc(shared, data)
        sizes = deep_compression_sizes(shared)
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            path = prunekit.save(shared, Path(tmp) / "lenet.pkd", codec="deep")
            save_s = time.perf_counter() - t
            t = time.perf_counter()
            loaded = prunekit.load(path, create_model("lenet300_100"))
            load_s = time.perf_counter() - t
            assert torch.equal(loaded(data.x_test), shared(data.x_test))
            file_bytes = path.stat().st_size
            codecs = codec_table(path)
            st = prunekit.save(shared, Path(tmp) / "lenet.safetensors").stat().st_size
        run = {"sparsity": target, "pruned_acc": pruned_acc, "shared_acc": shared_acc, "centroid_ft_acc": tuned_acc,
               "drop_points": dense_acc - tuned_acc, "file_bytes": file_bytes, "ratio": sizes["dense_fp32"] / file_bytes,
               "safetensors_bytes": st, "save_s": save_s, "load_s": load_s, "minutes": (time.time() - t0) / 60,
               "waterfall": {k: v for k, v in sizes.items() if k != "layers"},
               "layers": [{k: v for k, v in s.items() if "candidates" not in k} for s in sizes["layers"]],
               "codecs": codecs}
        results["runs"].append(run)
        print(json.dumps({k: v for k, v in run.items() if k not in ("layers",)}, indent=1))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "bench_deep.json").write_text(json.dumps(results, indent=1))
    print(f"dense test accuracy {dense_acc:.2f}%")


if __name__ == "__main__":
    main()
