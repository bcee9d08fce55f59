"""measure() and per_layer() against hand counts: parameters, non-zeros, MACs by formula, sizes, latency keys."""
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save
from torch import nn
from torch.nn.utils import prune

from prunekit.errors import ConfigError, InputError
from prunekit.measure import count_macs, effective_state_dict, measure, per_layer


class TinyNet(nn.Module):
    """conv(2->4, k3) -> BN -> relu -> flatten -> linear(4*6*6 -> 3)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def tiny():
    torch.manual_seed(0)
    return TinyNet(), torch.randn(5, 2, 8, 8)


def test_params_equal_hand_count_and_masks_count_once():
    model, x = tiny()
    hand = (4 * 2 * 3 * 3 + 4) + (4 + 4) + (144 * 3 + 3)
    assert measure(model, x, latency=False)["params"] == hand
    prune.random_unstructured(model.conv, "weight", amount=0.5)
    assert measure(model, x, latency=False)["params"] == hand


def test_linear_macs_at_batch_3_is_150():
    torch.manual_seed(0)
    assert measure(nn.Linear(10, 5), torch.randn(3, 10), latency=False)["macs"] == 3 * 10 * 5


def test_conv_macs_by_formula():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, kernel_size=3, stride=2, padding=1, groups=1)
    x = torch.randn(2, 3, 16, 16)
    h_out = (16 + 2 * 1 - 3) // 2 + 1
    assert measure(conv, x, latency=False)["macs"] == 2 * 8 * h_out * h_out * 3 * 3 * 3
    grouped = nn.Conv2d(4, 8, kernel_size=3, padding=1, groups=2)
    assert measure(grouped, torch.randn(1, 4, 5, 5), latency=False)["macs"] == 8 * 5 * 5 * (4 // 2) * 9


class Attention(nn.Module):
    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v) + torch.bmm(q.flatten(0, 1), k.flatten(0, 1).transpose(1, 2)).sum()


def test_attention_and_bmm_are_counted_with_tuple_inputs():
    torch.manual_seed(0)
    b, h, s, d = 2, 3, 7, 4
    q = torch.randn(b, h, s, d)
    # sdpa: q@k^T and attn@v, each b*h*s*s*d; the extra bmm is one more of those
    assert measure(Attention(), (q, q, q), latency=False)["macs"] == 3 * b * h * s * s * d


def test_multihead_attention_is_counted_in_eval_mode():
    torch.manual_seed(0)
    e, s, b = 8, 5, 2
    mha = nn.MultiheadAttention(e, 2, batch_first=True).eval()
    x = torch.randn(b, s, e)
    # input projections 3*e*e per token, attention 2*s*s*e per sequence, output projection e*e per token
    expected = b * s * 3 * e * e + b * 2 * s * s * e + b * s * e * e
    assert measure(mha, {"query": x, "key": x, "value": x}, latency=False)["macs"] == expected


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU])
def test_recurrent_layers_are_counted(cell):
    torch.manual_seed(0)
    batch, steps, inp, hidden = 2, 5, 4, 6
    gates = 4 if cell is nn.LSTM else 3
    rnn = cell(inp, hidden, num_layers=2, batch_first=True, bidirectional=True)
    # per direction, per step: gates*hidden x (inputs + hidden); layer 2 reads both directions of layer 1
    per_step = 2 * gates * hidden * (inp + hidden) + 2 * gates * hidden * (2 * hidden + hidden)
    assert measure(rnn, torch.randn(batch, steps, inp), latency=False)["macs"] == batch * steps * per_step


def test_pruned_lstm_weights_lower_nonzero_macs():
    torch.manual_seed(0)
    lstm = nn.LSTM(4, 6, batch_first=True)
    x = torch.randn(2, 5, 4)
    prune.custom_from_mask(lstm, "weight_hh_l0", torch.zeros(24, 6))  # drop the recurrent weights entirely
    m = measure(lstm, x, latency=False)
    ih_macs, hh_macs = 2 * 5 * 24 * 4, 2 * 5 * 24 * 6
    assert m["macs"] == ih_macs + hh_macs
    assert m["nonzero_macs"] == ih_macs  # only the input-to-hidden products remain
    (row,) = per_layer(lstm, x)
    assert row["name"] == "" and row["shape"] == [24, 4] and row["sparsity"] == pytest.approx(144 / 240)


def test_nonzero_params_and_macs_on_hand_masked_model():
    model, x = tiny()
    mask = torch.zeros_like(model.fc.weight)
    mask[:, :36] = 1  # keep 3*36 of 3*144 weights: density 1/4
    prune.custom_from_mask(model.fc, "weight", mask)
    with torch.no_grad():
        model.conv.weight[0] = 0  # a naturally-zero filter counts too (18 weights)
    m = measure(model, x, latency=False)
    total = 76 + 8 + 435
    bn_bias_zeros = 4  # BatchNorm's bias starts at zero
    assert m["nonzero_params"] == total - bn_bias_zeros - 18 - 3 * 108
    conv_macs, fc_macs = 5 * 4 * 36 * 18, 5 * 144 * 3
    assert m["macs"] == conv_macs + fc_macs
    assert m["nonzero_macs"] == round(conv_macs * 54 / 72 + fc_macs / 4)


def test_size_bytes_is_dense_safetensors_of_effective_weights():
    model, x = tiny()
    prune.l1_unstructured(model.fc, "weight", amount=0.9)
    sd = effective_state_dict(model)
    assert "fc.weight" in sd and "fc.weight_orig" not in sd and "fc.weight_mask" not in sd
    assert torch.equal(sd["fc.weight"], model.fc.weight_orig.detach() * model.fc.weight_mask)
    m = measure(model, x, latency=False)
    assert m["size_bytes"] == len(save({k: v.contiguous() for k, v in sd.items()}))
    # fc.weight (432 floats, 90% zeros) shrinks to a 54-byte bitmap + 44 values; all else is stored as before
    fc_dense, fc_sparse = 432 * 4, 54 + 44 * 4 + 8
    assert m["size_bytes"] - m["sparse_size_bytes"] == pytest.approx(fc_dense - fc_sparse, abs=200)


def test_latency_keys_positive_and_state_restored():
    model, x = tiny()
    prune.l1_unstructured(model.conv, "weight", amount=0.5)
    model.train()
    threads = torch.get_num_threads()
    m = measure(model, x, batch_sizes=(1, 8), repeats=3, warmup=1, threads=1)
    assert torch.get_num_threads() == threads
    for key in ("latency_ms", "latency_iqr_ms", "latency_ms_b1", "latency_ms_b8"):
        assert m[key] > 0 or (key.startswith("latency_iqr") and m[key] >= 0)
    assert model.training and model.bn.training
    assert model.bn.num_batches_tracked.item() == 0  # eval mode while measuring: BN statistics untouched
    model(x).sum().backward()  # masked weight is a normal autograd tensor again
    assert model.conv.weight_orig.grad is not None


def test_wrong_inputs_raise_input_error():
    model, _ = tiny()
    with pytest.raises(InputError):
        measure(model, torch.randn(1, 3, 8, 8), latency=False)
    with pytest.raises(InputError):
        measure(model, "not a tensor", latency=False)
    with pytest.raises(ConfigError, match="batch_sizes"):
        measure(model, torch.randn(1, 2, 8, 8), batch_sizes=(0,))


def test_per_layer_rows_match_measure():
    model, x = tiny()
    prune.l1_unstructured(model.conv, "weight", amount=0.5)
    rows = {r["name"]: r for r in per_layer(model, x)}
    assert set(rows) == {"conv", "bn", "fc"}
    assert rows["conv"]["type"] == "Conv2d" and rows["conv"]["params"] == 76
    assert rows["conv"]["sparsity"] == 0.5 and rows["conv"]["nonzero"] == 36 + int((model.conv.bias != 0).sum())
    assert rows["conv"]["macs"] == 5 * 4 * 36 * 18 and rows["conv"]["nonzero_macs"] == 5 * 4 * 36 * 9
    assert sum(r["macs"] for r in rows.values()) == count_macs(model, x)["macs"]
    assert per_layer(model)[0]["macs"] is None
