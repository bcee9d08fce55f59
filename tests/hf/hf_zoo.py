"""Hugging Face ``transformers`` models built from tiny configs (random weights, nothing downloaded).

Each entry builds a seeded model in eval mode and its example inputs; ``logits(out)`` picks the tensor the tests
compare (HF models return ``ModelOutput`` objects).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Dict

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a hub

import torch  # noqa: E402

transformers = __import__("pytest").importorskip("transformers")
T = transformers


def _ids(b: int = 2, s: int = 12, vocab: int = 96, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (b, s), generator=torch.Generator().manual_seed(seed))


def _image(b: int = 2, size: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


@dataclass(frozen=True)
class HFEntry:
    name: str
    make: Callable[[], Any]  # -> model
    inputs: Callable[[], Any]  # -> example inputs (tuple or dict)
    norms_on_hidden: bool = False  # a LayerNorm / RMSNorm normalises over the (prunable) hidden width

    def build(self):
        torch.manual_seed(0)
        model = self.make().eval()
        with torch.no_grad():  # non-trivial norm parameters and BN statistics, so wrong slicing shows
            g = torch.Generator().manual_seed(7)
            for mod in model.modules():
                for pname in ("running_mean", "running_var"):
                    t = getattr(mod, pname, None)
                    if isinstance(t, torch.Tensor) and t.is_floating_point():
                        t.copy_(torch.rand(t.shape, generator=g) + 0.5 if pname == "running_var"
                                else torch.randn(t.shape, generator=g) * 0.1)
        return model


def logits(out: Any) -> torch.Tensor:
    for key in ("logits", "last_hidden_state"):
        if hasattr(out, key) and getattr(out, key) is not None:
            return getattr(out, key)
    return out[0] if isinstance(out, (tuple, list)) else out


ENTRIES: Dict[str, HFEntry] = {}


def _add(entry: HFEntry) -> None:
    ENTRIES[entry.name] = entry


_add(HFEntry("bert", lambda: T.BertForSequenceClassification(T.BertConfig(
    vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, num_labels=3,
    max_position_embeddings=32)), lambda: (_ids(),), norms_on_hidden=True))
_add(HFEntry("gpt2", lambda: T.GPT2LMHeadModel(T.GPT2Config(
    vocab_size=96, n_embd=32, n_layer=2, n_head=4, n_positions=32, bos_token_id=0, eos_token_id=0)),
    lambda: (_ids(),), norms_on_hidden=True))
_add(HFEntry("llama", lambda: T.LlamaForCausalLM(T.LlamaConfig(
    vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=32, bos_token_id=0, eos_token_id=0)),
    lambda: (_ids(),), norms_on_hidden=True))
_add(HFEntry("qwen2", lambda: T.Qwen2ForCausalLM(T.Qwen2Config(
    vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=32, bos_token_id=0, eos_token_id=0)),
    lambda: (_ids(),), norms_on_hidden=True))
_add(HFEntry("t5", lambda: T.T5ForConditionalGeneration(T.T5Config(
    vocab_size=96, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, decoder_start_token_id=0,
    relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1)),
    lambda: {"input_ids": _ids(), "decoder_input_ids": _ids(seed=2)}, norms_on_hidden=True))
_add(HFEntry("vit", lambda: T.ViTForImageClassification(T.ViTConfig(
    image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
    num_labels=5)), lambda: (_image(),), norms_on_hidden=True))
_add(HFEntry("swin", lambda: T.SwinForImageClassification(T.SwinConfig(
    image_size=32, patch_size=2, embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=4, num_labels=5)),
    lambda: (_image(),), norms_on_hidden=True))
_add(HFEntry("convnext", lambda: T.ConvNextForImageClassification(T.ConvNextConfig(
    num_stages=2, hidden_sizes=[16, 32], depths=[1, 1], num_labels=5)), lambda: (_image(),), norms_on_hidden=True))
_add(HFEntry("resnet", lambda: T.ResNetForImageClassification(T.ResNetConfig(
    embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], num_labels=5)), lambda: (_image(),)))
_add(HFEntry("mobilenetv2", lambda: T.MobileNetV2ForImageClassification(T.MobileNetV2Config(
    image_size=32, depth_multiplier=0.35, num_labels=5)), lambda: (_image(),)))

NAMES = list(ENTRIES)
