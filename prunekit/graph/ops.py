"""Channel rules for functions and tensor methods: a table from op to ``rule(propagator, node) -> value``."""
from __future__ import annotations

import operator
from typing import Any, Callable, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
import torch.fx as fx

from ..registry import Registry
from .layout import Layout, norm_dim
from .reshape import reshape_rule

Rule = Callable[[Any, fx.Node], Any]
FUNCTION_RULES: Registry[Rule] = Registry("function op rule")  # callable target (torch.add, aten.add.Tensor) -> rule
METHOD_RULES: Registry[Rule] = Registry("tensor method op rule")  # tensor method name ("add") -> rule


def register_op(*targets: Any, override: bool = False) -> Callable[[Rule], Rule]:
    """Register a rule for callables (``torch.add``) and/or tensor method names (``"add"``): the extension point.

    A target that already has a rule raises :class:`~prunekit.errors.ConfigError` (and nothing is
    registered) unless ``override=True``. For a temporary rule use
    ``with FUNCTION_RULES.scoped(torch.add, rule): ...`` (``METHOD_RULES`` for method names).
    """

    def deco(rule: Rule) -> Rule:
        if not override:
            for t in targets:
                table = METHOD_RULES if isinstance(t, str) else FUNCTION_RULES
                if t in table:
                    table.add(t, rule)  # raises the "already registered" ConfigError
        for t in targets:
            (METHOD_RULES if isinstance(t, str) else FUNCTION_RULES).add(t, rule, override=True)
        return rule

    return deco


def op_name(node: fx.Node) -> str:
    if node.op == "call_method":
        return str(node.target)
    if isinstance(node.target, torch._ops.OpOverload):
        return node.target._opname  # aten.view.default -> "view"
    return getattr(node.target, "__name__", str(node.target))


# rules for functions of libraries prunekit does not import, by "module.qualname" (torch.fx.wrap-ped helpers)
NAMED_FUNCTION_RULES: Registry[Rule] = Registry("named function op rule")


def rule_for(node: fx.Node) -> Optional[Rule]:
    if node.op == "call_method":
        return METHOD_RULES.find(str(node.target))
    rule = FUNCTION_RULES.find(node.target)
    if rule is None and callable(node.target):
        name = f"{getattr(node.target, '__module__', '')}.{getattr(node.target, '__qualname__', '')}"
        rule = NAMED_FUNCTION_RULES.find(name)
    return rule


def tensor_args(p, node: fx.Node) -> List[fx.Node]:
    flat: List[Any] = []
    fx.node.map_arg((node.args, node.kwargs), flat.append)
    return [a for a in flat if isinstance(p.value(a), Layout)]


# ---- element-wise ----------------------------------------------------------------------------
def elementwise(p, node: fx.Node, inputs: Optional[List[fx.Node]] = None) -> Any:
    """Broadcast alignment from the right: equal-size tracked dims are unified; tracked vs untracked freezes."""
    out_shape = p.shape(node)
    if out_shape is None:
        p.freeze_value([p.value(a) for a in tensor_args(p, node)], f"`{op_name(node)}` returns a non-tensor")
        return p.untracked_like(node)
    inputs = tensor_args(p, node) if inputs is None else inputs
    nd = len(out_shape)
    dims: List[Optional[np.ndarray]] = []
    for d in range(nd):
        tracked, plain = [], False
        for a in inputs:
            lay, shape = p.value(a), p.shape(a)
            k = d - (nd - lay.ndim)
            if k < 0:
                continue
            if shape[k] == out_shape[d] and lay.dims[k] is not None:
                tracked.append(lay.dims[k])
            elif lay.dims[k] is not None:
                p.ids.freeze(lay.dims[k], f"broadcast along a channel dim in `{op_name(node)}` ({node.name})")
            elif shape[k] == out_shape[d] and out_shape[d] > 1:
                plain = True
        if not tracked:
            dims.append(None)
            continue
        for other in tracked[1:]:
            p.ids.union(tracked[0], other)
        if plain:
            p.ids.freeze(tracked[0], f"combined with an untracked tensor in `{op_name(node)}` ({node.name})")
        dims.append(tracked[0])
    return Layout(dims)


register_op(
    operator.add, operator.sub, operator.mul, operator.truediv, operator.floordiv, operator.iadd, operator.imul,
    operator.isub, operator.itruediv, operator.pow, torch.add, torch.sub, torch.mul, torch.div, torch.maximum,
    torch.minimum, torch.where, torch.pow, torch.relu, F.relu, torch.sigmoid, torch.tanh, F.gelu, F.silu,
    F.hardswish, F.hardsigmoid, F.relu6, F.leaky_relu, F.elu, F.mish, F.softplus, F.hardtanh, F.dropout, F.sigmoid,
    F.tanh, torch.exp, torch.abs, operator.neg, torch.neg, torch.sqrt, torch.rsqrt, torch.clamp, torch.erf,
    "add", "sub", "mul", "div", "add_", "mul_", "sub_", "div_", "pow", "relu", "relu_", "sigmoid", "sigmoid_", "tanh",
    "tanh_", "exp", "abs", "neg", "sqrt", "rsqrt", "clamp", "clamp_", "clamp_min", "clamp_max", "masked_fill",
    "masked_fill_", "where", "maximum", "minimum", "contiguous", "clone", "detach", "float", "half", "double",
)(elementwise)
# More element-wise functions: unary math, comparisons, logical ops, activations, multi-input blends.
register_op(
    torch.log, torch.log1p, torch.log2, torch.log10, torch.expm1, torch.exp2, torch.square, torch.reciprocal,
    torch.sign, torch.floor, torch.ceil, torch.round, torch.trunc, torch.frac, torch.sin, torch.cos, torch.tan,
    torch.atan, torch.sinh, torch.cosh, torch.asinh, torch.erfc, torch.logit, torch.clip, torch.clamp_min,
    torch.clamp_max, torch.nan_to_num, torch.eq, torch.ne, torch.gt, torch.lt, torch.ge, torch.le, torch.logical_not,
    torch.logical_and, torch.logical_or, torch.logical_xor, torch.isnan, torch.isinf, torch.isfinite, torch.lerp,
    torch.addcmul, torch.addcdiv, torch.fmod, torch.remainder, torch.square_, torch.relu_, torch.sigmoid_,
    torch.tanh_, torch.exp_, F.selu, F.celu, F.rrelu, F.logsigmoid, F.softsign, F.tanhshrink, F.hardshrink,
    F.softshrink, F.threshold, F.relu_, F.elu_, F.leaky_relu_, F.hardtanh_, F.threshold_, F.rrelu_, F.celu_,
    F.selu_, operator.eq, operator.ne, operator.lt, operator.gt, operator.le, operator.ge, operator.and_,
    operator.or_, operator.xor, operator.invert, operator.mod, operator.abs,
    "log", "log1p", "log2", "expm1", "square", "reciprocal", "sign", "floor", "ceil", "round", "trunc", "sin",
    "cos", "erf", "erf_", "logit", "clip", "clip_", "nan_to_num", "eq", "ne", "gt", "lt", "ge", "le",
    "logical_not", "logical_and", "logical_or", "isnan", "isinf", "isfinite", "lerp", "addcmul", "addcdiv", "fmod",
    "remainder", "pow_", "exp_", "neg_", "abs_", "sqrt_", "rsqrt_", "fill_", "zero_", "copy_", "bool", "int",
    "long", "square_", "reciprocal_", "floor_divide",
)(elementwise)
# Dropout of every kind zeroes (and rescales) single elements or whole channels, in place or not; in eval it is
# the identity: the channels pass unchanged (HF MobileNetV2's classifier runs `nn.Dropout(inplace=True)`).
register_op(F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout, torch.dropout,
            torch.dropout_, torch.feature_dropout, torch.feature_dropout_, torch.alpha_dropout, torch.alpha_dropout_,
            torch.feature_alpha_dropout, torch.feature_alpha_dropout_)(elementwise)


def first_input(p, node: fx.Node) -> Any:
    """A function whose output is its first argument scaled per sample or per batch (torchvision's
    stochastic_depth: identity in eval, random whole-sample drop in training): the channels pass unchanged."""
    src = node.args[0] if node.args else node.kwargs.get("input")
    if isinstance(src, fx.Node) and p.shape(src) == p.shape(node) and isinstance(p.value(src), Layout):
        return p.value(src)
    p.freeze_value([p.value(a) for a in tensor_args(p, node)], f"`{op_name(node)}` changes the shape ({node.name})")
    return p.untracked_like(node)


NAMED_FUNCTION_RULES.add("torchvision.ops.stochastic_depth.stochastic_depth", first_input)


@register_op(F.layer_norm)
def layer_norm(p, node: fx.Node) -> Any:
    """F.layer_norm over the last dim (torchvision's LayerNorm2d permutes around it): the channels of that dim
    are those of ``weight`` / ``bias``, and the owner's ``normalized_shape`` shrinks with them."""
    args = list(node.args) + [None] * 5
    x = args[0]
    shape = node.kwargs.get("normalized_shape", args[1])
    extras = [node.kwargs.get("weight", args[2]), node.kwargs.get("bias", args[3])]
    lay = p.value(x)
    if not isinstance(lay, Layout):
        return p.untracked_like(node)
    shape = tuple(shape) if isinstance(shape, (tuple, list)) else (shape,)
    ids = lay.dims[-1]
    params = [p.value(a) for a in extras if isinstance(a, fx.Node)]
    if len(shape) != 1 or ids is None or any(not isinstance(v, Layout) or v.ndim != 1 for v in params):
        for d in range(max(1, len(shape))):
            p.ids.freeze(lay.dims[-1 - d], f"`layer_norm` normalises over several dims including a channel dim ({node.name})")
        p.freeze_value(params, f"`layer_norm` weight of {node.name}")
        return lay
    owner_name = p.owner(node)
    owner = p.modules.get(owner_name)
    if isinstance(shape[0], int) and owner is not None and tuple(getattr(owner, "normalized_shape", ())) == shape:
        from .propagate import ConstPatch

        p.result.patches.append(ConstPatch(owner_name, "normalized_shape[0]", ids))
    elif isinstance(shape[0], int) and not getattr(p.captured, "exported", False):
        p.ids.freeze(ids, f"`layer_norm` size {shape[0]} is not an attribute of {owner_name or 'the model'} ({node.name})")
    for v in params:
        if v.dims[0] is not None:
            p.ids.union(ids, v.dims[0])
        else:
            p.ids.freeze(ids, f"`layer_norm` weight of {node.name} is untracked")
    return lay


@register_op("to", "type", "type_as", "requires_grad_", "cpu", "cuda", "bfloat16")
def unary(p, node: fx.Node) -> Any:
    src = node.args[0]
    if p.shape(src) == p.shape(node):
        return p.value(src)
    p.freeze_value(p.value(src), f"`{op_name(node)}` changes the shape")
    return p.untracked_like(node)


# ---- along one dim ---------------------------------------------------------------------------
def _dim_arg(node: fx.Node, pos: int, default=None):
    return node.kwargs.get("dim", node.args[pos] if len(node.args) > pos else default)


@register_op(torch.softmax, F.softmax, torch.log_softmax, F.log_softmax, F.normalize, "softmax", "log_softmax")
def normalize_along(p, node: fx.Node) -> Any:
    lay = p.value(node.args[0])
    pos = 2 if node.target is F.normalize else 1
    d = norm_dim(_dim_arg(node, pos, 1 if node.target is not F.normalize else 1), lay.ndim)
    if lay.dims[d] is not None:
        p.ids.freeze(lay.dims[d], f"`{op_name(node)}` normalises over the channel dim ({node.name})")
    return lay


@register_op(torch.sum, torch.mean, torch.amax, torch.amin, torch.std, torch.var, torch.logsumexp,
             "sum", "mean", "amax", "amin", "std", "var", "logsumexp")
def reduction(p, node: fx.Node) -> Any:
    lay = p.value(node.args[0])
    dim = _dim_arg(node, 1)
    keep = node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 and isinstance(node.args[2], bool) else False)
    dims = list(range(lay.ndim)) if dim is None else [norm_dim(d, lay.ndim) for d in (dim if isinstance(dim, (tuple, list)) else [dim])]
    out = []
    for d, ids in enumerate(lay.dims):
        if d in dims:
            p.ids.freeze(ids, f"`{op_name(node)}` reduces over the channel dim ({node.name})")
            if keep:
                out.append(None)
        else:
            out.append(ids)
    return Layout(out) if out or p.shape(node) == () else p.untracked_like(node)


def same_rank(p, node: fx.Node) -> Any:
    """Pooling, interpolation, padding, expand: dims that keep their size keep their ids. A pooling that also
    returns its indices (``return_indices=True``, ``max_pool2d_with_indices``) gives both the same ids."""
    src = node.args[0]
    lay, shape, out_shape = p.value(src), p.shape(src), p.shape(node)
    metas = node.meta.get("tensor_meta")
    if out_shape is None and isinstance(metas, tuple) and metas and all(hasattr(m, "shape") for m in metas) \
            and len({tuple(m.shape) for m in metas}) == 1:
        out = _same_rank_dims(p, node, lay, shape, tuple(metas[0].shape))
        return tuple(out for _ in metas)
    if out_shape is None:
        p.freeze_value(lay, f"`{op_name(node)}` returns a value that is not one tensor ({node.name})")
        return p.untracked_like(node)
    return _same_rank_dims(p, node, lay, shape, out_shape)


def _same_rank_dims(p, node: fx.Node, lay: Layout, shape, out_shape) -> Layout:
    pad = len(out_shape) - lay.ndim
    dims: List[Optional[np.ndarray]] = [None] * pad
    for d, ids in enumerate(lay.dims):
        if ids is not None and shape[d] != out_shape[d + pad]:
            p.ids.freeze(ids, f"`{op_name(node)}` changes the size of a channel dim ({node.name})")
            ids = None
        dims.append(ids)
    return Layout(dims)


register_op(
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool1d, F.adaptive_max_pool2d,
    F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.max_pool1d, F.max_pool2d, F.max_pool3d, F.interpolate, F.pad,
    torch.nn.functional.upsample, F.upsample_nearest, F.upsample_bilinear, F.lp_pool1d, F.lp_pool2d, F.lp_pool3d,
    F.fractional_max_pool2d, F.fractional_max_pool3d, F.max_pool1d_with_indices, F.max_pool2d_with_indices,
    F.max_pool3d_with_indices, F.adaptive_max_pool1d_with_indices, F.adaptive_max_pool2d_with_indices,
    F.adaptive_max_pool3d_with_indices, torch.tile, "expand", "expand_as", "repeat", "tile",
)(same_rank)


# ---- reshapes and permutations ------------------------------------------------------------
register_op(torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, "flatten", "view", "reshape", "squeeze",
            "unsqueeze", "unflatten", "view_as", "reshape_as")(reshape_rule)


@register_op(torch.permute, torch.transpose, torch.movedim, torch.swapaxes, torch.t, "permute", "transpose", "t",
             "movedim", "swapaxes", "mT")
def permute(p, node: fx.Node) -> Any:
    lay = p.value(node.args[0])
    n = lay.ndim
    name = op_name(node)
    rest = list(node.args[1:])
    if name == "permute":
        perm = rest[0] if len(rest) == 1 and isinstance(rest[0], (tuple, list)) else rest
        perm = [norm_dim(d, n) for d in node.kwargs.get("dims", perm)]
    elif name in ("transpose", "swapaxes", "t", "mT"):
        a, b = (rest + [n - 2, n - 1])[:2] if name != "t" else (0, 1)
        perm = list(range(n))
        a, b = norm_dim(a, n), norm_dim(b, n)
        perm[a], perm[b] = perm[b], perm[a]
    else:  # movedim(src, dst) with ints
        src, dst = norm_dim(rest[0], n), norm_dim(rest[1], n)
        perm = list(range(n))
        perm.insert(dst, perm.pop(src))
    return Layout([lay.dims[d] for d in perm])


@register_op(operator.getitem)
def getitem(p, node: fx.Node) -> Any:
    from .indexing import index_rule

    return index_rule(p, node)
