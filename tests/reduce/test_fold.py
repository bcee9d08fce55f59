"""fold_into: the folded model equals reducer-then-model (sklearn's transform as the reference) and is a normal model."""
import onnxruntime as ort
import pytest
import torch
from torch import nn

import prunekit
from prunekit.errors import ReducerError
from prunekit.reduce import Reducer, fold_into


def _check_equivalent(reducer, model, x):
    reference = model(reducer.transform(x))  # sklearn's own out-of-sample transform, then the model
    folded = fold_into(model, reducer)
    out = folded(x)
    assert out.shape == reference.shape
    torch.testing.assert_close(out, reference, atol=1e-4, rtol=1e-4)
    return folded


@pytest.mark.parametrize("kwargs", [{}, {"whiten": True}])
def test_pca_fold_equals_reduce_then_model_on_images(digits, kwargs, tiny_mlp):
    x, y = digits
    reducer = Reducer("pca", 12, **kwargs).fit(x[:400])
    folded = _check_equivalent(reducer, tiny_mlp(12), x[400:])
    assert isinstance(folded[0], nn.Flatten)  # images: flatten prepended so the folded model takes (N, 1, 8, 8)


@pytest.mark.parametrize("solver", ["svd", "eigen"])
def test_lda_fold_equals_reduce_then_model(digits, solver, tiny_mlp):
    x, y = digits
    flat = x.reshape(len(x), -1)
    kwargs = {"solver": solver} if solver == "svd" else {"solver": solver, "shrinkage": "auto"}
    reducer = Reducer("lda", 7, **kwargs).fit(flat[:400], y[:400])
    _check_equivalent(reducer, tiny_mlp(7), flat[400:])


def test_fold_into_pointwise_conv_for_channel_reduction():
    torch.manual_seed(0)
    imgs = torch.randn(40, 6, 5, 5) + torch.linspace(0, 2, 6)[None, :, None, None]
    pixels = imgs.permute(0, 2, 3, 1).reshape(-1, 6)  # one sample per pixel: reduce the channels
    reducer = Reducer("pca", 3, whiten=True).fit(pixels)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 2, 3))
    reduced = reducer.transform(pixels).reshape(40, 5, 5, 3).permute(0, 3, 1, 2)
    folded = fold_into(model, reducer)
    assert isinstance(folded[0], nn.Conv2d) and folded[0].in_channels == 6
    torch.testing.assert_close(folded(imgs), model(reduced), atol=1e-4, rtol=1e-4)


def test_fold_uses_masked_weights_of_a_pruned_first_layer(digits, tiny_mlp):
    x, _ = digits
    reducer = Reducer("pca", 10).fit(x[:400])
    model = prunekit.prune(tiny_mlp(10), torch.zeros(2, 10), granularity="weight", ratio=0.5)
    _check_equivalent(reducer, model, x[400:])


def test_folded_model_prunes_saves_and_exports(digits, tmp_path, tiny_mlp):
    x, _ = digits
    reducer = Reducer("pca", 10).fit(x[:400])
    folded = fold_into(tiny_mlp(10), reducer).eval()
    pruned = prunekit.prune(folded, x[:4], granularity="weight", ratio=0.6)
    zeros = sum(int((m.weight == 0).sum()) for m in pruned.modules() if isinstance(m, nn.Linear))
    assert zeros > 0
    prunekit.save(pruned, tmp_path / "folded.safetensors")
    loaded = prunekit.load(tmp_path / "folded.safetensors", model=folded)
    torch.testing.assert_close(loaded(x[400:]), pruned(x[400:]))
    final = prunekit.finalize(prunekit.clone_model(pruned)).eval()
    torch.onnx.export(final, (x[:2],), str(tmp_path / "folded.onnx"), input_names=["x"], dynamic_axes={"x": {0: "n"}},
                      dynamo=False)
    sess = ort.InferenceSession(str(tmp_path / "folded.onnx"))
    (onnx_out,) = sess.run(None, {"x": x[400:].numpy()})
    torch.testing.assert_close(torch.from_numpy(onnx_out), pruned(x[400:]).detach(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("method", ["kernel_pca", "isomap"])
def test_non_linear_reducer_refuses_to_fold(digits, method, tiny_mlp):
    x, _ = digits
    reducer = Reducer(method, 4).fit(x[:200])
    with pytest.raises(ReducerError, match="non-linear"):
        fold_into(tiny_mlp(4), reducer)


def test_fold_refuses_model_whose_first_layer_does_not_see_the_input(digits, tiny_mlp):
    x, _ = digits
    reducer = Reducer("pca", 8).fit(x[:200])
    model = nn.Sequential(nn.BatchNorm1d(8), nn.Linear(8, 3))
    with pytest.raises(ReducerError, match="cannot fold"):
        fold_into(model, reducer)
    with pytest.raises(ReducerError, match=r"Linear\(5, 16\)"):
        fold_into(tiny_mlp(5), reducer)


def test_folded_model_prunes_channels_and_reloads_with_its_plan(digits, tiny_mlp, tmp_path):
    x, _ = digits
    reducer = Reducer("lda", 6).fit(x[:400].reshape(400, -1), digits[1][:400])
    folded = fold_into(tiny_mlp(6), reducer).eval()
    pruned = prunekit.prune(folded, x[:4].reshape(4, -1), granularity="channel", ratio=0.5)
    hidden = [m for m in pruned.modules() if isinstance(m, nn.Linear)][0]
    assert hidden.in_features == 64 and hidden.out_features == 8  # raw inputs kept, half the hidden units removed
    prunekit.save(pruned, tmp_path / "ch.safetensors")
    loaded = prunekit.load(tmp_path / "ch.safetensors", model=folded)
    torch.testing.assert_close(loaded(x[400:].reshape(200, -1)), pruned(x[400:].reshape(200, -1)))


@pytest.mark.parametrize("how", ["merge", "prepend", "auto"])
def test_every_fold_mode_equals_reduce_then_model(digits, tiny_mlp, how):
    x, _ = digits
    reducer = Reducer("pca", 6).fit(x[:400])
    model = tiny_mlp(6, hidden=48)
    reference = model(reducer.transform(x[400:]))
    torch.testing.assert_close(fold_into(model, reducer, how=how)(x[400:]), reference, atol=1e-4, rtol=1e-4)


def _linear_macs(model: nn.Module) -> int:
    return sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, nn.Linear))


def test_auto_fold_keeps_the_projection_in_front_of_a_wide_first_layer(digits, tiny_mlp):
    x, _ = digits
    reducer = Reducer("pca", 4).fit(x[:400])  # 64 -> 4 components, first layer 4 -> 48
    model = tiny_mlp(4, hidden=48)
    merged, prepended = fold_into(model, reducer, how="merge"), fold_into(model, reducer, how="prepend")
    assert _linear_macs(merged) == 64 * 48 + 48 * 10  # hand count: merged first layer is 64 x 48
    assert _linear_macs(prepended) == 64 * 4 + 4 * 48 + 48 * 10  # projection 64 x 4, then the unchanged model
    auto = fold_into(model, reducer, how="auto")
    assert _linear_macs(auto) == _linear_macs(prepended)
    narrow = tiny_mlp(4, hidden=3)  # merging 64 -> 3 is cheaper than 64 -> 4 -> 3
    assert _linear_macs(fold_into(narrow, reducer, how="auto")) == 64 * 3 + 3 * 10


def test_prepend_fold_of_pointwise_conv_equals_reduce_then_model():
    torch.manual_seed(0)
    imgs = torch.randn(20, 6, 5, 5)
    pixels = imgs.permute(0, 2, 3, 1).reshape(-1, 6)
    reducer = Reducer("pca", 2).fit(pixels)
    model = nn.Sequential(nn.Conv2d(2, 16, 1), nn.ReLU(), nn.Conv2d(16, 2, 3))
    reduced = reducer.transform(pixels).reshape(20, 5, 5, 2).permute(0, 3, 1, 2)
    folded = fold_into(model, reducer, how="auto")  # 6*16 merged vs 6*2 + 2*16 prepended per pixel
    assert isinstance(folded[0], nn.Conv2d) and (folded[0].in_channels, folded[0].out_channels) == (6, 2)
    torch.testing.assert_close(folded(imgs), model(reduced), atol=1e-4, rtol=1e-4)


def test_unknown_fold_mode_is_refused(digits, tiny_mlp):
    x, _ = digits
    reducer = Reducer("pca", 4).fit(x[:400])
    with pytest.raises(ReducerError, match="how must be one of merge, prepend, auto"):
        fold_into(tiny_mlp(4), reducer, how="inline")
