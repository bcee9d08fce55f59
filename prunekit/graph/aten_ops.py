"""Channel rules for the aten ops a torch.export graph contains, mapped onto the same rules as their torch twins."""
from __future__ import annotations

from typing import Any, List, Optional

import numpy as np
import torch
import torch.fx as fx

from .layout import Layout, norm_dim
from .join_ops import cat, split
from .ops import elementwise, layer_norm, normalize_along, permute, reduction, register_op, same_rank
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
))(elementwise)
register_op(*_ops("adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "max_pool1d", "max_pool2d",
                  "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d", "upsample_nearest2d", "upsample_bilinear2d",
                  "constant_pad_nd", "pad", "expand", "repeat"))(same_rank)
register_op(*_ops("view", "reshape", "_unsafe_view", "flatten", "unflatten", "squeeze", "unsqueeze"))(reshape_rule)
register_op(*_ops("permute", "transpose", "t", "swapaxes"))(permute)
register_op(*_ops("cat", "concat"))(cat)
register_op(*_ops("split", "split_with_sizes", "chunk", "unbind"))(split)
register_op(*_ops("softmax", "_softmax", "log_softmax", "_log_softmax"))(normalize_along)
register_op(*_ops("layer_norm"))(layer_norm)  # F.layer_norm inside a module with its own forward (LayerNorm2d)
register_op(*_ops("mean", "sum", "amax", "amin"))(reduction)
register_op(*_ops("matmul", "bmm", "mm"))(matmul)
register_op(*_ops("scaled_dot_product_attention"))(sdpa)


@register_op(*_ops("_assert_tensor_metadata", "_assert_scalar", "sym_constrain_range_for_size"))
def runtime_check(p, node: fx.Node) -> Any:
    """A check torch.export inserts (dtype / device / shape of a value): it reads the value and produces nothing,
    so it couples no channels (the widths it asserts are the example's; the pruned model runs its own code)."""
    return None


@register_op(*_ops("select", "slice"))
def select_or_slice(p, node: fx.Node) -> Any:
    """aten.select(x, dim, i) drops a dim; aten.slice(x, dim, start, end) keeps it. Either freezes a channel dim."""
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
