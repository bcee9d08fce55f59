"""ONNX / TorchScript exports equal eager PyTorch, at other batch sizes too, and masked models export their effective weights."""
import copy
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from prunekit.errors import InputError, PrunekitError
from prunekit.export import EXPORTERS, ExportError, export, register_exporter, verify_onnx, verify_torchscript


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2))
        self.fc = nn.Linear(32, 5)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 3), nn.Linear(6, 3)

    def forward(self, x, y):
        return self.a(x) + self.b(y), self.a(x)


def cnn():
    torch.manual_seed(0)
    model = SmallCNN()
    with torch.no_grad():  # non-trivial BN statistics so eval mode matters
        model.features[1].running_mean.uniform_(-1, 1)
        model.features[1].running_var.uniform_(0.5, 2)
    return model, torch.randn(3, 1, 8, 8)


def masked_cnn():
    model, x = cnn()
    prune.l1_unstructured(model.features[0], "weight", amount=0.6)
    prune.random_unstructured(model.fc, "weight", amount=0.5)
    return model, x


def ort_run(path, feeds):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)


def test_onnx_matches_eager_at_export_and_other_batch_sizes(tmp_path):
    model, x = cnn()
    model.train()
    path = export(model, x, tmp_path / "m.onnx")
    onnx.checker.check_model(str(path))
    assert model.training  # the user's model is untouched
    model.eval()
    for batch in (3, 1, 17):
        xb = torch.randn(batch, 1, 8, 8)
        got = ort_run(path, {"input_0": xb.numpy()})[0]
        assert got.shape == (batch, 5)
        assert np.abs(got - model(xb).detach().numpy()).max() < 1e-4
    assert verify_onnx(model, torch.randn(9, 1, 8, 8), path) < 1e-4


@pytest.mark.parametrize("dynamo", [False, True])
def test_both_onnx_exporters_give_a_dynamic_batch(tmp_path, dynamo):
    model, x = cnn()
    path = export(model, x[:1], tmp_path / "m.onnx", dynamo=dynamo)  # batch 1 must not be baked in
    assert verify_onnx(model, torch.randn(4, 1, 8, 8), path) < 1e-4


def test_masked_model_exports_effective_weights_and_stays_masked(tmp_path):
    model, x = masked_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    onnx_path = export(model, x, tmp_path / "m.onnx")
    ts_path = export(model, x, tmp_path / "m.pt", fmt="torchscript")
    assert {k: v for k, v in model.state_dict().items()}.keys() == before.keys()  # masks still there
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    model.eval()
    expected = model(x).detach()
    assert np.abs(ort_run(onnx_path, {"input_0": x.numpy()})[0] - expected.numpy()).max() < 1e-4
    with warnings.catch_warnings():  # torch.jit.load is deprecated upstream; it still loads
        warnings.simplefilter("ignore")
        loaded = torch.jit.load(str(ts_path))
    assert torch.allclose(loaded(x), expected, atol=1e-6)
    # the exported weights are the masked ones: zeros exactly where the mask is zero
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(onnx_path)).graph.initializer}
    fc = next(w for w in weights.values() if w.shape == (5, 32))
    assert np.array_equal(fc == 0, (model.fc.weight_mask == 0).numpy())


def test_torchscript_matches_eager_and_falls_back_to_script(tmp_path):
    model, x = cnn()
    path = export(model, x, tmp_path / "m.pt", fmt="torchscript")
    assert verify_torchscript(model, torch.randn(6, 1, 8, 8), path) < 1e-6
    scripted = export(model, x, tmp_path / "s.pt", fmt="torchscript", method="script")
    assert verify_torchscript(model, x, scripted) < 1e-6


def test_multiple_and_keyword_inputs(tmp_path):
    torch.manual_seed(0)
    model = TwoInputs().eval()
    inputs = {"x": torch.randn(2, 4), "y": torch.randn(2, 6)}
    path = export(model, inputs, tmp_path / "two.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["x", "y"]
    assert [o.name for o in session.get_outputs()] == ["output_0", "output_1"]
    big = {"x": torch.randn(7, 4), "y": torch.randn(7, 6)}
    assert verify_onnx(model, big, path) < 1e-5
    ts = export(model, (inputs["x"], inputs["y"]), tmp_path / "two.pt", fmt="torchscript")
    assert verify_torchscript(model, (big["x"], big["y"]), ts) < 1e-6


def test_verify_reports_a_mismatch(tmp_path):
    model, x = cnn()
    path = export(model, x, tmp_path / "m.onnx")
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.fc.bias += 1.0
    with pytest.raises(ExportError, match="differs"):
        verify_onnx(other, x, path)


def test_errors_are_prunekit_errors(tmp_path):
    model, _ = cnn()
    with pytest.raises(InputError):
        export(model, torch.randn(2, 3, 8, 8), tmp_path / "bad.onnx")
    with pytest.raises(PrunekitError, match="unknown exporter"):
        export(model, torch.randn(2, 1, 8, 8), tmp_path / "m.x", fmt="tflite")
    assert issubclass(ExportError, PrunekitError)


def test_registered_exporter_receives_finalized_copy(tmp_path):
    seen = {}

    @register_exporter("test_state_dict")
    def state_dict_exporter(model, example_inputs, path, **kw):
        seen["keys"] = list(model.state_dict())
        seen["negative_zeros"] = sum(int(((p == 0) & torch.signbit(p)).sum()) for p in model.parameters())
        seen["training"] = model.training
        torch.save(model.state_dict(), path)
        return path

    try:
        model, x = masked_cnn()
        export(model, x, tmp_path / "sd.pt", fmt="test_state_dict")
        assert not any(k.endswith(("_orig", "_mask")) for k in seen["keys"]) and seen["training"] is False
        assert seen["negative_zeros"] == 0  # pruned entries are plain +0.0
        assert "fc.weight_mask" in model.state_dict()
    finally:
        EXPORTERS.unregister("test_state_dict")
