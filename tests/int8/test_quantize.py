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
    assert q.applied["preprocess"].startswith("failed, quantized the plain export (AssertionError: shape inference")
    assert compare(q, mlp, val_loader(digits)).top1_agreement >= 0.99
    assert quantize(mlp, digits.example_inputs(1), preprocess=False).applied["preprocess"] == "off (preprocess=False)"


class TinyEncoder(nn.Module):
    """A BERT-like block: embeddings, masked self-attention (-inf on padding, so Softmax meets denormals),
    residual + LayerNorm (onnxruntime's SkipLayerNormalization pattern), GELU feed-forward, mean pooling."""

    def __init__(self, vocab=50, dim=32, heads=4, layers=2):
        super().__init__()
        self.heads = heads
        self.emb = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(nn.ModuleDict({
            "qkv": nn.Linear(dim, 3 * dim), "out": nn.Linear(dim, dim), "ln1": nn.LayerNorm(dim),
            "ff1": nn.Linear(dim, 4 * dim), "ff2": nn.Linear(4 * dim, dim), "ln2": nn.LayerNorm(dim)})
            for _ in range(layers))

    def forward(self, ids, mask):
        x = self.emb(ids)
        b, t, d = x.shape
        pad = (mask == 0)[:, None, None, :]
        for blk in self.blocks:
            qkv = blk["qkv"](x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]
            scores = (q @ k.transpose(-1, -2)) / (d // self.heads) ** 0.5
            att = scores.masked_fill(pad, float("-inf")).softmax(-1) @ v
            x = blk["ln1"](x + blk["out"](att.transpose(1, 2).reshape(b, t, d)))
            x = blk["ln2"](x + blk["ff2"](nn.functional.gelu(blk["ff1"](x))))
        m = mask[..., None].to(x.dtype)
        return (x * m).sum(1) / m.sum(1)


@pytest.fixture(scope="module")
def encoder_batch():
    torch.manual_seed(0)
    model = TinyEncoder().eval()
    ids = torch.randint(1, 50, (6, 24))
    mask = torch.ones(6, 24, dtype=torch.long)
    for i, n in enumerate([24, 20, 13, 9, 5, 2]):  # padded sentences of several lengths
        mask[i, n:] = 0
    with torch.no_grad():
        ref = model(ids, mask)
    return model, ids, mask, ref


def _cosines(out, ref):
    return nn.functional.cosine_similarity(out.float(), ref, dim=1)


def test_transformer_session_defaults_agree_with_eager_and_are_recorded(encoder_batch):
    from prunekit.int8.ort_module import _flushing

    model, ids, mask, ref = encoder_batch
    assert not _flushing()
    q = quantize(model, (ids[:1], mask[:1]))
    assert not _flushing()  # building the session leaves the caller's floating-point mode alone
    out = q(ids, mask)
    assert not _flushing()  # the calling thread's floating-point mode is put back after each call
    assert _cosines(out, ref).min() > 0.99  # against eager float32
    assert q.applied == {"mode": "dynamic", "preprocess": "quant_pre_process", "flush_denormals": True,
                         "disabled_optimizers": ["SkipLayerNormFusion"]}
    plain = quantize(model, (ids[:1], mask[:1]), flush_denormals=False, disabled_optimizers=[])
    assert plain.applied["flush_denormals"] is False and plain.applied["disabled_optimizers"] == []
    assert _cosines(plain(ids, mask), ref).min() > 0.99
    torch.testing.assert_close(out, plain(ids, mask), atol=1e-4, rtol=0)  # flushing denormals changes ~nothing


def test_float32_session_settings_keep_the_export_exact(encoder_batch, tmp_path):
    """OrtModule on a float32 export: flushed denormals and the left-out fusion give eager float32's numbers."""
    model, ids, mask, ref = encoder_batch
    f = prunekit.export.export(model, (ids[:1], mask[:1]), tmp_path / "enc.onnx")
    for kw in ({}, {"flush_denormals": False, "disabled_optimizers": []}, {"threads": 2}):
        torch.testing.assert_close(OrtModule(f, **kw)(ids, mask), ref, atol=1e-5, rtol=1e-4)


def test_denormal_flushing_is_scoped_to_the_block():
    from prunekit.int8.ort_module import _flushing, denormals_flushed

    assert not _flushing()
    with denormals_flushed():
        assert _flushing()
    assert not _flushing()
    torch.set_flush_denormal(True)  # a caller that flushes already keeps flushing
    try:
        with denormals_flushed():
            assert _flushing()
        assert _flushing()
    finally:
        torch.set_flush_denormal(False)


@pytest.mark.parametrize("kwargs, match", [
    ({"flush_denormals": "yes"}, r"flush_denormals must be True or False"),
    ({"preprocess": 1}, r"preprocess must be True or False"),
    ({"disabled_optimizers": "SkipLayerNormFusion"}, r"disabled_optimizers must be a list of names"),
    ({"backend": "torch", "flush_denormals": True}, r"'flush_denormals' does not apply to backend='torch'"),
    ({"backend": "torch", "disabled_optimizers": []}, r"'disabled_optimizers' does not apply to backend='torch'"),
])
def test_bad_session_options_are_config_errors(kwargs, match):
    with pytest.raises(prunekit.ConfigError, match=match):
        prunekit.quantize(nn.Sequential(nn.Linear(4, 2)), torch.randn(1, 4), **kwargs)


def test_session_options_are_in_the_option_table():
    for route in (("onnxruntime", "dynamic"), ("onnxruntime", "static")):
        assert {"flush_denormals", "disabled_optimizers"} <= set(OPTIONS[route])


def test_static_transformer_calibrates_on_integer_token_ids(encoder_batch):
    """Token ids and masks reach the calibration session as integers (a float feed is refused by onnxruntime)."""
    model, ids, mask, ref = encoder_batch
    calib = [(ids[i:i + 2], mask[i:i + 2]) for i in range(0, 6, 2)]
    q = quantize(model, (ids[:1], mask[:1]), mode="static", calibration=calib)
    # static int8 activations (attention probabilities included) on random weights track the float model loosely
    assert _cosines(q(ids, mask), ref).mean() > 0.8
