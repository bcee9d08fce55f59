"""Weight sharing (Deep Compression, Han et al. 2016): every weight of a layer becomes one of 2**bits centroids.

Per layer, 1-D k-means (:func:`prunekit.compress.kmeans.kmeans_1d`, linear initialisation)
clusters the *kept* weights: the unmasked entries of a masked weight, the non-zero entries of a
plain one. Pruned weights stay exactly +0.0 and masks stay as they are. The layer then stores
a codebook of centroids and one ``bits``-bit index per kept weight.

``bits`` chooses the layers and their widths:

* ``None``: :data:`DEFAULT_BITS` (8 bits for convolutions, 5 for Linear layers, as in the paper);
* an int: that width for every Linear and convolution layer;
* a dict: ``"conv"`` / ``"linear"`` set a family's width, any other key is a module pattern
  (:mod:`prunekit.match`: a name, glob, prefix, class name or type; the first matching pattern
  wins, in the dict's order) and may also name other layers with a ``weight``. A value of
  ``None`` or 0 leaves the layer unshared. Layers not named keep their family's width.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from ..match import check_patterns, first_match, module_matches
from ..unstructured.masks import is_masked
from .kmeans import kmeans_1d

DEFAULT_BITS: Dict[str, int] = {"conv": 8, "linear": 5}
FAMILIES = ("conv", "linear")
MAX_BITS = 8  # indices are byte symbols for the entropy coders
FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
SHARED_ATTR = "_prunekit_shared"  # {"module.weight": bits} of the layers share_weights processed

Bits = Union[None, int, Mapping[Any, Optional[int]]]


@dataclass
class SharedLayer:
    """One weight-shared tensor: ``weight.flatten()[kept] == codebook[indices]``, zero elsewhere."""

    name: str  # the parameter, "module.weight"
    bits: int
    codebook: torch.Tensor  # centroids, sorted, in the weight's dtype (at most 2**bits of them)
    indices: torch.Tensor  # int64, one per kept weight, row-major order
    kept: torch.Tensor  # bool, the weight's shape

    @property
    def values(self) -> torch.Tensor:
        """The shared weight: centroids at the kept positions, +0.0 elsewhere."""
        out = torch.zeros(self.kept.shape, dtype=self.codebook.dtype)
        out.view(-1)[self.kept.reshape(-1)] = self.codebook[self.indices]
        return out


def family(module: nn.Module) -> Optional[str]:
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.modules.conv._ConvNd):
        return "conv"
    return None


def check_bits(value: Any, where: str) -> Optional[int]:
    if value is None or value == 0:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_BITS:
        raise ConfigError(f"{where}: weight-sharing bits must be an int in 1..{MAX_BITS} (or None/0: not shared), "
                          f"got {value!r}")
    return int(value)


def resolve_bits(model: nn.Module, bits: Bits = None) -> Dict[str, int]:
    """``{"module.weight": bits}`` for every weight ``bits`` shares (see the module doc), in model order."""
    if bits is None:
        families, patterns = dict(DEFAULT_BITS), {}
    elif isinstance(bits, Mapping):
        families = dict(DEFAULT_BITS)
        patterns = {}
        for key, value in bits.items():
            if isinstance(key, str) and key in FAMILIES:
                families[key] = check_bits(value, f"bits[{key!r}]")
            else:
                patterns[key] = check_bits(value, f"bits[{key!r}]")
        check_patterns(model, "bits", list(patterns), error=ConfigError)
    else:
        width = check_bits(bits, "bits")
        families, patterns = {f: width for f in FAMILIES}, {}
    out: Dict[str, int] = {}
    for name, module in model.named_modules():
        fam = family(module)
        pat, width = first_match(name, module, patterns, model) if patterns and name else (None, None)
        if pat is not None and fam is None and not module_matches(name, module, pat):
            pat = None  # a pattern naming a block selects its Linear / conv layers, not its norms
        if pat is None:
            if fam is None:
                continue
            width = families.get(fam)
        weight = _weight(module)
        if width is None or weight is None or weight.dtype not in FLOAT_DTYPES:
            continue
        out[f"{name}.weight" if name else "weight"] = width
    return out


def share_weights(model: nn.Module, bits: Bits = None, *, inplace: bool = False,
                  max_iter: int = 100) -> Tuple[nn.Module, Dict[str, SharedLayer]]:
    """``(model, layers)``: every chosen weight replaced by its centroid (a copy unless ``inplace=True``).

    ``layers`` maps ``"module.weight"`` to its :class:`SharedLayer` (codebook, indices, kept
    positions). Masks are held: a masked weight's ``weight_orig`` gets the centroids at kept
    positions and +0.0 where the mask is 0, and the mask is unchanged. Deterministic; sharing an
    already shared model with the same or more bits changes nothing. Non-finite kept weights
    raise :class:`ConfigError`.
    """
    target = model if inplace else _clone(model)
    widths = resolve_bits(target, bits)
    layers: Dict[str, SharedLayer] = {}
    modules = dict(target.named_modules())
    for key, width in widths.items():
        mod_name = key.rpartition(".")[0]
        module = modules[mod_name]
        param = getattr(module, "weight_orig") if is_masked(module) else module.weight
        kept = kept_positions(module)
        layer = cluster(key, param.detach(), kept, width, max_iter=max_iter)
        with torch.no_grad():
            param.copy_(layer.values.to(param.device))
            if is_masked(module):
                module.weight = module.weight_orig * module.weight_mask
        layers[key] = layer
    recorded = dict(getattr(target, SHARED_ATTR, None) or {})
    recorded.update(widths)
    setattr(target, SHARED_ATTR, recorded)
    return target, layers


def kept_positions(module: nn.Module) -> torch.Tensor:
    """Bool tensor of the weights that are kept: the mask's non-zeros if masked, else the weight's."""
    if is_masked(module):
        return (module.weight_mask.detach() != 0).cpu()
    return (module.weight.detach() != 0).cpu()


def cluster(name: str, weight: torch.Tensor, kept: torch.Tensor, bits: int, *, max_iter: int = 100) -> SharedLayer:
    """The :class:`SharedLayer` of ``weight`` with ``2**bits`` centroids over ``weight[kept]``."""
    w = weight.detach().cpu()
    flat = w.reshape(-1)[kept.reshape(-1)]
    values = flat.to(torch.float64).numpy()
    if values.size and not np.isfinite(values).all():
        raise ConfigError(f"weight sharing: {name} holds non-finite weights; share a healthy model")
    centroids, labels = kmeans_1d(values, 1 << bits, max_iter=max_iter)
    codebook = torch.from_numpy(centroids).to(w.dtype)
    codebook[codebook == 0] = 0.0  # no -0.0 centroid
    return SharedLayer(name=name, bits=bits, codebook=codebook, indices=torch.from_numpy(labels),
                       kept=kept.reshape(w.shape).clone())


def _weight(module: nn.Module) -> Optional[torch.Tensor]:
    if is_masked(module):
        return module.weight_orig
    w = getattr(module, "weight", None)
    return w if isinstance(w, torch.Tensor) and w.dim() > 0 else None


def _clone(model: nn.Module) -> nn.Module:
    from ..modelutils import clone_model

    return clone_model(model) if hasattr(model, "__dict__") else copy.deepcopy(model)
