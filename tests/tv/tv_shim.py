"""Test-only shim: torchvision's pure-Python model definitions without ``import torchvision``.

``import torchvision`` loads its compiled ops (``torchvision::nms``...), which do not load against this torch
build. The model files themselves are plain Python, so this registers bare packages (``torchvision``,
``torchvision.ops``, ``torchvision.models``, ``torchvision.transforms``) whose ``__path__`` is the installed
folder, without running their ``__init__`` files, plus three small stand-in modules for what the model files
import from parts that need the compiled ops or Pillow (``torchvision.utils``, ``transforms._presets``,
the ``torchvision.ops`` names). Model modules (``torchvision.models.resnet``...) and the pure-Python
``ops/misc.py`` and ``ops/stochastic_depth.py`` then import normally. prunekit never imports this.
"""
from __future__ import annotations

import collections.abc
import enum
import importlib
import importlib.util
import os
import sys
import types
from itertools import repeat
from typing import Callable, Dict, Optional, Tuple

# model name -> (module under torchvision.models, builder, input side in pixels)
MODELS: Dict[str, Tuple[str, str, int]] = {
    "resnet18": ("resnet", "resnet18", 64),
    "mobilenet_v2": ("mobilenetv2", "mobilenet_v2", 64),
    "mobilenet_v3_small": ("mobilenetv3", "mobilenet_v3_small", 64),
    "efficientnet_b0": ("efficientnet", "efficientnet_b0", 64),
    "convnext_tiny": ("convnext", "convnext_tiny", 64),
    "regnet_y_400mf": ("regnet", "regnet_y_400mf", 64),
    "shufflenet_v2_x0_5": ("shufflenetv2", "shufflenet_v2_x0_5", 64),
    "squeezenet1_0": ("squeezenet", "squeezenet1_0", 64),
    "densenet121": ("densenet", "densenet121", 64),
}

_installed: Optional[str] = None


# torchvision is installed outside site-packages (``make`` runs ``pip install --no-deps --target``): a broken
# torchvision on sys.path makes ``transformers`` import it and fail (its image utilities import torchvision).
SOURCE_DIR = os.environ.get("PRUNEKIT_TORCHVISION_SRC") or os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), ".venv", "torchvision-src")


def torchvision_folder() -> Optional[str]:
    """The torchvision package folder (the out-of-path install first), or None when torchvision is not there."""
    if os.path.isfile(os.path.join(SOURCE_DIR, "torchvision", "models", "resnet.py")):
        return os.path.join(SOURCE_DIR, "torchvision")
    spec = importlib.util.find_spec("torchvision") if "torchvision" not in sys.modules else None
    if spec is not None and spec.submodule_search_locations:
        return list(spec.submodule_search_locations)[0]
    mod = sys.modules.get("torchvision")
    path = getattr(mod, "__path__", None)
    return list(path)[0] if path else None


def _package(name: str, folder: str) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__path__ = [folder]
    mod.__package__ = name
    sys.modules[name] = mod
    return mod


def _module(name: str, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    sys.modules[name] = mod
    return mod


def _log_api_usage_once(obj) -> None:  # torchvision.utils' telemetry hook: nothing to do here
    return None


def _make_ntuple(x, n: int):
    if isinstance(x, collections.abc.Iterable):
        return tuple(x)
    return tuple(repeat(x, n))


class InterpolationMode(enum.Enum):
    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


class ImageClassification:  # the weights' preprocessing preset: only referenced by the Weights enums
    def __init__(self, *args, **kwargs) -> None:
        self.args, self.kwargs = args, kwargs


def install() -> str:
    """Register the bare torchvision packages (once); returns the installed folder. Raises ImportError if absent."""
    global _installed
    if _installed is not None:
        return _installed
    existing = sys.modules.get("torchvision")
    if existing is not None and hasattr(existing, "models"):  # a working torchvision (another build): use it
        _installed = list(existing.__path__)[0]
        return _installed
    folder = torchvision_folder()
    if folder is None:
        raise ImportError("torchvision is not installed")
    tv = _package("torchvision", folder)
    ops = _package("torchvision.ops", f"{folder}/ops")
    models = _package("torchvision.models", f"{folder}/models")
    transforms = _package("torchvision.transforms", f"{folder}/transforms")
    tv.ops, tv.models, tv.transforms = ops, models, transforms
    tv.utils = _module("torchvision.utils", _log_api_usage_once=_log_api_usage_once, _make_ntuple=_make_ntuple)
    transforms._presets = _module("torchvision.transforms._presets", ImageClassification=ImageClassification,
                                  InterpolationMode=InterpolationMode)
    transforms.InterpolationMode = InterpolationMode
    misc = importlib.import_module("torchvision.ops.misc")
    depth = importlib.import_module("torchvision.ops.stochastic_depth")
    ops.misc, ops.stochastic_depth = misc, depth
    for name in ("Conv2dNormActivation", "Conv3dNormActivation", "SqueezeExcitation", "MLP", "Permute",
                 "FrozenBatchNorm2d"):
        if hasattr(misc, name):
            setattr(ops, name, getattr(misc, name))
    ops.StochasticDepth, ops.stochastic_depth_fn = depth.StochasticDepth, depth.stochastic_depth
    _installed = folder
    return folder


def builder(name: str) -> Callable:
    """The builder of torchvision model ``name`` (see :data:`MODELS`), called with ``weights=None``."""
    install()
    module, fn, _ = MODELS[name]
    build = getattr(importlib.import_module(f"torchvision.models.{module}"), fn)

    def make(**kwargs):
        return build(weights=None, **kwargs)

    make.__name__ = name
    return make


def builders() -> Dict[str, Callable]:
    """Every model of :data:`MODELS`: name -> builder (weights=None: nothing is downloaded)."""
    return {name: builder(name) for name in MODELS}


def example_input(name: str, batch: int = 1):
    import torch

    side = MODELS[name][2]
    return torch.randn(batch, 3, side, side)
