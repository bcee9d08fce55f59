"""The digits sensitivity sweep on 1 and on 2 processes (torchrun, gloo): wall time and results side by side.

Usage: python benchmarks/bench_scaling.py [--ratios 19] [--granularity weight] [--repeats 2] [--procs 1,2]
The digits CNN is trained once here; each run loads it and times the sweep alone (from a barrier to the
gathered results), 1 thread a process, the best of ``--repeats`` runs. Job time adds interpreter and torch
start-up, data loading and the process group. On a machine with 2 cores the ideal speed-up of 2 processes is 2x.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def digits():
    from prunekit.data import load_data
    from prunekit.data.config import DataConfig
    from prunekit.recipe.schema import from_dict

    return load_data(from_dict(DataConfig, {"name": "digits", "layout": "image", "normalize": "unit"}, "data"))


def worker(folder: Path, granularity: str, n_ratios: int) -> None:
    """One rank (or the only process): load the trained CNN, run the sweep, rank 0 writes the results and time."""
    from prunekit import collective
    from prunekit.models import create_model
    from prunekit.search import Recovery, sensitivity
    from prunekit.train import distributed

    torch.set_num_threads(1)
    distributed.maybe_init()
    data = digits()
    model = create_model("digits_cnn", num_classes=10)
    model.load_state_dict(torch.load(folder / "cnn.pt", weights_only=True))
    recovery = Recovery.default(data, data.example_inputs(1), granularity=granularity)
    ratios = [round(0.05 * (i + 1), 4) for i in range(n_ratios)]
    collective.barrier()
    t0 = time.perf_counter()
    result = sensitivity(model, recovery, ratios=ratios)
    collective.barrier()
    seconds = time.perf_counter() - t0
    if collective.is_main():
        (folder / f"world{collective.world_size()}.json").write_text(
            json.dumps({"seconds": seconds, "summary": result.summary(), "probes": len(ratios) * len(result.sizes)}))
    if collective.active():
        torch.distributed.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(folder: Path, procs: int, args) -> tuple:
    """(sweep seconds, job seconds, results) of one run on ``procs`` processes."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(REPO)}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(key, None)
    me = [str(Path(__file__).resolve()), "--worker", str(folder), "--granularity", args.granularity,
          "--ratios", str(args.ratios)]
    run = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={procs}", f"--master_port={free_port()}"]
    cmd = [sys.executable, *me] if procs == 1 else [*run, *me]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    job = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"the {procs}-process run failed:\n{proc.stderr[-3000:]}")
    out = json.loads((folder / f"world{procs}.json").read_text())
    return out["seconds"], job, out


def train(folder: Path) -> float:
    from prunekit.models import create_model
    from prunekit.train import FitConfig, fit

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = create_model("digits_cnn", num_classes=10)
    res = fit(model, digits(), FitConfig(epochs=10, lr=0.003))
    torch.save(model.state_dict(), folder / "cnn.pt")
    return res.best_val_accuracy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ratios", type=int, default=19, help="ratios per layer: 0.05, 0.10, ... (at most 19)")
    ap.add_argument("--granularity", default="weight", choices=["weight", "channel"])
    ap.add_argument("--repeats", type=int, default=2, help="runs per process count; the fastest sweep counts")
    ap.add_argument("--procs", default="1,2", help="process counts, comma-separated (the first is the reference)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not 1 <= args.ratios <= 19:
        sys.exit("--ratios must be between 1 and 19")
    if args.worker:
        worker(Path(args.worker), args.granularity, args.ratios)
        return
    procs = [int(p) for p in args.procs.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmp:
        folder = Path(tmp)
        acc = train(folder)
        print(f"digits_cnn trained: validation accuracy {acc:.4f}; sweep: {args.granularity} pruning, each of its "
              f"layers alone at {args.ratios} ratios; {os.cpu_count()} CPU cores, 1 thread a process", flush=True)
        runs = {}
        for n in procs:
            best = None
            for _ in range(args.repeats):
                sweep, job, out = launch(folder, n, args)
                if best is None or sweep < best[0]:
                    best = (sweep, job, out)
            runs[n] = best
        ref_sweep, _, ref = runs[procs[0]]
        print(f"{'processes':>9s} {'probes':>6s} {'sweep s':>8s} {'job s':>7s} {'speed-up':>8s} {'ideal':>6s} "
              f"{'same results':>12s}")
        for n, (sweep, job, out) in runs.items():
            same = out["summary"] == ref["summary"]
            print(f"{n:9d} {out['probes']:6d} {sweep:8.2f} {job:7.2f} {ref_sweep / sweep:7.2f}x "
                  f"{n / procs[0]:5.1f}x {'yes' if same else 'NO':>12s}")
        ranking = ref["summary"]["ranking"]
        print("layer ranking (most sensitive first):",
              ", ".join(f"{r['layer']} ({r['mean_drop_points']:.1f} pt)" for r in ranking))
        equal = all(out["summary"] == ref["summary"] for _, _, out in runs.values())
        print("results equal across process counts:", "met" if equal else "not met")


if __name__ == "__main__":
    main()
