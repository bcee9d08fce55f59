"""SparseGPT (Frantar & Alistarh 2023, "SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot").

One layer at a time, in the order the model calls them: the calibration batches run through the model whose
earlier layers are already pruned (so a layer's Hessian sees the pruned inputs it will get), the layer's
H = 2 X X^T / tokens is accumulated by :class:`prunekit.importance.sparsegpt.SparseGPT`, and :func:`reconstruct`
(Algorithm 1) prunes it: columns are processed in blocks of ``blocksize``; at the start of each block the
weights with the lowest ``w^2 / [H^-1]_jj^2`` are chosen (for N:M, the lowest M-N of every M columns per row, chosen
at the group's first column), and each pruned column's error is spread over the later columns by the OBS update
``W[:, j:] -= (w_j - q_j) / [H^-1]_jj * H^-1[j, j:]`` (H^-1 as its upper Cholesky factor). Peak memory: one
layer's Hessian and one forward of the calibration batches; time: one whole-model forward per pruned layer.
``blocks=`` (:mod:`prunekit.unstructured.sequential`) computes the same result from one pass over one block per
group of layers, from cached block inputs.

The result is the usual ``weight_orig`` / ``weight_mask`` pair with ``weight_orig`` holding the updated weights,
so ``finalize`` and the masked twin (updated weights x mask) agree. Layers: nn.Linear, Hugging Face's Conv1D
(reconstructed on its transposed weight, see :mod:`.layout`), nn.Conv1d / nn.Conv2d with
groups=1 (through the unfolded input) and self-attention nn.MultiheadAttention's in_proj; anything else is a
:class:`PruningError` naming the layer (see :mod:`prunekit.importance.inputs`).
"""
from __future__ import annotations

import itertools
from typing import Callable, List, Optional, Tuple

import torch
from torch import nn

from ..errors import PruningError
from ..importance.base import INPUTS, Criterion
from ..importance.calibrate import calibrate
from ..importance.inputs import check_layer, weight_matrix
from .layout import as_rows
from .masks import attach_refresh_hooks, current_mask, effective, set_mask, trainable
from .nm import column_order


def reconstruct(weight: torch.Tensor, hessian: torch.Tensor, *, remove: int = 0, nm: Optional[Tuple[int, int]] = None,
                dead: Optional[torch.Tensor] = None, blocksize: int = 128,
                damp: float = 0.01) -> Tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT on one ``(rows, columns)`` weight with its ``columns x columns`` Hessian: ``(new weight, keep mask)``.

    ``remove``: how many weights to prune besides the ``dead`` ones (True = already pruned, stays zero), spread
    over the column blocks in proportion to their live weights (so the layer loses exactly ``remove``); ``nm``:
    ``(N, M)`` instead of ``remove``, columns grouped as given. The pruned weights of the result are exactly 0.
    """
    w = weight.detach().float().clone(memory_format=torch.contiguous_format)  # a transposed view: rows laid out
    rows, cols = w.shape
    dead = torch.zeros_like(w, dtype=torch.bool) if dead is None else \
        dead.to(torch.bool).clone(memory_format=torch.contiguous_format)
    w[dead] = 0.0
    h = hessian.detach().clone().to(w.device, torch.float64)
    zero = torch.diag(h) == 0  # an input feature that never fired: regularise, its weights move only if pruned
    h[zero, zero] = 1.0
    h.diagonal().add_(damp * torch.mean(torch.diag(h)))
    hinv = _inverse_cholesky(h).float()
    if nm is not None:
        blocksize = max(nm[1], blocksize - blocksize % nm[1])
    alive_cols = (~dead).sum(0)
    total_alive = int(alive_cols.sum())
    prune = dead.clone()
    done_alive = 0
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        w1, hinv1 = w[:, i1:i2].clone(), hinv[i1:i2, i1:i2]
        d = torch.diag(hinv1)
        err1 = torch.zeros_like(w1)
        mask1 = prune[:, i1:i2].clone()
        if nm is None:
            alive = int(alive_cols[i1:i2].sum())
            new = _share(remove, done_alive + alive, total_alive) - _share(remove, done_alive, total_alive)
            done_alive += alive
            mask1 |= _lowest(w1 ** 2 / d.unsqueeze(0) ** 2, mask1, new)
        for i in range(i2 - i1):
            if nm is not None and i % nm[1] == 0:
                sal = w1[:, i:i + nm[1]] ** 2 / d[i:i + nm[1]].unsqueeze(0) ** 2
                sal[mask1[:, i:i + nm[1]]] = float("-inf")
                order = torch.sort(sal, dim=1, descending=True, stable=True).indices
                group = torch.ones_like(sal, dtype=torch.bool)
                group.scatter_(1, order[:, :nm[0]], False)
                mask1[:, i:i + nm[1]] |= group
            col = w1[:, i]
            q = torch.where(mask1[:, i], torch.zeros_like(col), col)
            e = (col - q) / d[i]
            w1[:, i:] -= e.unsqueeze(1) * hinv1[i, i:].unsqueeze(0)
            w1[:, i] = q
            err1[:, i] = e
        w[:, i1:i2] = w1
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
        prune[:, i1:i2] = mask1
    w[prune] = 0.0
    return w.to(weight.dtype), (~prune).to(weight.dtype)


def _inverse_cholesky(h: torch.Tensor) -> torch.Tensor:
    """Upper Cholesky factor of H^-1 (the form Algorithm 1 reads rows of); more damping if H is not positive."""
    for extra in (0.0, 1e-6, 1e-4, 1e-2):
        try:
            hh = h + extra * torch.mean(torch.diag(h)) * torch.eye(len(h), dtype=h.dtype, device=h.device)
            inv = torch.cholesky_inverse(torch.linalg.cholesky(hh))
            return torch.linalg.cholesky(inv, upper=True)
        except RuntimeError:
            continue
    raise PruningError("sparsegpt: the layer's Hessian is not positive definite even after damping; raise "
                       "SparseGPT(damp=...) or use more calibration batches")


def _share(total: int, part: int, whole: int) -> int:
    return int(round(total * part / whole)) if whole else 0


def _lowest(sal: torch.Tensor, already: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of the ``k`` lowest ``sal`` entries not ``already`` pruned (ties: first index first)."""
    out = torch.zeros_like(already)
    if k <= 0:
        return out
    flat = sal.reshape(-1).masked_fill(already.reshape(-1), float("inf"))
    out.view(-1)[torch.sort(flat, stable=True).indices[:k]] = True
    return out


class _Order(Criterion):
    """Records the order in which the selected layers first receive inputs (one calibration batch)."""

    needs = frozenset({INPUTS})

    def __init__(self):
        self.order: List[str] = []

    def observe_input(self, name, inputs):
        if name not in self.order:
            self.order.append(name)


def prune_sequential(model: nn.Module, targets, crit, calibration, max_batches: int,
                     removal: Callable[[object, torch.Tensor], int], nm: Optional[Tuple[int, int]] = None) -> None:
    """Prune ``targets`` (unstructured :class:`Target` entries) of ``model`` in place, one layer at a time.

    ``removal(target, dead)``: how many weights of the layer to prune besides the ``dead`` ones (ignored with ``nm``).
    """
    for t in targets:
        check_layer(t.key, t.module, t.param)
    batches = list(itertools.islice(calibration, max(0, int(max_batches))))
    layers = {t.key: (t.key, t.module, t.param) for t in targets}
    order = _Order()
    calibrate(order, model, batches[:1], layers=list(layers.values()))
    by_key = {t.key: t for t in targets}
    for key in order.order:
        t = by_key[key]
        calibrate(crit, model, batches, layers=[layers[key]])
        install(t, *reconstruct_layer(t, crit, removal, nm))
        attach_refresh_hooks(model)  # later layers' inputs come from this pruned layer, also inside fused parents
    crit.reset()


def reconstruct_layer(t, crit, removal: Callable[[object, torch.Tensor], int],
                      nm: Optional[Tuple[int, int]] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT on target ``t`` from the Hessian ``crit`` holds for it: ``(new weight, keep mask)``, weight-shaped.

    The reconstruction runs on the weight as ``(out, in)`` (a Hugging Face ``Conv1D``'s transposed, see
    :mod:`.layout`), the layout the Hessian's columns follow; the result is written back in the stored layout."""
    w = as_rows(t.module, t.param, effective(t.module, t.param).detach()).contiguous()
    mat = weight_matrix(t.module, w)
    dead = weight_matrix(t.module, as_rows(t.module, t.param, current_mask(t.module, t.param)).contiguous()) == 0
    perm = column_order(w.shape, nm[1]) if nm is not None and w.dim() > 2 else None
    h = crit.hessian(t.key)
    if perm is not None:
        mat, dead, h = mat[:, perm], dead[:, perm], h[perm][:, perm]
    new_w, keep = reconstruct(mat, h, remove=removal(t, dead), nm=nm, dead=dead, blocksize=crit.blocksize,
                              damp=crit.damp)
    if perm is not None:
        new_w, keep = _unpermute(new_w, perm), _unpermute(keep, perm)
    return (as_rows(t.module, t.param, new_w.reshape(w.shape)).contiguous(),
            as_rows(t.module, t.param, keep.reshape(w.shape)).contiguous())


def install(t, weight: torch.Tensor, keep: torch.Tensor) -> None:
    """``weight`` into target ``t``'s trainable tensor and ``keep`` as its mask."""
    with torch.no_grad():
        trainable(t.module, t.param).copy_(weight)
    set_mask(t.module, t.param, keep)


def _unpermute(x: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    out = torch.empty_like(x)
    out[:, perm] = x
    return out
