"""granularity='block' on Hugging Face models removes whole transformer layers and keeps the config truthful.

The reference for every pruned model is transformers' own construction: a model built from a config with fewer
layers, loaded with the dense model's weights of the layers that stayed (renumbered), must compute the same.
"""
from __future__ import annotations

import pytest
import torch

import prunekit
import prunekit.hf
from prunekit.structured import get_plan
from prunekit.structured.layers import find_layer_stacks

from hf_zoo import T, _ids, logits

DEPTH = 4


def _decoder(cls, cfg_cls, **kw):
    return lambda n: cls(cfg_cls(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=n,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                                 bos_token_id=0, eos_token_id=0, **kw))


MODELS = {
    "bert": (lambda n: T.BertForSequenceClassification(T.BertConfig(
        vocab_size=96, hidden_size=32, num_hidden_layers=n, num_attention_heads=4, intermediate_size=64,
        num_labels=3, max_position_embeddings=32)), "bert.encoder.layer", "num_hidden_layers"),
    "gpt2": (lambda n: T.GPT2LMHeadModel(T.GPT2Config(
        vocab_size=96, n_embd=32, n_layer=n, n_head=4, n_positions=32, bos_token_id=0, eos_token_id=0)),
        "transformer.h", "n_layer"),
    "llama": (_decoder(T.LlamaForCausalLM, T.LlamaConfig), "model.layers", "num_hidden_layers"),
    "qwen2": (_decoder(T.Qwen2ForCausalLM, T.Qwen2Config), "model.layers", "num_hidden_layers"),
    "vit": (lambda n: T.ViTModel(T.ViTConfig(
        hidden_size=32, num_hidden_layers=n, num_attention_heads=4, intermediate_size=64, image_size=16,
        patch_size=8)), "layers", "num_hidden_layers"),
}


def build(name, n=DEPTH):
    torch.manual_seed(0)
    return MODELS[name][0](n).eval()


def inputs(name):
    if name == "vit":
        return (torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)),)
    return (_ids(),)


def removed_of(model):
    plan = get_plan(model)
    return (plan.get("steps") or [plan])[-1]["removed_blocks"]


def run(model, x):
    with torch.no_grad():
        return logits(model.eval()(*x))


def reference(name, dense, kept):
    """transformers' own model with ``len(kept)`` layers, holding the dense model's weights for them."""
    stack = MODELS[name][1]
    small = build(name, len(kept))
    renamed = {}
    for key, value in dense.state_dict().items():
        if key.startswith(stack + "."):
            rest = key[len(stack) + 1:]
            index, _, tail = rest.partition(".")
            if int(index) not in kept:
                continue
            key = f"{stack}.{kept.index(int(index))}.{tail}"
        renamed[key] = value
    small.load_state_dict(renamed)
    return small.eval()


FINAL_NORM = {"gpt2": "transformer.ln_f", "llama": "model.norm", "qwen2": "model.norm"}


def residual_scores(name, dense, batches):
    """||h_out - h_in|| / ||h_in|| per layer, from transformers' own hidden_states output (a decoder's last entry
    is after its final norm: the last layer's output is read as that norm's input instead)."""
    sums = [0.0] * DEPTH
    for x in batches:
        seen = {}
        handle = (dense.get_submodule(FINAL_NORM[name]).register_forward_pre_hook(
            lambda m, a: seen.update(h=a[0])) if name in FINAL_NORM else None)
        with torch.no_grad():
            hs = list(dense(*x, output_hidden_states=True).hidden_states)
        if handle is not None:
            handle.remove()
            hs[-1] = seen["h"]
        for i in range(DEPTH):
            sums[i] += float((hs[i + 1] - hs[i]).norm() / hs[i].norm())
    return sums


@pytest.mark.parametrize("name", sorted(MODELS))
def test_removes_the_layers_that_change_the_hidden_states_least(name, tmp_path):
    dense = build(name)
    x = inputs(name)
    batches = [x, (x[0].flip(0),)]
    small = prunekit.prune(dense, x, granularity="block", ratio=0.5, calibration=[(b, None) for b in batches])
    stack, count = MODELS[name][1], MODELS[name][2]
    assert len(small.get_submodule(stack)) == DEPTH // 2
    assert getattr(small.config, count) == DEPTH // 2 == small.config.num_hidden_layers
    removed = removed_of(small)
    kept = [i for i in range(DEPTH) if f"{stack}.{i}" not in removed]
    scores = residual_scores(name, dense, batches)
    assert sorted(kept) == sorted(sorted(range(DEPTH), key=lambda i: scores[i])[DEPTH // 2:]), scores
    ref = reference(name, dense, kept)
    torch.testing.assert_close(run(small, x), run(ref, x), rtol=0, atol=0)
    # plain transformers reloads it: the config alone rebuilds the pruned model
    assert prunekit.hf.hf_loadable(small) == (True, [])
    small.save_pretrained(str(tmp_path))
    back = type(small).from_pretrained(str(tmp_path)).eval()
    assert torch.equal(run(back, x), run(small, x))


@pytest.mark.parametrize("name", ["llama", "qwen2", "gpt2"])
def test_kept_layers_write_their_own_cache_slots(name):
    """Generation with a KV cache: each kept layer's layer_idx is renumbered, so the cache matches the reference's."""
    dense = build(name)
    x = inputs(name)
    small = prunekit.prune(dense, x, granularity="block", ratio=0.5, criterion="random", seed=3)
    stack = MODELS[name][1]
    removed = removed_of(small)
    kept = [i for i in range(DEPTH) if f"{stack}.{i}" not in removed]
    ref = reference(name, dense, kept)
    for j, layer in enumerate(small.get_submodule(stack)):
        attn = getattr(layer, "self_attn", None) or getattr(layer, "attn")
        assert attn.layer_idx == j
    if name == "qwen2":
        assert len(small.config.layer_types) == len(kept)
    kw = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        assert torch.equal(small.generate(x[0][:1], **kw), ref.generate(x[0][:1], **kw))


def test_t5_keeps_the_block_holding_the_position_bias_and_both_counts_stay_true(tmp_path):
    torch.manual_seed(0)
    cfg = T.T5Config(vocab_size=96, d_model=32, d_kv=8, d_ff=64, num_layers=3, num_decoder_layers=3, num_heads=4,
                     decoder_start_token_id=0, relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1)
    model = T.T5ForConditionalGeneration(cfg).eval()
    stacks = {s.name: s for s in find_layer_stacks(model)}
    assert set(stacks) == {"encoder.block", "decoder.block"}
    assert all(list(s.kept) == [0] for s in stacks.values())  # block 0 holds relative_attention_bias
    x = {"input_ids": _ids(), "decoder_input_ids": _ids(seed=2)}
    small = prunekit.prune(model, x, granularity="block", ratio=0.5, criterion="random", seed=0)
    enc, dec = len(small.encoder.block), len(small.decoder.block)
    assert enc + dec == 4 and min(enc, dec) >= 1  # 2 of the 4 candidates went; block 0 of each stays
    assert (small.config.num_layers, small.config.num_decoder_layers) == (enc, dec)
    assert small.decoder.config.num_layers == dec and small.encoder.config.num_layers == enc
    assert small.encoder.block[0].layer[0].SelfAttention.has_relative_attention_bias
    small.save_pretrained(str(tmp_path))
    back = type(small).from_pretrained(str(tmp_path)).eval()
    with torch.no_grad():
        assert torch.equal(back(**x).logits, small(**x).logits)


def test_layers_then_widths_round_trip_through_prunekit_hf(tmp_path):
    """Removing layers, then non-uniform channels: the plan replays on the dense architecture."""
    dense = build("llama")
    x = inputs("llama")
    small = prunekit.prune(dense, x, granularity="block", ratio=0.25, criterion="random", seed=1)
    small = prunekit.prune(small, x, granularity="channel", ratio=0.3, scope="global", criterion="l2")
    assert small.config.num_hidden_layers == 3
    prunekit.hf.save_pretrained(small, tmp_path)
    back = prunekit.hf.from_pretrained(tmp_path)
    assert torch.equal(run(back, x), run(small, x))


def test_a_stack_never_loses_every_layer_and_ignored_layers_stay():
    dense = build("bert")
    x = inputs("bert")
    small = prunekit.prune(dense, x, granularity="block", ratio=0.99, ignore=["bert.encoder.layer.2"])
    # 3 candidates, floor(0.99 * 3) = 2 would go, but one of the two ranked lowest is protected only when every
    # layer is a candidate: here layer 2 is ignored, so both go
    assert len(small.bert.encoder.layer) == 2
    assert "bert.encoder.layer.2" not in removed_of(small)
    whole = prunekit.prune(build("bert"), x, granularity="block", ratio=0.99)
    assert len(whole.bert.encoder.layer) == 1  # floor(0.99 * 4) = 3: the best layer stays


def test_bart_encoder_and_decoder_counts_follow_their_own_stacks(tmp_path):
    """One config, two stacks of equal depth: encoder_layers and decoder_layers each follow their own stack."""
    torch.manual_seed(0)
    cfg = T.BartConfig(vocab_size=96, d_model=32, encoder_layers=3, decoder_layers=3, encoder_attention_heads=4,
                       decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=32,
                       pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2)
    model = T.BartModel(cfg).eval()
    x = {"input_ids": _ids(), "decoder_input_ids": _ids(seed=2)}
    small = prunekit.prune(model, x, granularity="block", ratio=0.5, criterion="random", seed=4)
    enc, dec = len(small.encoder.layers), len(small.decoder.layers)
    assert enc + dec == 3 and min(enc, dec) >= 1
    assert (small.config.encoder_layers, small.config.decoder_layers) == (enc, dec)
    assert [layer.self_attn.layer_idx for layer in small.decoder.layers] == list(range(dec))
    small.save_pretrained(str(tmp_path))
    back = type(small).from_pretrained(str(tmp_path)).eval()
    with torch.no_grad():
        assert torch.equal(back(**x).last_hidden_state, small(**x).last_hidden_state)
