"""Groups of the Hugging Face zoo that the graph analysis once left out, now pruned exactly.

* MobileNetV2's last 1x1 conv (1280 channels) feeds the classifier through ``nn.Dropout(inplace=True)``
  (``aten.dropout_``);
* Swin's shifted windows ``torch.roll`` the spatial dims of the residual stream, and its relative-position bias is
  gathered from a (positions, heads) table by an index tensor (``aten.index``);
* T5's cross-attention adds a zero position bias of ``(1, n_heads, q, k)`` that the first decoder block makes and
  every decoder block reuses: the heads of all decoder blocks' cross-attention are one group.

For each: the layer that was left out is smaller after ``prune(ratio=0.3, scope="local")``, the model's attributes
agree with its layers, and the pruned model equals the original with the removed channels zeroed (norms over the
hidden width normalise over the kept channels only, as ``masked_reference`` does).
"""
from __future__ import annotations

import pytest
import torch

from prunekit._inputs import split_inputs
from prunekit.api import prune
from prunekit.structured import get_plan

from hf_zoo import ENTRIES, logits

from structured.structured_helpers import assert_outputs_close, masked_reference

_CACHE: dict = {}


def run(model, inputs) -> torch.Tensor:
    args, kwargs = split_inputs(inputs)
    with torch.no_grad():
        return logits(model.eval()(*args, **kwargs))


def pruned(name: str):
    if name not in _CACHE:
        entry = ENTRIES[name]
        original = entry.build()
        _CACHE[name] = (original, prune(original, entry.inputs(), ratio=0.3, scope="local", granularity="channel",
                                        criterion="l2"))
    return _CACHE[name]


@pytest.mark.parametrize("name", ["mobilenetv2", "swin", "t5"])
def test_equals_the_original_with_removed_channels_zeroed(name):
    original, small = pruned(name)
    inputs = ENTRIES[name].inputs()
    assert_outputs_close((run(small, inputs),), (run(masked_reference(original, get_plan(small)), inputs),))


def test_mobilenetv2_prunes_the_conv_before_the_inplace_dropout():
    original, small = pruned("mobilenetv2")
    before, after = original.mobilenet_v2.conv_1x1.convolution, small.mobilenet_v2.conv_1x1.convolution
    assert isinstance(original.dropout, torch.nn.Dropout) and original.dropout.inplace
    assert after.out_channels < before.out_channels == 1280
    assert small.classifier.in_features == after.out_channels


def test_swin_prunes_hidden_widths_and_heads_through_roll_and_the_bias_table():
    original, small = pruned("swin")
    assert small.swin.embeddings.patch_embeddings.projection.out_channels < original.config.embed_dim
    for stage, stage0 in zip(small.swin.encoder.layers, original.swin.encoder.layers):
        for block, block0 in zip(stage.blocks, stage0.blocks):
            assert block.mlp.fc1.in_features < block0.mlp.fc1.in_features  # the residual stream the roll shifts
            assert block.mlp.fc1.out_features < block0.mlp.fc1.out_features
    shrunk = 0
    for block, block0 in ((b, b0) for s, s0 in zip(small.swin.encoder.layers, original.swin.encoder.layers)
                          for b, b0 in zip(s.blocks, s0.blocks)):
        a, a0 = block.attention, block0.attention
        table = a.relative_position_bias.relative_position_bias_table
        heads0 = a0.relative_position_bias.relative_position_bias_table.shape[1]
        head_dim = a0.q_proj.out_features // heads0
        assert table.shape[1] * head_dim == a.q_proj.out_features == a.k_proj.out_features == a.v_proj.out_features
        assert a.num_attention_heads == table.shape[1]
        shrunk += table.shape[1] < heads0
    assert shrunk > 0  # some block lost heads, and the bias table lost their columns


def test_t5_prunes_cross_attention_heads_alike_in_every_decoder_block():
    original, small = pruned("t5")
    d_kv = original.config.d_kv
    widths = set()
    for block in small.decoder.block:
        cross = block.layer[1].EncDecAttention
        assert cross.q.out_features == cross.k.out_features == cross.v.out_features == cross.o.in_features
        assert cross.n_heads * d_kv == cross.q.out_features  # the zero bias is made with n_heads
        widths.add(cross.q.out_features)
    assert len(widths) == 1 and widths.pop() < original.config.num_heads * d_kv
