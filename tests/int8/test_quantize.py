"""int8 models agree with eager float32 (the reference), on CNNs, MLPs, pruned and masked models, from both backends."""
import gc
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import prunekit
from prunekit.int8 import OPTIONS, OrtModule, compare, quantize
from prunekit.int8.torch_backend import quiet_ao_deprecations


def val_loader(digits):
    return digits.loader("val", 64)


def test_static_onnxruntime_cnn_agrees_with_float32(cnn, digits, train_batches):
    q = quantize(cnn, digits.example_inputs(1), mode="static", calibration=train_batches)
    c = compare(q, cnn, val_loader(digits))
    assert c.samples == len(digits.x_val)
    assert c.top1_agreement >= 0.99
    assert c.max_abs_diff < 0.25 and c.mean_abs_diff < 0.05  # logits span ~20: a fraction of a percent of that
    assert abs(c.accuracy - c.float_accuracy) <= 0.01 and c.float_accuracy > 0.9
    assert q.file_bytes() < 0.4 * q.float_bytes  # int8 weights: about a quarter of the float32 file


def test_static_calibration_reads_only_the_calibration_batches(cnn, digits):
    """The activation ranges come from the calibration iterable alone, and no more than calibration_batches of it."""
    yielded = []

    def recording():
        for x, y in digits.loader("train", 32, shuffle=True, seed=1):
            yielded.append(x)
            yield x, y

    quantize(cnn, digits.example_inputs(1), mode="static", calibration=recording(), calibration_batches=3)
    assert len(yielded) == 3
    train_rows = {row.numpy().tobytes() for row in digits.x_train}
    assert all(row.numpy().tobytes() in train_rows for x in yielded for row in x)  # training data only


def test_dynamic_onnxruntime_mlp_agrees_with_float32(mlp, digits):
    q = quantize(mlp, digits.example_inputs(1))  # the defaults: onnxruntime, dynamic
    c = compare(q, mlp, val_loader(digits))
    assert c.top1_agreement >= 0.99 and c.max_abs_diff < 0.2
    assert q.file_bytes() < 0.4 * q.float_bytes


def test_torch_backend_mlp_agrees_with_eager_and_stays_quiet(mlp, digits):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        q = quantize(mlp, digits.example_inputs(1), backend="torch")
        c = compare(q, mlp, val_loader(digits))
    assert not [w for w in caught if "deprecated" in str(w.message)], [str(w.message)[:80] for w in caught]
    assert q[1]._get_name() == "DynamicQuantizedLinear" and isinstance(mlp[1], nn.Linear)  # the float model is kept
    assert c.top1_agreement >= 0.99 and c.max_abs_diff < 0.2


def test_silencing_torch_deprecations_keeps_other_warnings():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet_ao_deprecations():
            warnings.warn("torch.ao.quantization is deprecated and will be removed", DeprecationWarning)
            warnings.warn("something else", UserWarning)
    assert [str(w.message) for w in caught] == ["something else"]


def test_channel_pruned_model_quantizes(cnn, digits, train_batches):
    x = digits.example_inputs(1)
    slim = prunekit.prune(cnn, x, granularity="channel", ratio=0.5)
    assert slim.features[0].out_channels < cnn.features[0].out_channels
    q = quantize(slim, x, mode="static", calibration=train_batches)
    assert compare(q, slim, val_loader(digits)).top1_agreement >= 0.97


def test_weight_masked_model_exports_clean_and_quantizes(mlp, digits):
    x = digits.example_inputs(1)
    masked = prunekit.prune(mlp, x, granularity="weight", ratio=0.5)
    assert prunekit.unstructured.get_masks(masked)
    q = quantize(masked, x)
    names = [i.name for i in onnx.load(str(q.path)).graph.initializer]
    assert not [n for n in names if n.endswith(("_orig", "_mask"))]
    assert prunekit.unstructured.is_masked(masked[1])  # the user's model keeps its masks
    assert compare(q, masked, val_loader(digits)).top1_agreement >= 0.98


def test_path_writes_a_loadable_onnx_and_nothing_else(cnn, digits, tmp_path):
    x = digits.x_val[:7]
    q = quantize(cnn, digits.example_inputs(1), path=tmp_path / "m.int8.onnx")
    assert q.path == tmp_path / "m.int8.onnx" and [p.name for p in tmp_path.iterdir()] == ["m.int8.onnx"]
    session = ort.InferenceSession(str(q.path), providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_array_equal(out, q(x).numpy())
    assert q.input_names == ["input_0"] and q.output_names == ["output_0"] and q.eval() is q


def test_temporary_file_lives_as_long_as_the_module(mlp, digits):
    q = quantize(mlp, digits.example_inputs(1))
    path = q.path
    assert path.is_file()
    del q
    gc.collect()
    assert not path.exists() and not path.parent.exists()


def test_ort_module_batch_handling(cnn, digits, tmp_path):
    q = quantize(cnn, digits.example_inputs(1), path=tmp_path / "q.onnx")
    x = digits.x_val[:5]
    assert q(x[0]).shape == (10,)  # one sample without a batch dimension
    torch.testing.assert_close(q(x[0]), q(x[:1])[0])
    fixed = prunekit.export.export(cnn, x[:2], tmp_path / "fixed.onnx", dynamic_batch=False)
    runner = OrtModule(fixed)
    assert runner.batch_size == 2
    torch.testing.assert_close(runner(x), cnn(x).detach(), atol=1e-4, rtol=1e-4)  # 5 samples in chunks of 2


@pytest.mark.parametrize("kwargs, match", [
    ({"bogus": 1}, r"unknown int8 option 'bogus'.*allowed options: per_channel"),
    ({"layer_types": ["Linear"]}, r"'layer_types' does not apply to backend='onnxruntime'"),
    ({"mode": "static"}, r"needs calibration batches.*calibration="),
    ({"mode": "static", "backend": "torch", "calibration": []}, r"backend='onnxruntime'"),
    ({"mode": "int4"}, r"mode must be one of"),
    ({"backend": "tensorrt"}, r"backend must be one of"),
    ({"backend": "torch", "path": "x.onnx"}, r"path= writes an .onnx"),
    ({"backend": "torch", "per_channel": True}, r"does not apply to backend='torch'"),
    ({"mode": "static", "calibration": [], "calibrate_method": "mean"}, r"calibrate_method must be one of"),
])
def test_bad_requests_are_config_errors(kwargs, match):
    model = nn.Sequential(nn.Linear(4, 2))
    with pytest.raises(prunekit.ConfigError, match=match):
        prunekit.quantize(model, torch.randn(1, 4), **kwargs)


def test_option_table():
    assert "calibration_batches" in OPTIONS[("onnxruntime", "static")]
    assert "calibration_batches" not in OPTIONS[("onnxruntime", "dynamic")]
    assert OPTIONS[("torch", "dynamic")] == ("layer_types",)


def test_conv_only_model_on_torch_backend_is_refused():
    with pytest.raises(prunekit.ConfigError, match="no Linear layer"):
        quantize(nn.Sequential(nn.Conv2d(1, 2, 3)), torch.randn(1, 1, 8, 8), backend="torch")


def test_a_failing_pre_process_falls_back_to_the_plain_export(mlp, digits, monkeypatch):
    import onnxruntime.quantization.shape_inference as shape_inference

    calls = []

    def broken(*args, **kwargs):
        calls.append(kwargs.get("skip_symbolic_shape"))
        raise AssertionError("shape inference gave up")

    monkeypatch.setattr(shape_inference, "quant_pre_process", broken)
    q = quantize(mlp, digits.example_inputs(1))
    assert calls == [False, True]  # symbolic shape inference, then onnx's own, then the export as it is
    assert compare(q, mlp, val_loader(digits)).top1_agreement >= 0.99
