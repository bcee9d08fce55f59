"""prunekit.hf.describe_model and ``prunekit inspect DIR``: heads, KV groups, FFN and hidden widths as configured."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import prunekit.hf
from prunekit.errors import ConfigError
from prunekit.api import prune
from prunekit.cli.main import main

from hf_zoo import ENTRIES

NAMES = ["bert", "gpt2", "llama", "t5", "vit"]


def expected(name: str, config) -> dict:
    """What the config says: attention groups (count, units, query heads, head_dim), FFN groups (count, width),
    the hidden width. T5's relative position bias lives in the first block of each stack and is added in every
    block, so one heads group spans a stack's self-attention; likewise the first decoder block makes the
    cross-attention's (zero) position bias with ``n_heads`` heads and every decoder block adds it, so one heads
    group spans the decoder's cross-attention: three groups."""
    if name == "gpt2":
        heads, hidden, layers = config.n_head, config.n_embd, config.n_layer
        return {"attention": (layers, heads, heads, hidden // heads), "ffn": (layers, config.n_inner or 4 * hidden),
                "hidden": hidden}
    if name == "t5":
        return {"attention": (3, config.num_heads, config.num_heads, config.d_kv),
                "ffn": (config.num_layers + config.num_decoder_layers, config.d_ff), "hidden": config.d_model}
    heads, hidden, layers = config.num_attention_heads, config.hidden_size, config.num_hidden_layers
    units = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    return {"attention": (layers, units, heads, head_dim), "ffn": (layers, config.intermediate_size), "hidden": hidden}


_DESCRIBED: dict = {}


def described(name: str):
    if name not in _DESCRIBED:
        model = ENTRIES[name].build()
        _DESCRIBED[name] = (model, prunekit.hf.describe_model(model))
    return _DESCRIBED[name]


@pytest.mark.parametrize("name", NAMES)
def test_reported_heads_ffn_and_hidden_widths_are_the_configs(name):
    model, d = described(name)
    want = expected(name, model.config)
    kinds = d.by_kind()
    attention_kind = "kv_groups" if want["attention"][1] < want["attention"][2] else "heads"
    assert set(kinds) & {"heads", "kv_groups"} == {attention_kind}
    attention = kinds[attention_kind]
    got = [(len(attention), g.units, g.query_heads, g.head_dim) for g in attention]
    assert got == [want["attention"]] * len(attention)
    assert [(len(kinds["ffn"]), g.units) for g in kinds["ffn"]] == [want["ffn"]] * len(kinds["ffn"])
    assert [g.units for g in kinds["hidden"]] == [want["hidden"]]
    assert d.model == type(model).__name__ and d.params == sum(p.numel() for p in model.parameters())


def test_llama_kv_groups_hold_each_key_value_head_with_its_query_heads():
    model, d = described("llama")
    config = model.config
    assert config.num_key_value_heads < config.num_attention_heads  # the tiny config is grouped-query attention
    layer0 = [g for g in d.by_kind()["kv_groups"] if g.where == "model.layers.0.self_attn"][0]
    rows = {m[0].rsplit(".", 1)[1]: m[3] for m in layer0.members}  # positions per projection
    assert rows == {"q_proj": config.num_attention_heads * config.head_dim,
                    "k_proj": config.num_key_value_heads * config.head_dim,
                    "v_proj": config.num_key_value_heads * config.head_dim,
                    "o_proj": config.num_attention_heads * config.head_dim}


def test_t5_cross_attention_heads_are_one_prunable_group_over_the_decoder():
    model, d = described("t5")
    cross = [g for g in d.by_kind()["heads"] if any("EncDecAttention" in m for m in g.layers)]
    assert len(cross) == 1 and cross[0] not in d.left_out()
    g = cross[0]
    assert (g.units, g.prunable, g.head_dim) == (model.config.num_heads,) * 2 + (model.config.d_kv,)
    assert {m.rpartition(".EncDecAttention")[0] for m in g.layers} == \
        {f"decoder.block.{i}.layer.1" for i in range(model.config.num_decoder_layers)}


class RollAct(nn.Module):
    """An activation that rolls the channels: the pruned model would roll other channels, so they stay."""

    def forward(self, x):
        return torch.roll(nn.functional.silu(x), 1, dims=-1)


def test_an_unprunable_part_is_left_out_with_its_reason_and_prune_keeps_it():
    model = ENTRIES["llama"].build()
    model.model.layers[0].mlp.act_fn = RollAct()
    d = prunekit.hf.describe_model(model)
    ffn = {g.where: g for g in d.by_kind()["ffn"]}
    assert ffn["model.layers.0.mlp"].prunable == 0 and ffn["model.layers.1.mlp"].prunable == 64
    reasons = [r for g in d.left_out() if g.where.startswith("model.layers.0.mlp") for r in g.reasons]
    assert any("`roll`" in r and "channel dim" in r for r in reasons), reasons
    small = prune(model, ENTRIES["llama"].inputs(), granularity="channel", ratio=0.5)  # what prune does agrees
    assert small.model.layers[0].mlp.up_proj.out_features == 64
    assert small.model.layers[1].mlp.up_proj.out_features < 64


def test_position_dims_are_not_listed_as_left_out_channels():
    """ViT's position embedding holds a token dim (patches + 1) that no layer produces: a position, not a channel."""
    model, d = described("vit")
    config = model.config
    tokens = (config.image_size // config.patch_size) ** 2 + 1
    positions = [g for g in d.groups if g.kind == "positions"]
    assert [g.units for g in positions] == [tokens] and model.vit.embeddings.position_embeddings.shape[1] == tokens
    assert not set(map(id, positions)) & set(map(id, d.left_out()))


def test_ignore_and_freeze_leave_groups_out_as_prune_would():
    model, _ = described("llama")
    d = prunekit.hf.describe_model(model, freeze=["model.layers.1.mlp.down_proj"], ignore=["model.embed_tokens"])
    by_where = {g.where: g for g in d.groups}
    assert by_where["model.layers.1.mlp"].prunable == 0
    assert by_where["model.layers.1.mlp"].reasons == ["frozen: model.layers.1.mlp.down_proj"]
    assert d.by_kind()["hidden"][0].prunable == 0 and by_where["model.layers.0.mlp"].prunable == 64


def test_config_inputs_follow_the_config():
    model, _ = described("t5")
    inputs = prunekit.hf.config_inputs(model, seq_len=5)
    assert set(inputs) == {"input_ids", "decoder_input_ids"} and inputs["input_ids"].shape == (1, 5)
    assert int(inputs["input_ids"].max()) < model.config.vocab_size
    vit, _ = described("vit")
    c = vit.config
    assert prunekit.hf.config_inputs(vit)["pixel_values"].shape == (1, c.num_channels, c.image_size, c.image_size)
    with pytest.raises(ConfigError, match="no config"):
        prunekit.hf.config_inputs(nn.Linear(2, 2))


# ---- the CLI -------------------------------------------------------------------------------------------------
def inspect_cli(capsys, *args) -> str:
    capsys.readouterr()
    assert main(["inspect", *map(str, args)]) == 0
    return capsys.readouterr().out


def summary_rows(out: str) -> dict:
    """The kind table: title -> (groups, units per group) as printed."""
    from prunekit.hf.describe import KIND_TITLES

    rows = {}
    for line in out.splitlines():
        for title in KIND_TITLES.values():
            if line.startswith(title + "  "):
                cells = [c.strip() for c in line[len(title):].split("  ") if c.strip()]
                rows[title] = (int(cells[0]), cells[1])
    return rows


@pytest.mark.parametrize("name", NAMES)
def test_cli_prints_the_configs_heads_ffn_and_hidden_width(name, tmp_path, capsys):
    model = ENTRIES[name].build()
    model.save_pretrained(str(tmp_path / name))
    out = inspect_cli(capsys, tmp_path / name)
    n, units, heads, head_dim = expected(name, model.config)["attention"]
    layers, width = expected(name, model.config)["ffn"]
    rows = summary_rows(out)
    assert out.startswith(f"model {type(model).__name__} ")
    if units < heads:
        assert rows["KV groups (grouped-query attention)"] == (n, f"KV heads: {units} ({heads} query heads, "
                                                                  f"head_dim {head_dim})")
    else:
        assert rows["attention heads"] == (n, f"heads: {heads} (head_dim {head_dim})")
    assert rows["FFN / MLP neurons"] == (layers, f"neurons: {width}")
    assert rows["hidden width (residual stream)"] == (1, f"channels: {expected(name, model.config)['hidden']}")
    left = out.split("left out (not prunable safely):\n")[1]
    assert "reaches the model output" in left  # the logits / classes are kept
    assert "EncDecAttention" not in left  # T5's cross-attention heads are prunable


def test_cli_reads_a_prunekit_save_with_per_layer_widths(tmp_path, capsys):
    entry = ENTRIES["llama"]
    small = prune(entry.build(), entry.inputs(), granularity="channel", ratio=0.4, uniform=False,
                  ignore=["model.embed_tokens"])
    prunekit.hf.save_pretrained(small, tmp_path / "free")
    widths = [layer.mlp.up_proj.out_features for layer in small.model.layers]
    out = inspect_cli(capsys, tmp_path / "free")
    printed = [line.split()[3] for line in out.splitlines() if " ffn " in f" {line} " and "neurons:" in line]
    assert printed == [str(w) for w in widths]  # the groups table: one row per layer's MLP, in order


def test_cli_builds_a_model_from_a_config_file(tmp_path, capsys):
    model, _ = described("llama")
    path = tmp_path / "tiny-llama.json"
    path.write_text(json.dumps(model.config.to_dict()))
    out = inspect_cli(capsys, path, "--seq-len", "8")
    assert out.startswith("model LlamaModel ")  # the config names no architecture: AutoModel's class
    assert "example input input_ids (1, 8)" in out and "KV heads: 2 (4 query heads, head_dim 8)" in out


def test_cli_options_are_checked(tmp_path, capsys):
    model, _ = described("llama")
    model.save_pretrained(str(tmp_path / "full"))
    full = tmp_path / "full"
    out = inspect_cli(capsys, full, "--freeze", "model.layers.0.mlp.up_proj")
    assert "#2 ffn model.layers.0.mlp: all 64 kept: frozen: model.layers.0.mlp.up_proj" in out
    assert main(["inspect", str(full), "--set", "prune.ratio=0.5"]) == 2
    assert "--set: not an option for a Hugging Face model" in capsys.readouterr().err
    assert main(["inspect", str(full), "--ignore", "no.such.layer"]) == 2
    assert "no.such.layer" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["inspect", str(full), "--ratio", "0.5"])  # unknown options are errors
    recipe = Path(__file__).resolve().parents[2] / "recipes" / "digits_channel.yaml"
    assert main(["inspect", str(recipe), "--seq-len", "8"]) == 2  # model options are not recipe options
    assert "--seq-len: not an option for a recipe" in capsys.readouterr().err
    model.config.save_pretrained(str(tmp_path / "cfg"))  # a folder with a config alone
    assert main(["inspect", str(tmp_path / "cfg")]) == 2  # no weights: say so, name the fix
    assert "pass the config file" in capsys.readouterr().err


STACKS = {"bert": "bert.encoder.layer", "gpt2": "transformer.h", "llama": "model.layers", "vit": "vit.layers"}


@pytest.mark.parametrize("name", NAMES)
def test_layer_stacks_are_listed_with_what_must_stay(name, tmp_path, capsys):
    """The layers granularity='block' may remove: every layer of each stack, but T5's first block (it holds the
    relative position bias the other blocks use)."""
    model, d = described(name)
    if name == "t5":
        assert [(s, n) for s, n, _ in d.layer_stacks] == [("encoder.block", model.config.num_layers),
                                                          ("decoder.block", model.config.num_decoder_layers)]
        assert all(list(kept) == [0] and "relative_attention_bias" in kept[0] for _, _, kept in d.layer_stacks)
    else:
        assert d.layer_stacks == [(STACKS[name], model.config.num_hidden_layers, {})]
    model.save_pretrained(str(tmp_path / name))
    out = inspect_cli(capsys, tmp_path / name)
    for stack, size, kept in d.layer_stacks:
        assert f"whole layers (granularity='block'): {stack}: {size - len(kept)} of {size} removable" in out
