"""Every architecture of the test zoo exports to ONNX and TorchScript and agrees with eager PyTorch."""
import pytest
import torch
from torch.nn.utils import prune

from prunekit.export import export, verify_onnx, verify_torchscript
from prunekit._inputs import with_batch_size
from tests.zoo import ZOO


@pytest.mark.parametrize("name", ZOO.names())
def test_zoo_model_exports_and_matches_eager(tmp_path, name):
    entry = ZOO.get(name)
    model, x = entry.build().eval(), entry.example_inputs()
    for module in model.modules():  # masks on every conv / linear: the exports must carry the effective weights
        if isinstance(module, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Linear)):
            prune.l1_unstructured(module, "weight", amount=0.5)
    onnx_path = export(model, x, tmp_path / f"{name}.onnx")
    assert verify_onnx(model, x, onnx_path, atol=1e-4) <= 1e-4
    assert verify_onnx(model, with_batch_size(x, 5), onnx_path, atol=1e-4) <= 1e-4  # dynamic batch
    ts_path = export(model, x, tmp_path / f"{name}.pt", fmt="torchscript")
    assert verify_torchscript(model, x, ts_path, atol=1e-5) <= 1e-5
