"""The reduce stage end to end: fit on train only, reduce -> train -> prune -> fold / pipeline, on digits and breast cancer."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.decomposition import PCA

import prunekit
from prunekit.data import load_data
from prunekit.errors import ReducerError
from prunekit.modelutils import clone_model
from prunekit.models import create_model
from prunekit.recipe.schema import from_dict
from prunekit.recipe.stages import RunContext
from prunekit.recipe.stages.reduce import finish_reduce, run_reduce
from prunekit.reduce import ReduceConfig, ReducedModel, load_pipeline, resize_input
from prunekit.train import FitConfig, evaluate, fit


def make_ctx(data, tmp_path, hidden=(32,)):
    kwargs = {"in_features": int(np.prod(data.input_shape)), "hidden": list(hidden), "num_classes": data.num_classes}
    torch.manual_seed(0)
    model = create_model("mlp", **kwargs)
    return RunContext(model=model, data=data, out_dir=tmp_path, recipe={}, example_inputs=data.example_inputs(1),
                      loss_fn=F.cross_entropy, model_spec={"name": "mlp", "kwargs": kwargs})


def majority_floor(y_train, y_test):
    """Halfway between always predicting the training majority class and perfect accuracy."""
    majority = torch.bincount(y_train).argmax()
    base = float((y_test == majority).float().mean())
    return base + (1.0 - base) / 2


def reduce_train_prune(ctx, cfg, epochs):
    run_reduce(ctx, cfg)
    fit(ctx.model, ctx.data, FitConfig(epochs=epochs, lr=3e-3, batch_size=32))
    ctx.teacher = clone_model(ctx.model).eval()
    ctx.model = prunekit.prune(ctx.model, ctx.example_inputs, granularity="weight", ratio=0.5)
    return finish_reduce(ctx)


@pytest.mark.parametrize("name, method, k, whiten", [("digits", "pca", 16, False), ("breast_cancer", "pca", 5, True),
                                                      ("digits", "lda", 9, False)])
def test_reduce_train_prune_fold_end_to_end(name, method, k, whiten, tmp_path):
    torch.manual_seed(0)
    data = load_data(name=name, layout="flat")
    raw = data
    ctx = make_ctx(data, tmp_path)
    cfg = ReduceConfig(method=method, n_components=k, kwargs={"whiten": True} if whiten else {}, compare=False,
                       latency=False, picture_points=80)
    summary = reduce_train_prune(ctx, cfg, epochs=8)
    reducer = ctx.extras["reduce"]["reducer"]
    assert ctx.model.features[1].in_features == k and ctx.model_spec["kwargs"]["in_features"] == k
    acc = evaluate(ctx.model, ctx.data.x_test, ctx.data.y_test, num_classes=data.num_classes)["accuracy"]
    assert acc > majority_floor(raw.y_train, raw.y_test)
    # the folded model takes raw inputs and equals reducer-then-pruned-model
    assert summary["final"]["fold_max_abs_diff"] < 1e-4
    folded = ctx.extras["reduce"]["folded"]
    assert folded(raw.x_test).argmax(1).tolist() == ctx.model(ctx.data.x_test).argmax(1).tolist()
    # the pipeline directory loads back as one module on raw inputs
    pipe = load_pipeline(tmp_path / "reduce_pipeline")
    torch.testing.assert_close(pipe(raw.x_test), ReducedModel(reducer, ctx.model)(raw.x_test))
    loaded = prunekit.load(tmp_path / "model_folded.safetensors", model=folded)
    torch.testing.assert_close(loaded(raw.x_test), folded(raw.x_test))
    pics = summary["pictures"]
    assert set(pics["models"]) == {"original", "pruned"} and len(pics["labels"]) == 80
    assert np.asarray(pics["models"]["pruned"]["tsne"]).shape == (80, 2)


def test_reducer_state_depends_on_train_split_only(tmp_path):
    data = load_data(name="digits", layout="image")
    ctx = make_ctx(data, tmp_path)
    run_reduce(ctx, ReduceConfig(n_components=8, compare=False, latency=False))
    reducer = ctx.extras["reduce"]["reducer"]
    flat = lambda t: t.reshape(len(t), -1).double().numpy()  # noqa: E731
    train_only = PCA(8, random_state=0).fit(flat(data.x_train))
    leaky = PCA(8, random_state=0).fit(np.concatenate([flat(data.x_train), flat(data.x_test)]))
    np.testing.assert_allclose(np.abs(reducer.estimator_.components_), np.abs(train_only.components_), atol=1e-6)
    assert not np.allclose(np.abs(reducer.estimator_.components_), np.abs(leaky.components_), atol=1e-3)
    assert reducer.fitted_on_["n_samples"] == len(data.x_train)
    # validation / test data went through the out-of-sample transform of that train-only fit
    np.testing.assert_allclose(ctx.data.x_test.numpy(), train_only.transform(flat(data.x_test)), atol=1e-4)
    np.testing.assert_allclose(ctx.data.x_val.numpy(), train_only.transform(flat(data.x_val)), atol=1e-4)
    assert torch.equal(ctx.data.y_test, data.y_test)


def test_sweep_and_comparison_rows(tmp_path):
    data = load_data(name="breast_cancer", layout="flat")
    ctx = make_ctx(data, tmp_path, hidden=(16,))
    cfg = ReduceConfig(n_components=4, sweep=[2, 8], train=FitConfig(epochs=2), latency=True, pictures=False)
    run_reduce(ctx, cfg)
    rows = {r["variant"]: r for r in ctx.results["reduce"]["rows"]}
    assert {"no-reduction", "pca-2", "pca-4", "pca-8", "input-prune-4"} <= set(rows)
    assert rows["no-reduction"]["in_features"] == 30 and rows["pca-8"]["in_features"] == 8
    # hidden 16, 2 classes: Linear(k,16) + Linear(16,2) MACs per sample, by hand
    for k in (2, 4, 8):
        assert rows[f"pca-{k}"]["macs"] == k * 16 + 16 * 2
        assert rows[f"pca-{k}"]["end_to_end"]["macs"] == 30 * k + k * 16 + 16 * 2  # projection counted too
        assert rows[f"pca-{k}"]["latency_ms_b64"] > 0
    assert rows["pca-4"]["chosen"] and not rows["pca-2"]["chosen"]
    assert "error" not in rows["input-prune-4"]  # learned feature selection: first Linear keeps 4 of 30 inputs
    assert rows["input-prune-4"]["macs"] == 4 * 16 + 16 * 2
    curve = ctx.results["reduce"]["explained_variance"]
    assert len(curve) == 30 and abs(curve[-1] - 1.0) < 1e-4 and all(np.diff(curve) >= -1e-9)


def test_user_model_without_in_features_gets_its_first_linear_resized():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    resized, spec = resize_input(model, {}, 5, torch.randn(2, 1, 8, 8))
    assert resized[1].in_features == 5 and resized(torch.randn(4, 5)).shape == (4, 3)
    assert torch.equal(resized[3].weight, model[3].weight)  # later layers untouched
    odd = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(), torch.nn.LazyLinear(3))
    with pytest.raises(ReducerError, match="in_features"):
        resize_input(odd, {}, 5, torch.randn(2, 1, 8, 8))


@pytest.mark.parametrize("section, match", [({"method": "tsne"}, "no out-of-sample"), ({"n_components": 0}, ">= 1")])
def test_bad_reduce_sections(section, match):
    with pytest.raises(ReducerError, match=match):
        from_dict(ReduceConfig, section, "reduce")
