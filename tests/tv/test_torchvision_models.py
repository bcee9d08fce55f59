"""torchvision's CNNs (the model definitions most CNN users bring), pruned by channel at ratio 0.3.

torchvision itself does not import against this torch build (its compiled ops do not load), so
``tv_shim`` loads its pure-Python model files; the module is skipped when torchvision is not there.
For every model and both scopes: the pruned model runs and keeps its output shape, the parameters drop
by at least the fraction measured when this test was written (a little below it: the thresholds guard
against coverage regressions), and the pruned model equals the original with the removed channels zeroed.
"""
from __future__ import annotations

import copy
import os
import sys

import pytest
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tv_shim  # noqa: E402

if tv_shim.torchvision_folder() is None:  # make install puts it there: a missing folder is a broken install
    if os.environ.get("PRUNEKIT_SKIP_TORCHVISION_TESTS") != "1":
        raise RuntimeError("torchvision's model files are missing: run `make install` (it installs them into "
                           ".venv/torchvision-src), or set PRUNEKIT_SKIP_TORCHVISION_TESTS=1 to skip these tests")
    pytest.skip("PRUNEKIT_SKIP_TORCHVISION_TESTS=1", allow_module_level=True)

import prunekit  # noqa: E402
from prunekit.structured import get_plan  # noqa: E402
from structured.structured_helpers import assert_outputs_close, masked_reference, outputs  # noqa: E402

# Fraction of parameters removed at ratio 0.3, criterion l2, 1x3x64x64 inputs: (global, local). Measured with
# torchvision 0.28.0 and written a little below the measurement: they guard against coverage regressions.
MIN_REMOVED = {  # measured: resnet18 .465/.498, mobilenet_v2 .416/.426, mobilenet_v3_small .341/.417,
    # efficientnet_b0 .436/.448, convnext_tiny .841/.501, regnet_y_400mf .391/.453, shufflenet_v2_x0_5 .327/.296,
    # squeezenet1_0 .313/.415, densenet121 .380/.469
    "resnet18": (0.44, 0.47),
    "mobilenet_v2": (0.39, 0.40),
    "mobilenet_v3_small": (0.32, 0.39),
    "efficientnet_b0": (0.41, 0.42),  # 0.36 / 0.36 while StochasticDepth froze every residual stream
    "convnext_tiny": (0.80, 0.47),  # 0.25 / 0.27 while StochasticDepth and LayerNorm2d froze the streams
    "regnet_y_400mf": (0.37, 0.43),
    "shufflenet_v2_x0_5": (0.30, 0.27),  # the fc (1024 x 1000) is 75% of it: only conv5's outputs shrink it
    "squeezenet1_0": (0.29, 0.39),
    "densenet121": (0.36, 0.44),
}


def randomize(model: nn.Module) -> nn.Module:
    """Statistics and scales a trained model has, so the masked-twin check sees every path: BatchNorm running
    statistics and affine parameters away from (0, 1), ConvNeXt's layer_scale (1e-6 at init) near 1."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
        for name, p in model.named_parameters():
            if name.endswith("layer_scale"):
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
    return model


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("scope", ["global", "local"])
@pytest.mark.parametrize("name", list(tv_shim.MODELS))
def test_torchvision_model_prunes_exactly(name, scope):
    torch.manual_seed(0)
    model = randomize(tv_shim.builder(name)().eval())
    x = tv_shim.example_input(name)
    original = copy.deepcopy(model)
    before = outputs(model, x)
    pruned = prunekit.prune(model, x, granularity="channel", ratio=0.3, criterion="l2", scope=scope)
    after = outputs(pruned, x)
    assert [t.shape for t in after] == [t.shape for t in before]
    removed = 1 - _params(pruned) / _params(original)
    assert removed >= MIN_REMOVED[name][scope == "local"], f"{name} {scope}: removed only {removed:.3f}"
    plan = get_plan(pruned)
    reference = masked_reference(original, plan)  # LayerNorm2d: normalised over its kept channels there
    assert_outputs_close(after, outputs(reference, x))
