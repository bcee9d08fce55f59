"""Test zoo: tiny seeded architectures (``ZOO``) that the structured-pruning tests run over.

Each entry is a :class:`ZooEntry` with a ``build()`` that returns a fresh, deterministic
model (same weights every call, non-trivial BatchNorm statistics) and an
``example_inputs()`` that returns the same seeded inputs every call. Usage::

    from zoo import ZOO   # tests/ is on sys.path via tests/conftest.py (``tests.zoo`` needs the repo root on it)
    for name in ZOO.names():
        entry = ZOO.get(name)
        model, inputs = entry.build().eval(), entry.example_inputs()

``tracer`` says how the model's graph can be captured: ``"fx"`` (torch.fx.symbolic_trace)
or ``"export"`` (torch.export only). ``tags`` describe what the entry exercises
("residual", "concat", "attention", "grouped", "multi_output", "sequence", ...).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Tuple

import torch
from torch import nn

from prunekit.registry import Registry


@dataclass(frozen=True)
class ZooEntry:
    name: str
    build: Callable[[], nn.Module]  # a fresh model with the same seeded weights on every call
    example_inputs: Callable[[], Any]  # a Tensor or a tuple of Tensors, same values on every call
    tracer: str = "fx"  # "fx": torch.fx.symbolic_trace reproduces eager; "export": only torch.export does
    tags: Tuple[str, ...] = ()  # what the architecture exercises, for filtering tests


ZOO: Registry[ZooEntry] = Registry("zoo model")


def seeded_randn(*shape: int, seed: int = 0) -> torch.Tensor:
    """A float tensor that is the same on every call and leaves the global RNG alone."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen)


def seeded_tokens(batch: int, length: int, vocab: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, length), generator=gen)


def randomize_norms(model: nn.Module) -> nn.Module:
    """Give every norm layer non-trivial affine parameters and running statistics.

    Fresh BatchNorms are the identity in eval mode, which would hide a pruner that drops
    the wrong BN channels; random statistics make such mistakes change the output.
    """
    for mod in model.modules():
        if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d)):
            if getattr(mod, "weight", None) is not None:
                with torch.no_grad():
                    mod.weight.uniform_(0.5, 1.5)
                    mod.bias.uniform_(-0.5, 0.5)
        if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)) and mod.running_mean is not None:
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
    return model


def zoo_model(name: str, example_inputs: Callable[[], Any], *, tracer: str = "fx", tags: Tuple[str, ...] = (), seed: int = 0):
    """Register ``fn() -> nn.Module`` under ``name``; builds run under a private seeded RNG."""

    def deco(fn: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
        def build() -> nn.Module:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                return randomize_norms(fn())

        build.__name__ = fn.__name__
        build.__doc__ = fn.__doc__
        ZOO.add(name, ZooEntry(name=name, build=build, example_inputs=example_inputs, tracer=tracer, tags=tuple(tags)))
        return fn

    return deco


# the entries live in sibling modules; importing them fills ZOO
from . import convnets, branchy, sequence  # noqa: E402,F401

__all__ = ["ZOO", "ZooEntry", "zoo_model", "seeded_randn", "seeded_tokens", "randomize_norms"]
