"""Deploy benchmark on Fashion-MNIST: int8, channel pruning, sparse kernels and Deep-Compression files vs dense fp32.

One table per model: test accuracy, file bytes and ratio to the dense float32 file, latency at two batch sizes
(median of shuffled, interleaved rounds: every variant in every round, so background load hits them alike)
at 1 and 2 threads, and the speed-up over dense float32 eager. Goals print "met" / "not met".

Variants: dense fp32 eager; dense fp32 ONNX Runtime; int8 (ONNX Runtime: dynamic for MLPs, static QDQ for conv
nets); channel-pruned fp32 (+ fine-tune); channel-pruned + int8; unstructured (+ fine-tune) + sparse kernels
(prunekit.sparsify); Deep-Compression file (unstructured + weight sharing + centroid fine-tune + entropy
coding, loaded back with prunekit.load).

Usage: python benchmarks/bench_deploy.py [--quick] [--models lenet300_100,lenet5,wide_mlp,resnet20]
       [--threads 1,2] [--rounds 15] [--cache DIR] [--retrain] [--out DIR]
Data: apt-get install dataset-fashion-mnist (make fashion-mnist). Trained baselines are cached under --cache.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

import prunekit
from prunekit.compress import finetune_centroids, fold_batchnorm_statistics, share_weights
from prunekit.data import load_data
from prunekit.data.config import DataConfig
from prunekit.export import export
from prunekit.int8 import OrtModule
from prunekit.modelutils import clone_model
from prunekit.models import create_model
from prunekit.schedule import Recovery, iterative_prune
from prunekit.train import FitConfig, fit
from prunekit.train.feature_distill import FeatureDistillConfig
from prunekit.unstructured import finalize
from baselines import accuracy, cached_fit
from timing import side_by_side, verdict
from prunekit.cli.console import table as fmt_table

ADAM = dict(optimizer="adam", lr=1e-3, batch_size=128, restore_best=False)
SGD = dict(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4, batch_size=128, restore_best=False)
# per model: data layout, training (full / quick), unstructured sparsity and bits for Deep Compression, channel
# pruning target, int8 mode, timed batch sizes, and the goals the issue sets
SETUPS = {
    "lenet300_100": dict(layout="flat", build={}, train=ADAM, epochs=(12, 2), ft=(6, 1), subset=(None, 12000),
                         sparsity=0.95, rounds=6, centroid_epochs=3, bits={"Linear": 5}, channel=dict(ratio=0.5), int8="dynamic",
                         batches=(1, 64), dc_goal=50.0),
    "lenet5": dict(layout="image", build={}, train=ADAM, epochs=(16, 2), ft=(3, 1), subset=(None, 12000),
                   sparsity=0.93, rounds=4, bits={"Conv2d": 8, "Linear": 4}, channel=dict(ratio=0.5), int8="static",
                   batches=(1, 64), dc_goal=40.0),
    "resnet20": dict(layout="image", build={}, train=SGD, epochs=(12, 1), ft=(3, 1), subset=(30000, 6000),
                     sparsity=0.85, rounds=3, centroid_epochs=2, bits={"Conv2d": 5, "Linear": 6},
                     channel=dict(macs_target=0.5, round_to=16), channel_ft=(5, 1), channel_lr_scale=2.0,
                     # onnxruntime's int8 convolutions cost about as much at 8 as at 16 channels: the 28 x 28
                     # stage's 16-wide convolutions bound the int8 time, so the second variant drops 2 of its 3
                     # residual blocks before the channel pruning
                     blocks=dict(block=dict(include=["stages.0.*"], ratio=2 / 3),
                                 channel=dict(macs_target=0.7, round_to=16)),
                     int8="static", batches=(1, 64), dc_goal=20.0, speed_goal=4.0),
    "wide_mlp": dict(layout="flat", build={"hidden": (2048, 2048), "dropout": 0.0}, factory="mlp", train=ADAM,
                     epochs=(3, 1), ft=(1, 1), subset=(None, 12000), sparsity=0.95, rounds=2, bits={"Linear": 5},
                     channel=dict(ratio=0.5), int8="dynamic", batches=(1, 16), sparse_levels=(0.90, 0.95),
                     prune=dict(scope="local")),  # every layer at the sparsity the sparse-kernel goals name
}


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="lenet300_100,lenet5,wide_mlp,resnet20")
    ap.add_argument("--quick", action="store_true", help="training subsets and short epochs (a smoke run, minutes)")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=15, help="timed rounds per batch size and thread count")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", default=None, help="fashion-mnist folder (default /usr/share/datasets/fashion-mnist/)")
    ap.add_argument("--cache", default="runs/bench_deploy/baselines")
    ap.add_argument("--retrain", action="store_true")
    ap.add_argument("--out", default="runs/bench_deploy")
    return ap.parse_args()


def pick(args, pair):
    return pair[1 if args.quick else 0]


def trained(name: str, s: dict, data, args) -> torch.nn.Module:
    """The dense baseline, cached by everything that shapes it."""
    kw = {"in_features": data.x_train[0].numel()} if s["layout"] == "flat" else {"in_channels": data.x_train.shape[1]}
    torch.manual_seed(args.seed)
    model = create_model(s.get("factory", name), num_classes=data.num_classes, **kw, **s["build"])
    cfg = FitConfig(epochs=pick(args, s["epochs"]), seed=args.seed, **s["train"])
    return cached_fit(name, model, data, cfg, args.cache, [name, s["build"], len(data.x_train), args.seed],
                      retrain=args.retrain)


def finetune_cfg(s: dict, args, epochs=None, lr_scale: float = 1.0) -> FitConfig:
    """Recovery fine-tune: Adam at the training rate (SGD at a fifth of it), the last epoch kept."""
    scale = lr_scale * (1.0 if s["train"]["optimizer"] == "adam" else 0.2)
    return FitConfig(epochs=epochs or pick(args, s["ft"]), seed=args.seed, **{**s["train"], "lr": s["train"]["lr"] * scale})


DISTILL = FeatureDistillConfig(temperature=4.0, alpha=0.5)  # logit distillation from the dense model


def budget(s: dict, args) -> dict:
    """Training epochs of every variant, to print next to the table: the dense model gets at least as many
    epochs as any variant's recovery (weight rounds x epochs + centroid epochs; channel epochs)."""
    ft = pick(args, s["ft"])
    return {"dense": pick(args, s["epochs"]), "weight": s["rounds"] * ft, "centroids": s.get("centroid_epochs", 2),
            "channel": pick(args, s.get("channel_ft", s["ft"]))}


def weight_pruned(model, s, data, ex, args, sparsity):
    """Iterative magnitude pruning to ``sparsity``; each round's fine-tune distils from the dense model."""
    teacher = clone_model(model).eval()
    recovery = Recovery.default(data, ex, granularity="weight", finetune=finetune_cfg(s, args), teacher=teacher,
                                distill=DISTILL, prune_kwargs=s.get("prune"))
    res = iterative_prune(clone_model(model), recovery, target=sparsity, rounds=s["rounds"])
    return res.model


def structured_variants(s: dict):
    """(label, block-pruning options or None, channel-pruning options) of each structured variant: channels
    alone, and where the setup names ``blocks``, residual blocks removed before a channel pruning."""
    yield "channel-pruned", None, s["channel"]
    if "blocks" in s:
        yield "blocks + channel-pruned", s["blocks"]["block"], s["blocks"]["channel"]


def file_bytes(write) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "f"
        write(path)
        return sum(p.stat().st_size for p in Path(tmp).iterdir())


def run_model(name: str, args) -> dict:
    s = SETUPS[name]
    data = load_data(DataConfig(name="fashion_mnist", path=args.data, layout=s["layout"],
                                train_subset=pick(args, s["subset"]), val_fraction=0.1, seed=args.seed))
    x_test, y_test = data.x_test, data.y_test
    ex = data.example_inputs(1)
    calib = [b for _, b in zip(range(8), data.loader("train", 64, shuffle=True, seed=args.seed))]
    t0 = time.perf_counter()
    dense = trained(name, s, data, args).eval()
    e = budget(s, args)
    print(f"\n== {name}: {sum(p.numel() for p in dense.parameters()):,} parameters, train {len(data.x_train)} samples "
          f"({time.perf_counter() - t0:.0f} s incl. cache); epochs: dense {e['dense']}, weight pruning "
          f"{s['rounds']} rounds x {pick(args, s['ft'])} + {e['centroids']} centroid = {e['weight'] + e['centroids']}, "
          f"channel recovery {e['channel']}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"bench_deploy_{name}_"))
    v = {}  # label -> dict(model=callable, bytes=int, acc=float, note=str)
    dense_bytes = file_bytes(lambda p: prunekit.save(dense, p.with_suffix(".safetensors")))
    v["dense fp32 eager"] = dict(model=dense, bytes=dense_bytes)
    export(dense, ex, tmp / "dense.onnx")
    v["dense fp32 onnxruntime"] = dict(model=OrtModule(tmp / "dense.onnx"), bytes=(tmp / "dense.onnx").stat().st_size)
    mode = s["int8"]
    q = prunekit.quantize(dense, ex, mode=mode, calibration=calib if mode == "static" else None,
                          path=tmp / "dense.int8.onnx")
    v[f"int8 {mode} (onnxruntime)"] = dict(model=q, bytes=(tmp / "dense.int8.onnx").stat().st_size)
    # structured pruning (channels; for ResNet-20 also residual blocks first) + recovery, then int8
    teacher = clone_model(dense).eval()
    for label, blocks, channel in structured_variants(s):
        slim = dense
        if blocks is not None:  # whole residual blocks by identity first (lowest ||f(x)|| / ||x||), then channels
            slim = prunekit.prune(slim, ex, granularity="block", calibration=calib, **blocks)
        slim = prunekit.prune(slim, ex, granularity="channel", **channel)
        fit(slim, data, finetune_cfg(s, args, epochs=budget(s, args)["channel"], lr_scale=s.get("channel_lr_scale", 1.0)),
            distiller=DISTILL.build(teacher, slim, ex), stage=f"recover {name} {label}")
        slim.eval()
        v[f"{label} fp32"] = dict(model=slim, bytes=file_bytes(lambda p: prunekit.save(slim, p.with_suffix(".safetensors"))))
        onnx_path = tmp / f"{label.split()[0]}.int8.onnx"
        qs = prunekit.quantize(slim, ex, mode=mode, calibration=calib if mode == "static" else None, path=onnx_path)
        v[f"{label} + int8 {mode}"] = dict(model=qs, bytes=onnx_path.stat().st_size)
    # unstructured pruning: sparse kernels and the Deep-Compression file
    levels = s.get("sparse_levels", (s["sparsity"],))
    sparse_rows = {}
    for level in levels:
        masked = weight_pruned(dense, s, data, ex, args, level)
        finalize(masked)
        masked.eval()
        label = f"{level:.0%} sparse"
        for b in s["batches"]:
            fast, table = prunekit.sparsify(masked, ex, batch_size=b, threads=1)  # decided where the goals are timed
            v[f"{label} + sparse kernels (b{b})"] = dict(
                model=fast, bytes=file_bytes(lambda p: prunekit.save(masked, p.with_suffix(".safetensors"), sparse=True)),
                only_batch=b, note=f"{sum(r['choice'] != 'dense' for r in table)}/{len(table)} layers sparse")
            sparse_rows[(level, b)] = table
        if level == s["sparsity"]:
            shared, layers = share_weights(masked, s["bits"])
            finetune_centroids(shared, data, finetune_cfg(s, args, epochs=budget(s, args)["centroids"], lr_scale=0.1),
                               layers=layers, distiller=DISTILL.build(teacher, shared, ex))
            shared.eval()
            fold_batchnorm_statistics(shared)  # eval-equivalent; running mean / var become constants in the file
            deep = tmp / "model.deep"
            prunekit.save(shared, deep, codec="deep", bits=s["bits"])
            loaded = prunekit.load(deep, clone_model(dense)).eval()
            v[f"Deep Compression ({level:.0%}, {_bits(s['bits'])})"] = dict(model=loaded, bytes=deep.stat().st_size)
    # accuracy and latency
    for row in v.values():
        row["acc"] = accuracy(row["model"], x_test, y_test)
    lat = {}
    for threads in [int(t) for t in args.threads.split(",")]:
        # an onnxruntime session's thread pool is fixed when it is built (default: every core, spinning between
        # calls): time each file in a session of the column's thread count, as torch runs at that count
        timed = {k: (at_threads(row["model"], threads)) for k, row in v.items()}
        for b in s["batches"]:
            xb = x_test[:b]
            calls = {k: (lambda m=timed[k]: m(xb)) for k, row in v.items() if row.get("only_batch", b) == b}
            lat[(threads, b)] = side_by_side(calls, rounds=args.rounds, threads=threads, seed=args.seed)
    out = report(name, s, v, lat, args, sparse_rows)
    out["seconds"] = time.perf_counter() - t0
    print(f"{name}: {out['seconds']:.0f} s in all", flush=True)
    return out


def at_threads(model, threads: int):
    """``model`` to time at ``threads`` threads: an OrtModule is reopened with that many intra-op threads (with the
    same session options); torch modules follow ``torch.set_num_threads`` already."""
    if not isinstance(model, OrtModule):
        return model
    return OrtModule(model.path, threads=threads, flush_denormals=model.applied["flush_denormals"],
                     disabled_optimizers=model.applied["disabled_optimizers"])


def _bits(bits: dict) -> str:
    return ", ".join(f"{k} {b} bit" for k, b in bits.items())


def report(name, s, v, lat, args, sparse_rows) -> dict:
    base = v["dense fp32 eager"]
    head = ["variant", "test acc", "bytes", "x smaller"]
    keys = sorted(lat)
    head += [f"ms b{b} t{t}" for t, b in keys] + [f"speed-up b{b} t{t}" for t, b in keys] + ["note"]
    rows = []
    for label, row in v.items():
        cells = [label, f"{100 * row['acc']:.2f}%", f"{row['bytes']:,}", f"{base['bytes'] / row['bytes']:.1f}"]
        cells += [f"{lat[k][label]:.3f}" if label in lat[k] else "-" for k in keys]
        cells += [f"{lat[k]['dense fp32 eager'] / lat[k][label]:.2f}" if label in lat[k] else "-" for k in keys]
        rows.append(cells + [row.get("note", "")])
    print(fmt_table(rows, head))
    goals = []
    for label, row in v.items():
        drop = 100 * (base["acc"] - row["acc"])
        if label.startswith("Deep Compression") and "dc_goal" in s:
            ratio = base["bytes"] / row["bytes"]
            goals.append((f"{name} Deep-Compression file >= {s['dc_goal']:.0f}x smaller within 0.5 pt",
                          f"{ratio:.1f}x, {drop:+.2f} pt", ratio >= s["dc_goal"] and drop <= 0.5))
        if "channel-pruned + int8" in label and "speed_goal" in s:
            for (t, b), times in lat.items():
                if b == 64:
                    speed = times["dense fp32 eager"] / times[label]
                    goals.append((f"{name} {label.rsplit(' + int8', 1)[0]} + int8 >= {s['speed_goal']:.0f}x faster at batch 64, "
                                  f"{t} thread(s), within 0.5 pt", f"{speed:.2f}x, {drop:+.2f} pt",
                                  speed >= s["speed_goal"] and drop <= 0.5))
    if name == "wide_mlp":
        for (level, b, goal) in ((0.95, 16, 4.0), (0.95, 1, 1.5), (0.90, 16, 2.5)):
            label = f"{level:.0%} sparse + sparse kernels (b{b})"
            for (t, bb), times in lat.items():
                if bb == b and label in times and t == 1:
                    speed = times["dense fp32 eager"] / times[label]
                    goals.append((f"wide MLP at {level:.0%} sparsity >= {goal}x faster at batch {b} (1 thread)",
                                  f"{speed:.2f}x", speed >= goal))
        for (level, b), table in sparse_rows.items():
            print(f"\nsparsify decisions at {level:.0%} sparsity, batch {b}:\n{table}")
    for text, got, ok in goals:
        print(f"goal: {text}: {got} -> {verdict(ok)}")
    return {"model": name, "quick": args.quick,
            "variants": {k: {"acc": r["acc"], "bytes": r["bytes"], "note": r.get("note", "")} for k, r in v.items()},
            "latency_ms": {f"t{t}_b{b}": times for (t, b), times in lat.items()},
            "goals": [{"goal": t, "measured": g, "met": ok} for t, g, ok in goals]}


def main() -> int:
    args = parse()
    print(f"bench_deploy: {'quick' if args.quick else 'full'} run, torch {torch.__version__}, threads {args.threads}",
          flush=True)
    results = [run_model(n.strip(), args) for n in args.models.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=2, default=str))
    print(f"\nwrote {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
