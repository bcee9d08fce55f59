"""Pruned Hugging Face models reload: with prunekit.hf for any widths, with plain transformers when uniform."""
from __future__ import annotations

import json

import pytest
import torch

import prunekit
import prunekit.hf
from prunekit._inputs import split_inputs

from hf_zoo import ENTRIES, NAMES, T, logits

TEXT = ("bert", "gpt2", "llama", "qwen2", "t5", "vit")  # the configs these describe are flat (one width per kind)


def run(model, inputs) -> torch.Tensor:
    args, kwargs = split_inputs(inputs)
    with torch.no_grad():
        return logits(model.eval()(*args, **kwargs))


@pytest.mark.parametrize("name", NAMES)
def test_any_widths_round_trip_through_prunekit_hf(name, tmp_path):
    entry = ENTRIES[name]
    small = prunekit.prune(entry.build(), entry.inputs(), ratio=0.3, scope="global", granularity="channel",
                           criterion="l2")
    prunekit.hf.save_pretrained(small, tmp_path)
    meta = json.loads((tmp_path / prunekit.hf.META_FILE).read_text())
    assert meta["architecture"] == type(small).__name__ and meta["plan"]
    back = prunekit.hf.from_pretrained(tmp_path)
    assert type(back) is type(small) and not back.training
    assert torch.equal(run(back, entry.inputs()), run(small, entry.inputs()))
    assert {k: v.shape for k, v in back.state_dict().items()} == {k: v.shape for k, v in small.state_dict().items()}


POOLERS = {"bert": ["bert.pooler"]}  # its output width is hidden_size in the config


def embeddings_name(model) -> str:
    emb = model.get_input_embeddings()
    return next(n for n, m in model.named_modules() if m is emb)


@pytest.mark.parametrize("name", TEXT)
def test_uniform_pruning_loads_with_plain_transformers(name, tmp_path):
    """uniform=True keeps every block's widths equal; with the residual width kept (the embeddings ignored) the
    config alone rebuilds the model, and transformers' own from_pretrained loads it."""
    entry = ENTRIES[name]
    model = entry.build()
    small = prunekit.prune(model, entry.inputs(), ratio=0.3, scope="global", granularity="channel", criterion="l2",
                           uniform=True, ignore=[embeddings_name(model)] + POOLERS.get(name, []))
    assert sum(p.numel() for p in small.parameters()) < 0.95 * sum(p.numel() for p in model.parameters())
    ok, problems = prunekit.hf.hf_loadable(small)
    assert ok, problems
    small.save_pretrained(str(tmp_path))
    back = type(small).from_pretrained(str(tmp_path)).eval()  # no prunekit code
    assert torch.equal(run(back, entry.inputs()), run(small, entry.inputs()))
    # the config is truthful: a model built from it alone has the pruned shapes
    fresh = type(small)(type(small.config).from_dict(json.loads((tmp_path / "config.json").read_text())))
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {k: v.shape for k, v in small.state_dict().items()}


def test_config_and_attention_attributes_describe_the_pruned_model():
    entry = ENTRIES["llama"]
    small = prunekit.prune(entry.build(), entry.inputs(), ratio=0.3, scope="global", granularity="channel",
                           criterion="l2", uniform=True)
    c = small.config
    attn = small.model.layers[0].self_attn
    assert c.num_attention_heads * c.head_dim == attn.q_proj.out_features
    assert c.num_key_value_heads * c.head_dim == attn.k_proj.out_features
    assert attn.num_key_value_groups == c.num_attention_heads // c.num_key_value_heads
    assert c.intermediate_size == small.model.layers[1].mlp.gate_proj.out_features
    assert c.hidden_size == small.model.embed_tokens.embedding_dim < 32


def test_non_uniform_widths_are_left_in_the_config_and_reported_unloadable(tmp_path):
    entry = ENTRIES["bert"]
    small = prunekit.prune(entry.build(), entry.inputs(), ratio=0.3, scope="local", granularity="channel",
                           criterion="l2", layer_ratios={"bert.encoder.layer.0": 0.6})
    ok, problems = prunekit.hf.hf_loadable(small)
    assert not ok and any("differs between layers" in p for p in problems)
    prunekit.hf.save_pretrained(small, tmp_path)
    meta = json.loads((tmp_path / prunekit.hf.META_FILE).read_text())
    assert meta["hf_loadable"] is False and meta["weights"] == prunekit.hf.WEIGHTS_FILE
    with pytest.raises((OSError, ValueError)):  # plain transformers does not load something else instead
        T.BertForSequenceClassification.from_pretrained(str(tmp_path), local_files_only=True)
    assert torch.equal(run(prunekit.hf.from_pretrained(tmp_path), entry.inputs()), run(small, entry.inputs()))


def test_refuses_what_it_cannot_load(tmp_path):
    with pytest.raises(prunekit.ConfigError, match="PreTrainedModel"):
        prunekit.hf.save_pretrained(torch.nn.Linear(2, 2), tmp_path)
    entry = ENTRIES["bert"]
    small = prunekit.prune(entry.build(), entry.inputs(), ratio=0.3, granularity="channel", criterion="l2")
    prunekit.hf.save_pretrained(small, tmp_path)
    meta = json.loads((tmp_path / prunekit.hf.META_FILE).read_text())
    meta["architecture"] = "os.system"
    (tmp_path / prunekit.hf.META_FILE).write_text(json.dumps(meta))
    with pytest.raises(prunekit.CheckpointError, match="not a transformers model class"):
        prunekit.hf.from_pretrained(tmp_path)
    assert type(prunekit.hf.from_pretrained(tmp_path, model_class=T.BertForSequenceClassification)).__name__ == \
        "BertForSequenceClassification"
    (tmp_path / prunekit.hf.META_FILE).write_text("{not json")
    with pytest.raises(prunekit.CheckpointError, match="not readable JSON"):
        prunekit.hf.from_pretrained(tmp_path)


class Embedder(torch.nn.Module):
    """A Hugging Face model inside the user's own module (sentence embeddings: mean of the last hidden state)."""

    def __init__(self, bert):
        super().__init__()
        self.bert = bert

    def forward(self, ids):
        return self.bert(ids).last_hidden_state.mean(1)


def test_a_config_inside_the_users_module_is_refreshed_too(tmp_path):
    bert = T.BertModel(T.BertConfig(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                    intermediate_size=64, max_position_embeddings=32)).eval()
    ids = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(0))
    small = prunekit.prune(Embedder(bert).eval(), (ids,), granularity="channel", ratio=0.3, uniform=True,
                           criterion="l2", ignore=["bert.embeddings.word_embeddings", "bert.pooler"])
    layer = small.bert.encoder.layer[0]
    assert small.bert.config.intermediate_size == layer.intermediate.dense.out_features < 64
    assert small.bert.config.num_attention_heads * 8 == layer.attention.self.query.out_features
    ok, problems = prunekit.hf.hf_loadable(small.bert)
    assert ok, problems
    small.bert.save_pretrained(str(tmp_path))
    again = T.BertModel.from_pretrained(str(tmp_path)).eval()
    with torch.no_grad():
        assert torch.equal(again(ids).last_hidden_state, small.bert(ids).last_hidden_state)
