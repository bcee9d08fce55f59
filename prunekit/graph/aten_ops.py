"""Channel rules for the aten ops a torch.export graph contains, mapped onto the same rules as their torch twins."""
from __future__ import annotations

from typing import Any, List, Optional

import numpy as np
import torch
import torch.fx as fx

from .indexing import gather_rule
from .layout import Layout, norm_dim
from .join_ops import cat, split
from .ops import elementwise, layer_norm, normalize_along, permute, reduction, register_op, same_rank, unary
from .position_ops import flip, index_select, roll
from .product_ops import matmul, sdpa
from .reshape import reshape_rule

aten = torch.ops.aten


def _ops(*names: str) -> List[Any]:
    """Every overload of the named aten ops that exists in this torch build."""
    out = []
    for name in names:
        packet = getattr(aten, name, None)
        if packet is None:
            continue
        out.extend(getattr(packet, o) for o in packet.overloads())
    return out


register_op(*_ops(
    "add", "sub", "mul", "div", "relu", "relu_", "gelu", "silu", "sigmoid", "tanh", "hardtanh", "hardswish",
    "hardsigmoid", "leaky_relu", "elu", "mish", "softplus", "dropout", "contiguous", "clone", "alias", "detach",
    "_to_copy", "to", "neg", "abs", "exp", "sqrt", "rsqrt", "pow", "clamp", "where", "maximum", "minimum",
    "masked_fill", "erf", "relu6",
    # in-place twins (a torch.export graph keeps them: HF ResNet's `hidden_state += residual` is aten.add_)
    "add_", "sub_", "mul_", "div_", "gelu_", "silu_", "sigmoid_", "tanh_", "hardtanh_", "hardswish_",
    "hardsigmoid_", "leaky_relu_", "elu_", "mish_", "clamp_", "masked_fill_", "neg_", "abs_", "exp_", "sqrt_",
    "rsqrt_", "pow_", "erf_",
    # unary math, comparisons, logical ops, activations, blends
    "log", "log1p", "log2", "log10", "expm1", "exp2", "square", "reciprocal", "sign", "floor", "ceil", "round",
    "trunc", "frac", "sin", "cos", "tan", "atan", "sinh", "cosh", "asinh", "erfc", "logit", "clip", "clamp_min",
    "clamp_max", "nan_to_num", "eq", "ne", "gt", "lt", "ge", "le", "logical_not", "logical_and", "logical_or",
    "logical_xor", "bitwise_not", "bitwise_and", "bitwise_or", "bitwise_xor", "isnan", "isinf", "isfinite", "lerp",
    "addcmul", "addcdiv", "fmod", "remainder", "floor_divide", "selu", "celu", "rrelu", "log_sigmoid", "softshrink",
    "hardshrink", "threshold", "fill", "fill_", "zero_", "copy", "copy_", "detach_", "lift_fresh_copy",
    "relu6_", "selu_", "celu_", "threshold_", "square_", "reciprocal_", "clamp_min_", "clamp_max_", "logit_",
    # dropout of every kind: element-wise (or whole channels), the identity in eval
    "dropout_", "feature_dropout", "feature_dropout_", "alpha_dropout", "alpha_dropout_", "feature_alpha_dropout",
    "feature_alpha_dropout_",
))(elementwise)
register_op(*_ops("adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "max_pool1d", "max_pool2d",
                  "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d", "upsample_nearest2d", "upsample_bilinear2d",
                  "constant_pad_nd", "pad", "expand", "repeat", "expand_as", "tile", "reflection_pad1d",
                  "reflection_pad2d", "reflection_pad3d", "replication_pad1d", "replication_pad2d", "replication_pad3d",
                  "upsample_nearest1d", "upsample_nearest3d", "upsample_bicubic2d", "upsample_linear1d",
                  "upsample_trilinear3d", "_upsample_nearest_exact1d", "_upsample_nearest_exact2d",
                  "_upsample_nearest_exact3d", "_upsample_bilinear2d_aa", "_upsample_bicubic2d_aa",
                  "_adaptive_avg_pool2d", "_adaptive_avg_pool3d", "adaptive_max_pool1d", "adaptive_max_pool2d",
                  "adaptive_max_pool3d", "max_pool1d_with_indices", "max_pool2d_with_indices",
                  "max_pool3d_with_indices"))(same_rank)
register_op(*_ops("view", "reshape", "_unsafe_view", "flatten", "unflatten", "squeeze", "unsqueeze"))(reshape_rule)
register_op(*_ops("permute", "transpose", "t", "swapaxes"))(permute)
register_op(*_ops("cat", "concat"))(cat)
register_op(*_ops("split", "split_with_sizes", "chunk", "unbind"))(split)
register_op(*_ops("softmax", "_softmax", "log_softmax", "_log_softmax"))(normalize_along)
register_op(*_ops("layer_norm"))(layer_norm)  # F.layer_norm inside a module with its own forward (LayerNorm2d)
register_op(*_ops("mean", "sum", "amax", "amin"))(reduction)
register_op(*_ops("matmul", "bmm", "mm"))(matmul)
register_op(*_ops("scaled_dot_product_attention"))(sdpa)
register_op(*_ops("roll"))(roll)
register_op(*_ops("flip"))(flip)
register_op(*_ops("index_select"))(index_select)
register_op(*_ops("type_as"))(unary)  # the other tensor gives only its dtype


@register_op(*_ops("native_dropout"))
def native_dropout(p, node: fx.Node) -> Any:
    """aten.native_dropout(x, p, train) -> (output, keep mask): both hold x's elements where x holds them."""
    lay = p.value(node.args[0])
    return (lay, lay)


@register_op(*_ops("_assert_tensor_metadata", "_assert_scalar", "sym_constrain_range_for_size"))
def runtime_check(p, node: fx.Node) -> Any:
    """A check torch.export inserts (dtype / device / shape of a value): it reads the value and produces nothing,
    so it couples no channels (the widths it asserts are the example's; the pruned model runs its own code)."""
    return None


@register_op(*_ops("index"))
def index_tensor(p, node: fx.Node) -> Any:
    """aten.index(x, [None, ..., index, None...]): one integer index tensor gathers along one dim (see
    :func:`~prunekit.graph.indexing.gather_rule`); several index tensors freeze every channel dim."""
    lay = p.value(node.args[0])
    indices = list(node.args[1]) if len(node.args) > 1 else []
    used = [k for k, i in enumerate(indices) if i is not None]
    if len(used) == 1 and isinstance(indices[used[0]], fx.Node) and isinstance(lay, Layout):
        return gather_rule(p, node, lay, used[0], indices[used[0]])
    p.freeze_value([lay] + [p.value(i) for i in indices], f"indexed by several tensors ({node.name})")
    return p.untracked_like(node)


@register_op(*_ops("select", "slice", "narrow"), torch.select, torch.narrow, "select", "narrow")
def select_or_slice(p, node: fx.Node) -> Any:
    """aten.select(x, dim, i) drops a dim; aten.slice(x, dim, start, end) and narrow(x, dim, start, length) keep
    it. Either freezes a channel dim (a dim that keeps its size keeps its channels)."""
    lay = p.value(node.args[0])
    d = norm_dim(node.args[1] if len(node.args) > 1 else 0, lay.ndim)
    in_shape, out_shape = p.shape(node.args[0]), p.shape(node)
    dims: List[Optional[np.ndarray]] = list(lay.dims)
    if len(out_shape) < lay.ndim:
        p.ids.freeze(dims[d], f"indexed along a channel dim ({node.name})")
        del dims[d]
    elif out_shape[d] != in_shape[d]:
        p.ids.freeze(dims[d], f"sliced along a channel dim ({node.name})")
        dims[d] = None
    return Layout(dims)
