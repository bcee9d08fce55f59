"""Regulariser values/gradients against hand-derived formulas; group lasso zeros whole rows where L1 does not."""
import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.train.regularize import (REGULARIZERS, GroupLasso, L1, ProximalStep, RegularizerTerm, SumRegularizer,
                                       create_regularizer, zero_group_fraction)


def tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(12, 4))


def grads(reg, model):
    model.zero_grad()
    reg(model).backward()
    return model


def test_registry_lists_all_kinds():
    assert set(REGULARIZERS.names()) >= {"l1", "l2", "elastic_net", "group_lasso", "bn_l1"}
    with pytest.raises(ConfigError, match="known regularizers"):
        create_regularizer("l7")


def test_l1_l2_elastic_values_and_gradients():
    lam = 0.3
    for kind, value, grad in [
        ("l1", lambda w: w.abs().sum(), lambda w: torch.sign(w)),
        ("l2", lambda w: (w ** 2).sum(), lambda w: 2 * w),
        ("elastic_net", lambda w: 0.25 * w.abs().sum() + 0.75 * (w ** 2).sum(), lambda w: 0.25 * torch.sign(w) + 1.5 * w),
    ]:
        m = tiny()
        kw = {"l1_ratio": 0.25} if kind == "elastic_net" else {}
        reg = create_regularizer(kind, strength=lam, **kw)
        ws = [m[0].weight, m[3].weight]
        assert float(reg(m).detach()) == pytest.approx(lam * float(sum(value(w.detach()) for w in ws)), rel=1e-6)
        grads(reg, m)
        for w in ws:
            torch.testing.assert_close(w.grad, lam * grad(w.detach()))
        assert m[1].weight.grad is None and m[0].bias.grad is None  # BN scales and biases untouched


def test_group_lasso_value_and_gradient():
    lam = 0.2
    m = tiny()
    with torch.no_grad():
        m[3].weight[1].zero_()  # an all-zero row: subgradient 0, not NaN
    reg = GroupLasso(strength=lam)
    expected = 0.0
    for w in (m[0].weight.detach(), m[3].weight.detach()):
        rows = w.reshape(w.shape[0], -1)
        expected += rows.shape[1] ** 0.5 * sum(float(torch.sqrt((r ** 2).sum())) for r in rows)
    assert float(reg(m)) == pytest.approx(lam * expected, rel=1e-6)
    grads(reg, m)
    for w in (m[0].weight, m[3].weight):
        rows = w.detach().reshape(w.shape[0], -1)
        norms = rows.norm(dim=1, keepdim=True)
        analytic = torch.where(norms > 0, lam * rows.shape[1] ** 0.5 * rows / norms.clamp_min(1e-30), torch.zeros_like(rows))
        torch.testing.assert_close(w.grad.reshape(rows.shape), analytic)
    assert torch.all(m[3].weight.grad[1] == 0)


def test_group_lasso_input_columns():
    m = tiny()
    reg = GroupLasso(strength=1.0, dim="in")
    w = m[3].weight.detach()
    assert float(reg(m.__class__(m[3]))) == pytest.approx(w.shape[0] ** 0.5 * float(w.norm(dim=0).sum()), rel=1e-6)


def test_bn_l1_network_slimming():
    m = tiny()
    with torch.no_grad():
        m[1].weight.copy_(torch.tensor([0.5, -2.0, 1.0]))
    reg = create_regularizer("bn_l1", strength=0.1)
    assert float(reg(m)) == pytest.approx(0.1 * 3.5)
    grads(reg, m)
    torch.testing.assert_close(m[1].weight.grad, torch.tensor([0.1, -0.1, 0.1]))
    assert m[0].weight.grad is None


def test_include_exclude_and_sum():
    m = tiny()
    only_fc = L1(strength=1.0, include=["3"])
    assert float(only_fc(m)) == pytest.approx(float(m[3].weight.abs().sum()))
    no_fc = L1(strength=1.0, exclude=["3"])
    assert float(no_fc(m)) == pytest.approx(float(m[0].weight.abs().sum()))
    total = SumRegularizer([only_fc, no_fc])
    assert float(total(m)) == pytest.approx(float(L1(strength=1.0)(m)))
    term = RegularizerTerm(kind="group_lasso", strength=0.5, dim="in").build()
    assert isinstance(term, GroupLasso) and term.dim == "in" and term.strength == 0.5


def test_include_exclude_take_module_patterns():
    """include / exclude follow prunekit.match (see tests/test_match.py): names, prefixes, globs, class names,
    types, module objects; one string is one pattern (it used to be split into characters)."""
    m = nn.Sequential(nn.Sequential(nn.Linear(4, 4), nn.ReLU()), nn.Linear(4, 4), nn.Linear(4, 2))
    names = lambda reg: [n for n, _ in reg.tensors(m)]  # noqa: E731
    assert names(L1(include="0")) == ["0.0"]  # a prefix: the Linear inside "0"
    assert names(L1(include="[12]")) == ["1", "2"]  # an fnmatch glob
    assert names(L1(include=["Linear"], exclude=[m[2]])) == ["0.0", "1"]
    assert names(L1(exclude=nn.Sequential)) == ["1", "2"]  # a type covers what is inside the module
    assert names(L1(exclude=["*"])) == []


def test_pattern_naming_nothing_or_no_layer_it_acts_on_is_a_config_error():
    m = tiny()
    with pytest.raises(ConfigError, match="l1 regularizer include pattern '4' matches no module of Sequential"):
        L1(include=["4"])(m)
    with pytest.raises(ConfigError, match="group_lasso regularizer exclude pattern 'BatchNorm3d' matches no module"):
        GroupLasso(exclude="BatchNorm3d").tensors(m)
    with pytest.raises(ConfigError, match="include pattern '2' selects no layer it acts on"):  # the Flatten
        L1(include=["2"])(m)
    with pytest.raises(ConfigError, match="bn_l1 regularizer include pattern type Conv2d selects no layer it acts on"):
        create_regularizer("bn_l1", include=[nn.Conv2d])(m)
    with pytest.raises(ConfigError, match="include takes module patterns"):
        L1(include=[3])


def test_regularize_stage_preflight_refuses_a_pattern_typo():
    from prunekit.train.regularize import RegularizeConfig

    cfg = RegularizeConfig(terms=[RegularizerTerm(kind="l1", include=["features.1"]),
                                  RegularizerTerm(kind="group_lasso", exclude=["featurs.1"])])
    model = nn.Module()
    model.features = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    with pytest.raises(ConfigError, match="group_lasso regularizer exclude pattern 'featurs.1' .*did you mean 'features.1'"):
        cfg.check(model)
    cfg.terms[1].exclude = ["features.1"]
    cfg.check(model)


def test_regularizer_reaches_weight_orig_under_a_mask():
    """Under a torch.nn.utils.prune mask the penalty acts on the trainable ``weight_orig`` (the tensor behind
    ``module.weight``): value and gradient are the analytic ones of ``weight_orig``, on an unmasked layer too."""
    lam = 0.3
    for kind, value, grad in [
        ("l1", lambda w: w.abs().sum(), lambda w: lam * torch.sign(w)),
        ("group_lasso", lambda w: w.shape[1] ** 0.5 * w.norm(dim=1).sum(),
         lambda w: lam * w.shape[1] ** 0.5 * w / w.norm(dim=1, keepdim=True)),
    ]:
        m = tiny()
        torch.nn.utils.prune.l1_unstructured(m[3], "weight", amount=0.5)
        mask = m[3].weight_mask.clone()
        assert 0 < int(mask.sum()) < mask.numel()
        orig = m[3].weight_orig.detach().clone()
        conv = m[0].weight.detach().reshape(3, -1)
        reg = create_regularizer(kind, strength=lam)
        total = reg(m)
        assert float(total.detach()) == pytest.approx(lam * float(value(orig) + value(conv)), rel=1e-6)
        m.zero_grad()
        total.backward()
        torch.testing.assert_close(m[3].weight_orig.grad, grad(orig), rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(m[0].weight.grad.reshape(3, -1), grad(conv), rtol=1e-6, atol=1e-7)
        assert torch.equal(m[3].weight_mask, mask)  # the penalty does not touch the mask


def _toy_regression(seed=0, n=400, d=64, out=8):
    """y = x W*^T + noise; W* has 4 dense informative rows and 4 zero rows."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w_true = torch.randn(out, d, generator=g)
    w_true[4:] = 0.0
    y = x @ w_true.T + 0.5 * torch.randn(n, out, generator=g)
    return x, y, w_true


def _proximal_fit(reg, x, y, lr=0.05, steps=600):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(x.shape[1], y.shape[1], bias=False))
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    prox = ProximalStep(reg, lr)
    for step in range(steps):
        loss = 0.5 * ((model(x) - y) ** 2).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        prox("step", {"step": step, "model": model})
    return model[0].weight.detach()


def test_group_lasso_zeros_whole_rows_where_l1_does_not():
    torch.manual_seed(0)
    x, y, _ = _toy_regression()
    # the noise-only rows' gradient at zero has entries of size ~ sigma/sqrt(n) = 0.025;
    # a per-element strength between that typical size and its maximum over 64 entries
    # lets the group penalty (which sees the row's norm) remove the row while the
    # element-wise L1 penalty keeps the largest noise correlations.
    lam = 0.04
    w_group = _proximal_fit(GroupLasso(strength=lam), x, y)
    w_l1 = _proximal_fit(L1(strength=lam), x, y)
    zero_rows = lambda w: (w.abs().amax(dim=1) == 0).nonzero().flatten().tolist()
    assert zero_rows(w_group) == [4, 5, 6, 7]  # exactly the uninformative rows, exactly zero
    assert zero_rows(w_l1) == []  # L1 zeros scattered weights but no whole row
    assert (w_l1[4:] == 0).float().mean() > 0.5  # ... even though most of those weights are zero
    assert zero_group_fraction(nn.Sequential(nn.Linear(64, 8, bias=False)).requires_grad_(False)) == {"0": 0.0}


def test_subgradient_group_lasso_drives_rows_near_zero():
    torch.manual_seed(0)
    x, y, _ = _toy_regression()
    model = nn.Sequential(nn.Linear(64, 8, bias=False))
    reg = GroupLasso(strength=0.04)
    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    for _ in range(1500):
        loss = 0.5 * ((model(x) - y) ** 2).sum(1).mean() + reg(model)
        opt.zero_grad()
        loss.backward()
        opt.step()
    norms = model[0].weight.detach().norm(dim=1)
    assert norms[4:].max() < 0.05 * norms[:4].min()


def test_regularize_stage_with_proximal_group_lasso_zeros_channels(tmp_path):
    from prunekit.recipe import run_recipe

    recipe = {"seed": 0, "output": str(tmp_path), "data": {"name": "digits", "layout": "flat"},
              "model": {"name": "mlp", "kwargs": {"hidden": [32]}}, "train": {"epochs": 5, "lr": 0.003},
              "regularize": {"terms": [{"kind": "group_lasso", "strength": 0.2, "include": ["features.1"]}],
                             "proximal": True, "fit": {"epochs": 4, "lr": 0.05, "optimizer": "sgd"}},
              "measure": {"latency": False}, "report": {"html": False, "sparse_checkpoint": False}}
    res = run_recipe(recipe)
    import prunekit

    model = prunekit.load(tmp_path / "model.safetensors")
    rows = model.features[1].weight.detach()
    exact_zero_rows = float((rows.abs().amax(dim=1) == 0).float().mean())
    assert 0.0 < exact_zero_rows < 1.0  # the proximal step removed some whole hidden units exactly, not all
    assert res["regularize"]["near_zero_channels"]["features.1"] >= exact_zero_rows
    assert next(r for r in res["stages"] if r["stage"] == "regularize")["proximal"] is True
