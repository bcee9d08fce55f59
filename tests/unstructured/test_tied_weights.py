"""Tied weights (one Parameter held by two modules) are never masked through one of them only."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import prunekit
from prunekit.errors import PruningError


class TiedLM(nn.Module):
    """An embedding and an output layer sharing one weight, as GPT-2's wte / lm_head do."""

    def __init__(self, vocab: int = 50, width: int = 16):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.body = nn.Linear(width, width)
        self.head = nn.Linear(width, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids):
        return self.head(torch.relu(self.body(self.embed(ids))))


IDS = (torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(0)),)


def masked_keys(model) -> set:
    return {n[: -len("_mask")] for n, _ in model.named_buffers() if n.endswith("_mask")}


def test_default_selection_leaves_the_tied_weight_out_and_finalize_changes_nothing():
    torch.manual_seed(0)
    model = TiedLM()
    pruned = prunekit.prune(model, IDS, granularity="weight", ratio=0.5)
    assert masked_keys(pruned) == {"body.weight"}
    before = pruned(*IDS)
    prunekit.finalize(pruned)
    assert torch.equal(pruned(*IDS), before)  # the masked model is the finalized one
    assert torch.equal(pruned.embed.weight, model.embed.weight)  # the shared embedding is untouched


def test_naming_a_tied_weight_is_an_error_that_names_both_uses():
    with pytest.raises(PruningError, match=r"head\.weight is also embed\.weight.*untie"):
        prunekit.prune(TiedLM(), IDS, granularity="weight", ratio=0.5, include=["head"])


def test_an_untied_copy_is_pruned():
    model = TiedLM()
    model.head.weight = nn.Parameter(model.head.weight.detach().clone())
    pruned = prunekit.prune(model, IDS, granularity="weight", ratio=0.5, scope="local")
    assert masked_keys(pruned) == {"body.weight", "head.weight"}
    sparsity = float((pruned.head.weight == 0).float().mean())
    assert sparsity == pytest.approx(0.5, abs=0.05)
    assert torch.equal(pruned.embed.weight, model.embed.weight)


def test_a_module_registered_twice_is_not_a_tie():
    """One module under two names masks both uses at once: nothing to leave out."""
    model = TiedLM()
    model.head.weight = nn.Parameter(model.head.weight.detach().clone())
    model.alias = model.body  # the same Linear object under a second name
    pruned = prunekit.prune(copy.deepcopy(model), IDS, granularity="weight", ratio=0.5)
    assert "body.weight" in masked_keys(pruned)


def test_gpt2_lm_head_tied_to_wte_is_left_out():
    pytest.importorskip("transformers")
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "hf"))
    import hf_zoo

    entry = hf_zoo.ENTRIES["gpt2"]
    model = entry.build()
    assert model.lm_head.weight is model.transformer.wte.weight
    pruned = prunekit.prune(model, entry.inputs(), granularity="weight", ratio=0.5)
    keys = masked_keys(pruned)
    assert "lm_head.weight" not in keys and any(k.endswith("c_attn.weight") for k in keys)
    out = pruned(**entry.inputs()) if isinstance(entry.inputs(), dict) else pruned(*entry.inputs())
    prunekit.finalize(pruned)
    again = pruned(**entry.inputs()) if isinstance(entry.inputs(), dict) else pruned(*entry.inputs())
    assert torch.equal(hf_zoo.logits(again), hf_zoo.logits(out))
