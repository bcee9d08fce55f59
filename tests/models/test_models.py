"""Every registered architecture builds, gives (N, num_classes) logits, and traces with torch.fx to the same outputs."""
from __future__ import annotations

import inspect
import operator

import pytest
import torch
import torch.fx

from prunekit.errors import ConfigError
from prunekit.models import MODELS, create_model

# (registered name, factory kwargs, example input shape); ImageNet models run at 64x64 to stay fast
CASES = [
    ("digits_cnn", {}, (2, 1, 8, 8)),
    ("mlp", {"in_features": 64, "hidden": (32, 16), "num_classes": 10, "dropout": 0.2}, (3, 64)),
    ("mlp", {"in_features": 64, "num_classes": 4}, (3, 1, 8, 8)),
    ("lenet300_100", {}, (3, 784)),
    ("lenet300_100", {}, (3, 1, 28, 28)),
    ("lenet5", {}, (3, 1, 28, 28)),
    ("lenet5", {"in_channels": 3, "num_classes": 4, "image_size": 32}, (2, 3, 32, 32)),
    ("resnet20", {"in_channels": 1, "num_classes": 10}, (2, 1, 28, 28)),
    ("resnet20", {}, (2, 3, 32, 32)),
    ("resnet32", {"num_classes": 7, "width": 8}, (2, 3, 32, 32)),
    ("resnet56", {"in_channels": 1, "width": 8}, (2, 1, 8, 8)),
    ("resnet18", {}, (1, 3, 64, 64)),
    ("resnet18", {"in_channels": 1, "num_classes": 10, "width": 16, "small_input": True}, (2, 1, 28, 28)),
    ("resnet34", {"num_classes": 10, "width": 16}, (1, 3, 64, 64)),
    ("resnet50", {}, (1, 3, 64, 64)),
    ("vgg11_bn", {"width_mult": 0.125, "num_classes": 20}, (1, 3, 32, 32)),
    ("vgg11_bn", {"width_mult": 0.25, "small_input": True, "num_classes": 10}, (2, 3, 32, 32)),
    ("vgg16_bn", {"width_mult": 0.125, "small_input": True, "in_channels": 1}, (2, 1, 32, 32)),
    ("vgg_small", {}, (2, 1, 8, 8)),
    ("vgg_small", {"in_channels": 3, "num_classes": 5, "width": 8}, (2, 3, 28, 28)),
    ("mobilenetv2", {}, (1, 3, 64, 64)),
    ("mobilenetv2", {"width_mult": 0.5, "small_input": True, "num_classes": 10}, (2, 3, 32, 32)),
    ("mobilenetv2", {"in_channels": 1, "width_mult": 0.35, "small_input": True, "num_classes": 10}, (2, 1, 8, 8)),
]
IDS = [f"{name}-{i}" for i, (name, _, _) in enumerate(CASES)]


def build(name: str, kwargs: dict):
    torch.manual_seed(0)
    return create_model(name, **kwargs).eval()


def test_every_registered_model_has_a_case():
    assert set(MODELS.names()) <= {name for name, _, _ in CASES}


@pytest.mark.parametrize("name,kwargs,shape", CASES, ids=IDS)
def test_forward_shape_and_fx_trace_match_eager(name, kwargs, shape):
    model = build(name, kwargs)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        eager = model(x)
        again = model(x)
        traced = torch.fx.symbolic_trace(model)(x)
    default = inspect.signature(MODELS.get(name)).parameters["num_classes"].default
    num_classes = kwargs.get("num_classes", default)
    assert eager.shape == (shape[0], num_classes)
    assert torch.isfinite(eager).all()
    assert torch.equal(eager, again)  # eval mode is deterministic
    torch.testing.assert_close(traced, eager, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "name,expected",
    [  # parameter counts of the reference (torchvision / paper) definitions at default settings
        ("resnet18", 11_689_512),
        ("resnet34", 21_797_672),
        ("resnet50", 25_557_032),
        ("mobilenetv2", 3_504_872),
        ("lenet300_100", 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10),
        ("lenet5", 431_080),  # Caffe's LeNet-5, the one Deep Compression reports (Han et al. 2016, Table 2)
    ],
)
def test_parameter_count_matches_reference(name, expected):
    assert sum(p.numel() for p in create_model(name).parameters()) == expected


def test_resnet20_structure():
    # 3 stages x 3 basic blocks of widths 16/32/64; 19 convs + 2 projection shortcuts; one `+` per block
    model = create_model("resnet20", in_channels=1)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 21
    assert [s[0].residual[0].out_channels for s in model.stages] == [16, 32, 64]
    adds = [n for n in torch.fx.symbolic_trace(model).graph.nodes if n.target is operator.add]
    assert len(adds) == 9


def test_mobilenetv2_residuals_and_depthwise():
    model = create_model("mobilenetv2")
    adds = [n for n in torch.fx.symbolic_trace(model).graph.nodes if n.target is operator.add]
    assert len(adds) == sum(n - 1 for _, _, n, _ in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)])
    depthwise = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    assert len(depthwise) == 17 and all(m.groups == m.in_channels == m.out_channels for m in depthwise)


def test_mlp_hidden_widths_and_dropout():
    model = create_model("mlp", in_features=10, hidden=[7, 5], num_classes=3, dropout=0.5)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(10, 7), (7, 5), (5, 3)]
    assert sum(isinstance(m, torch.nn.Dropout) for m in model.modules()) == 2


def test_unknown_model_names_the_known_ones():
    with pytest.raises(ConfigError, match="resnet20"):
        create_model("resnet21")


def test_lenet5_refuses_images_too_small():
    with pytest.raises(ConfigError, match="at least 16x16"):
        create_model("lenet5", image_size=8)
