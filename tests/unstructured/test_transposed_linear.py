"""Hugging Face's Conv1D (a Linear whose weight is stored (in, out)) under weight pruning: selected by default and by
name, and every criterion / scope / pattern gives it the masks the equivalent nn.Linear (weight = W.T) gets,
transposed; masked outputs equal the masked weights applied by hand; finalize, save / load and sparsify keep them."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunekit
from prunekit.errors import ConfigError
from prunekit.unstructured import get_masks


class Conv1D(nn.Module):
    """Hugging Face's ``transformers.pytorch_utils.Conv1D`` as GPT-2 has it (written out: no transformers needed)."""

    def __init__(self, nf: int, nx: int):
        super().__init__()
        self.nf, self.nx = nf, nx
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.3)
        self.bias = nn.Parameter(torch.randn(nf) * 0.1)

    def forward(self, x):
        size_out = x.size()[:-1] + (self.nf,)
        return torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight).view(size_out)


def conv_mlp() -> nn.Sequential:
    torch.manual_seed(3)
    return nn.Sequential(Conv1D(12, 16), nn.GELU(), Conv1D(8, 12)).eval()


def linear_twin(model: nn.Module) -> nn.Module:
    """The same model with every Conv1D replaced by the nn.Linear computing the same map (weight W.T, same bias)."""
    twin = copy.deepcopy(model)
    for name, m in list(twin.named_modules()):
        if isinstance(m, Conv1D):
            lin = nn.Linear(m.nx, m.nf)
            with torch.no_grad():
                lin.weight.copy_(m.weight.T)
                lin.bias.copy_(m.bias)
            parent, _, child = name.rpartition(".")
            setattr(twin.get_submodule(parent) if parent else twin, child, lin)
    return twin


def inputs(seed: int = 1) -> torch.Tensor:
    """Features of very different scales, so wanda's |W| x ||X|| ranks unlike |W| alone."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(4, 6, 16, generator=g) * torch.linspace(0.1, 3.0, 16)


def by_hand(model: nn.Sequential, masks: dict, x: torch.Tensor, weights=None) -> torch.Tensor:
    """The conv MLP's output computed from (weights x masks) with plain matmuls: y = x @ (W * M) + b."""
    with torch.no_grad():
        for i, layer in enumerate(model):
            if isinstance(layer, Conv1D):
                w = (weights or {}).get(f"{i}.weight", layer.weight)
                x = x @ (w * masks[f"{i}.weight"]) + layer.bias
            else:
                x = layer(x)
    return x


def test_default_and_named_selection_take_conv1d():
    model = nn.Sequential(Conv1D(8, 16), nn.Linear(8, 4))
    assert set(get_masks(prunekit.prune(model, None, ratio=0.5))) == {"0.weight", "1.weight"}
    assert set(get_masks(prunekit.prune(model, None, ratio=0.5, include_types=["Conv1D"]))) == {"0.weight"}
    assert set(get_masks(prunekit.prune(model, None, ratio=0.5, include_types=["Linear"]))) == {"0.weight", "1.weight"}
    # a class selects by isinstance, as Python does: Conv1D is no nn.Linear subclass
    assert set(get_masks(prunekit.prune(model, None, ratio=0.5, include_types=[nn.Linear]))) == {"1.weight"}
    # torch's nn.Conv1d is another layer
    with pytest.raises(prunekit.PrunekitError, match="matches no layer"):
        prunekit.prune(model, None, ratio=0.5, include_types=["Conv1d"])


CASES = [  # (criterion, options): each must give the Linear twin's masks, transposed
    ("l1", {"scope": "row", "ratio": 0.5}),
    ("l1", {"scope": "local", "ratio": 0.4}),
    ("l2", {"scope": "global", "ratio": 0.6}),
    ("wanda", {"ratio": 0.5}),  # scope "row" by default
    ("wanda", {"scope": "local", "ratio": 0.3}),
    ("wanda", {"scope": "global", "ratio": 0.5}),
    ("l1", {"pattern": "2:4"}),
    ("wanda", {"pattern": "2:4"}),
    ("wanda", {"pattern": "1:4"}),
]


@pytest.mark.parametrize("criterion,options", CASES)
def test_masks_equal_the_linear_twins_transposed(criterion, options):
    model, x = conv_mlp(), inputs()
    conv = prunekit.prune(model, None, criterion=criterion, calibration=[x], **options)
    lin = prunekit.prune(linear_twin(model), None, criterion=criterion, calibration=[x], **options)
    cm, lm = get_masks(conv), get_masks(lin)
    assert set(cm) == set(lm) == {"0.weight", "2.weight"}
    for key in cm:
        assert cm[key].shape == getattr(model.get_submodule(key[0]), "weight").shape
        assert torch.equal(cm[key], lm[key].T), key
    with torch.no_grad():  # masked model == the masked weights applied by hand == the finalized model
        torch.testing.assert_close(conv(x), by_hand(model, cm, x))
        torch.testing.assert_close(prunekit.finalize(copy.deepcopy(conv))(x), conv(x), rtol=0, atol=0)


def test_row_scope_prunes_each_output_row_which_is_a_column_of_the_stored_weight():
    model = conv_mlp()
    mask = get_masks(prunekit.prune(model, None, criterion="l1", scope="row", ratio=0.25))["0.weight"]  # (16, 12)
    assert torch.all(mask.sum(0) == 12)  # each of the 12 outputs keeps 12 of its 16 inputs
    w = model[0].weight.detach().abs()
    for j in range(mask.shape[1]):  # the 4 smallest |w| of output j, independently of the other outputs
        assert set(torch.nonzero(mask[:, j] == 0).flatten().tolist()) == set(torch.argsort(w[:, j])[:4].tolist())


def test_wanda_scores_each_weight_by_the_norm_of_the_input_feature_it_multiplies():
    model, x = conv_mlp(), inputs()
    mask = get_masks(prunekit.prune(model, None, criterion="wanda", ratio=0.5, include=["0"], calibration=[x]))
    norms = x.reshape(-1, 16).double().pow(2).sum(0).sqrt()  # input feature i meets row i of the stored weight
    score = model[0].weight.detach().double().abs() * norms.unsqueeze(1)
    expected = torch.ones(16, 12)
    expected.scatter_(0, torch.argsort(score, dim=0)[:8], 0.0)  # per output (column): the 8 lowest of 16
    assert torch.equal(mask["0.weight"], expected)


def test_n_m_groups_run_along_the_input_dimension_dim_0():
    model, x = conv_mlp(), inputs()
    for criterion in ("l1", "wanda", "sparsegpt"):
        masks = get_masks(prunekit.prune(model, None, criterion=criterion, pattern="2:4", calibration=[x]))
        for key, mask in masks.items():  # (in, out): every 4 consecutive inputs of each output keep exactly 2
            assert torch.all(mask.T.reshape(-1, 4).sum(1) == 2), (criterion, key)
    with pytest.raises(ConfigError, match=r"'0.weight'.*has 6 there, not a multiple of 4"):
        prunekit.prune(nn.Sequential(Conv1D(8, 6)), None, pattern="2:4")  # out = 8 divides, in = 6 does not


@pytest.mark.parametrize("pattern", [None, "2:4"])
def test_sparsegpt_reconstructs_conv1d_as_it_does_the_linear_twin(pattern):
    model, x = conv_mlp(), inputs()
    calib = [x[:2], x[2:]]
    options = {"pattern": pattern} if pattern else {"ratio": 0.5}
    conv = prunekit.prune(model, None, criterion="sparsegpt", calibration=calib, **options)
    lin = prunekit.prune(linear_twin(model), None, criterion="sparsegpt", calibration=calib, **options)
    cm, lm = get_masks(conv), get_masks(lin)
    for i in (0, 2):
        key = f"{i}.weight"
        assert torch.equal(cm[key], lm[key].T)
        assert float((cm[key] == 0).float().mean()) == 0.5
        torch.testing.assert_close(conv[i].weight_orig.detach(), lin[i].weight_orig.detach().T, rtol=1e-5, atol=1e-6)
        assert not torch.equal(conv[i].weight_orig.detach(), model[i].weight.detach())  # kept weights were updated
    with torch.no_grad():
        updated = {f"{i}.weight": conv[i].weight_orig.detach() for i in (0, 2)}
        torch.testing.assert_close(conv(x), by_hand(model, cm, x, updated))
        torch.testing.assert_close(conv(x), lin(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sparse", [False, True])
def test_save_load_and_sparsify_keep_the_conv1d_masks(tmp_path, sparse):
    model, x = conv_mlp(), inputs()
    pruned = prunekit.prune(model, None, criterion="wanda", ratio=0.5, calibration=[x])
    path = prunekit.save(pruned, tmp_path / "m.safetensors", sparse=sparse)
    back = prunekit.load(path, conv_mlp())
    masks, loaded = get_masks(pruned), get_masks(back)
    assert set(loaded) == set(masks) and all(torch.equal(loaded[k], masks[k]) for k in masks)
    with torch.no_grad():
        torch.testing.assert_close(back(x), pruned(x), rtol=0, atol=0)
    fast, table = prunekit.sparsify(pruned, x, force="csr")  # sparse kernels take nn.Linear: Conv1D stays dense
    assert all(isinstance(fast[i], Conv1D) for i in (0, 2))
    with torch.no_grad():
        torch.testing.assert_close(fast(x), pruned(x), rtol=1e-5, atol=1e-6)


# ---- a Hugging Face GPT-2 (tiny config): c_attn, c_proj, c_fc are transformers' Conv1D ----

def gpt2():
    hf_zoo = pytest.importorskip("hf.hf_zoo")
    entry = hf_zoo.ENTRIES["gpt2"]
    return entry.build(), entry.inputs(), hf_zoo


def conv1d_names(model):
    return [n for n, m in model.named_modules() if type(m).__name__ == "Conv1D"]


@pytest.mark.parametrize("criterion", ["l1", "wanda", "sparsegpt"])
def test_every_conv1d_of_gpt2_is_masked_at_the_requested_sparsity(criterion):
    model, x, hf_zoo = gpt2()
    names = conv1d_names(model)
    assert len(names) == 8  # 2 blocks x (c_attn, attn.c_proj, c_fc, mlp.c_proj)
    scope = {"l1": "global", "wanda": "row", "sparsegpt": "local"}[criterion]
    pruned = prunekit.prune(model, x, granularity="weight", ratio=0.5, criterion=criterion, scope=scope,
                            calibration=[x])
    masks = get_masks(pruned)
    assert set(masks) == {f"{n}.weight" for n in names}  # lm_head is tied to wte: left out (test_tied_weights.py)
    if criterion != "l1":  # per layer (sparsegpt) or per row (wanda): each Conv1D exactly at the ratio
        for n in names:
            assert float((masks[f"{n}.weight"] == 0).float().mean()) == 0.5, n
    else:  # one global ranking over the selected weights
        total = sum(m.numel() for m in masks.values())
        assert sum(int((m == 0).sum()) for m in masks.values()) == round(0.5 * total)
    # outputs equal a dense GPT-2 given the masked weights by hand (no pruning hooks involved)
    manual = copy.deepcopy(model)
    state = {k: v for k, v in pruned.state_dict().items() if not k.endswith(("_orig", "_mask"))}
    for key, mask in masks.items():
        state[key] = pruned.get_submodule(key.rpartition(".")[0]).weight_orig.detach() * mask
    manual.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(hf_zoo.logits(pruned(*x)), hf_zoo.logits(manual(*x)), rtol=1e-5, atol=1e-5)


def test_gpt2_conv1d_selected_by_name():
    model, x, _ = gpt2()
    masks = get_masks(prunekit.prune(model, x, granularity="weight", ratio=0.5, include_types=["Conv1D"]))
    assert set(masks) == {f"{n}.weight" for n in conv1d_names(model)}


@pytest.mark.parametrize("criterion", ["l1", "wanda", "sparsegpt"])
def test_2_4_on_every_linear_and_conv1d_of_gpt2(criterion):
    model, x, hf_zoo = gpt2()
    pruned = prunekit.prune(model, x, granularity="weight", criterion=criterion, pattern="2:4", calibration=[x])
    masks = get_masks(pruned)
    assert set(masks) == {f"{n}.weight" for n in conv1d_names(model)}  # lm_head (tied to wte) is left out
    for key, mask in masks.items():
        module = pruned.get_submodule(key.rpartition(".")[0])
        by_input = mask.T if type(module).__name__ == "Conv1D" else mask  # (out, in)
        assert torch.all(by_input.reshape(-1, 4).sum(1) == 2), key
    with torch.no_grad():  # finalize keeps the function
        torch.testing.assert_close(hf_zoo.logits(pruned(*x)), hf_zoo.logits(prunekit.finalize(pruned)(*x)),
                                   rtol=0, atol=0)


@pytest.mark.parametrize("criterion", ["wanda", "sparsegpt"])
def test_gpt2_block_by_block_equals_whole_model_calibration(criterion):
    """Whole-model wanda scores on the dense model's inputs (block_inputs="dense" does too); whole-model sparsegpt
    prunes layer after layer on the pruned model's (block_inputs="pruned", the default, does too)."""
    model, x, hf_zoo = gpt2()
    calib = [x]
    whole = prunekit.prune(model, x, granularity="weight", ratio=0.5, criterion=criterion, calibration=calib)
    blocks = prunekit.prune(model, x, granularity="weight", ratio=0.5, criterion=criterion, calibration=calib,
                            blocks="auto", block_inputs="dense" if criterion == "wanda" else "pruned")
    wm, bm = get_masks(whole), get_masks(blocks)
    assert set(wm) == set(bm) and len(wm) == 8  # the 8 Conv1D layers (lm_head, tied to wte, is left out)
    for key in wm:
        assert torch.equal(wm[key], bm[key]), key
    with torch.no_grad():
        torch.testing.assert_close(hf_zoo.logits(whole(*x)), hf_zoo.logits(blocks(*x)), rtol=1e-4, atol=1e-5)


def test_gpt2_save_load_with_sparse_storage(tmp_path):
    model, x, hf_zoo = gpt2()
    pruned = prunekit.prune(model, x, granularity="weight", ratio=0.5, criterion="wanda", calibration=[x])
    path = prunekit.save(pruned, tmp_path / "gpt2.safetensors", sparse=True)
    back = prunekit.load(path, hf_zoo.ENTRIES["gpt2"].build())
    masks, loaded = get_masks(pruned), get_masks(back)
    assert set(loaded) == set(masks) and all(torch.equal(loaded[k], masks[k]) for k in masks)
    with torch.no_grad():
        torch.testing.assert_close(hf_zoo.logits(back(*x)), hf_zoo.logits(pruned(*x)), rtol=0, atol=0)


def test_bare_linear_math_of_the_reference():
    """The twin really is the same map: y = x @ W + b == F.linear(x, W.T, b)."""
    model, x = conv_mlp(), inputs()
    with torch.no_grad():
        torch.testing.assert_close(model(x), linear_twin(model)(x), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(model[0](x), F.linear(x, model[0].weight.T, model[0].bias))
