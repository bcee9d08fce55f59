"""A model's repeated blocks, and its calibration forward run one block at a time from cached block inputs.

The blocks are the children of one ``nn.ModuleList`` (or ``nn.Sequential``) that the model's forward calls one
after the other, each on the previous one's output: a transformer's layers (Hugging Face's ``model.layers``,
``transformer.h``, ``bert.encoder.layer``). :func:`find_blocks` finds the list or takes its dotted name.

:class:`BlockRunner` splits the forward of every calibration batch into stages:

* the *prefix*: the model's forward up to the call of block 0, whose arguments are caught there (the forward stops);
* block ``k``: block ``k`` alone, called with block 0's arguments but the hidden states, which are block ``k-1``'s
  output; the outputs of every batch are cached for block ``k+1``;
* the *suffix*: the model's forward with every block replaced by a stub returning the last block's cached output,
  so the layers after the blocks (a head, a pooler) see what the blocks computed.

Only one stage's activations are alive at a time, plus the cached block inputs / outputs, which a
:class:`~prunekit.importance.activation_cache.MemoryBudget` bounds in memory (the rest on disk). What the split
assumes -- every block runs once per forward, in list order, with the same arguments but the hidden states -- is
checked on the first batch by :meth:`BlockRunner.layout`, which also says which stage each layer runs in.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Tuple, Union

import torch
from torch import nn

from .._inputs import run_model
from ..errors import PrunekitError, PruningError
from .activation_cache import ActivationCache, MemoryBudget

Stage = Union[str, int]  # "prefix", a block index, or "suffix"
PREFIX, SUFFIX = "prefix", "suffix"


def candidates(model: nn.Module) -> List[Tuple[str, nn.ModuleList]]:
    """Every outermost ``nn.ModuleList`` of two or more children of one class that have children of their own."""
    found: List[Tuple[str, nn.ModuleList]] = []
    for name, module in model.named_modules():
        if not name or not isinstance(module, nn.ModuleList) or len(module) < 2:
            continue
        if len({type(c) for c in module}) != 1 or next(module[0].children(), None) is None:
            continue
        if any(name.startswith(outer + ".") for outer, _ in found):
            continue  # a list inside a block (experts of a mixture): the outer list is the one
        found.append((name, module))
    return found


def _describe(found: List[Tuple[str, nn.Module]]) -> str:
    return ", ".join(f"{n!r} ({len(m)} x {type(m[0]).__name__})" for n, m in found)


def find_blocks(model: nn.Module, blocks: Any = "auto") -> Tuple[str, nn.Module]:
    """``(dotted name, list of blocks)``: the list ``blocks`` names, or with ``"auto"`` the one list of repeated
    layers (:func:`candidates`); :class:`PruningError` saying what to pass when there is none, or several."""
    cls = type(model).__name__
    if blocks != "auto":
        if not isinstance(blocks, str) or not blocks:
            raise PruningError(f"blocks must be 'auto' or the dotted name of the model's list of layers (e.g. "
                               f"'model.layers'), got {blocks!r}")
        try:
            module = model.get_submodule(blocks)
        except AttributeError:
            found = candidates(model)
            hint = f"; lists of repeated layers in it: {_describe(found)}" if found else ""
            raise PruningError(f"blocks={blocks!r} names no module of {cls}{hint}") from None
        if not isinstance(module, (nn.ModuleList, nn.Sequential)) or len(module) == 0:
            raise PruningError(f"blocks={blocks!r} is a {type(module).__name__}; name the nn.ModuleList (or "
                               "nn.Sequential) whose children the forward calls one after the other")
        return blocks, module
    found = candidates(model)
    if not found:
        raise PruningError(f"found no nn.ModuleList of repeated layers in {cls}: pass blocks='<dotted name of the "
                           "list of layers>' (e.g. 'model.layers', 'transformer.h', 'bert.encoder.layer'), or "
                           "blocks=None to calibrate the whole model at once")
    if len(found) > 1:
        raise PruningError(f"{cls} has several lists of repeated layers: {_describe(found)}; pass "
                           f"blocks={found[0][0]!r} (or another of them) to say which runs block by block")
    return found[0]


class Call(NamedTuple):
    """How the model called block 0 for one batch: its arguments, the hidden states (at ``slot``) left out."""

    slot: Union[int, str]
    args: tuple
    kwargs: dict

    def with_hidden(self, hidden: torch.Tensor) -> Tuple[tuple, dict]:
        if isinstance(self.slot, int):
            return self.args[:self.slot] + (hidden,) + self.args[self.slot:], self.kwargs
        return self.args, {**self.kwargs, self.slot: hidden}


def forward(model: nn.Module, inputs: Any) -> Any:
    """``run_model``, but an error of prunekit's own raised inside the forward (by a hook or stub) comes out as it is,
    not as the :class:`InputError` that ``run_model`` makes of a failing forward."""
    try:
        return run_model(model, inputs)
    except PrunekitError as exc:
        if isinstance(exc.__cause__, PrunekitError):
            raise exc.__cause__ from None
        raise


class _Caught(Exception):
    """Raised by the hook on block 0 to stop the forward once its arguments are caught."""


def _is_kv_cache(value: Any) -> bool:
    """A key/value cache object (Hugging Face's ``Cache``): blocks append to it, so replays must not get it."""
    return hasattr(value, "update") and hasattr(value, "get_seq_length") and not isinstance(value, torch.Tensor)


def split_call(args: tuple, kwargs: dict) -> Tuple[torch.Tensor, Call]:
    """The hidden states a block was called with (its first positional tensor, or ``hidden_states=``) and the rest."""
    args = tuple(None if _is_kv_cache(a) else a for a in args)
    kwargs = {k: None if _is_kv_cache(v) else v for k, v in kwargs.items()}
    if args and isinstance(args[0], torch.Tensor):
        return args[0], Call(0, args[1:], kwargs)
    if isinstance(kwargs.get("hidden_states"), torch.Tensor):
        rest = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        return kwargs["hidden_states"], Call("hidden_states", args, rest)
    raise PruningError("block 0 was called without a tensor as its first argument (or hidden_states=); block-by-block "
                       "calibration feeds each block's output to the next as that argument: name another list of "
                       "layers (blocks=...) or calibrate the whole model (blocks=None)")


def hidden_of(output: Any) -> torch.Tensor:
    """The hidden states in a block's output: the tensor itself, or the first element of a tuple / list."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise PruningError(f"a block returned {type(output).__name__}; block-by-block calibration needs a tensor or a "
                       "tuple whose first element is the hidden states")


def _same(a: Any, b: Any) -> bool:
    if a is b:
        return True
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                and a.dtype == b.dtype and bool(torch.equal(a, b)))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    try:
        return bool(a == b)
    except Exception:  # an object without a usable ==: the same object only
        return False


@contextlib.contextmanager
def _replaced(blocks: nn.Module, make_stub: Callable[[int], Callable]) -> Iterator[None]:
    """Every block's ``forward`` replaced by ``make_stub(k)`` for the duration (an instance attribute)."""
    saved = [b.__dict__.get("forward") for b in blocks]
    try:
        for k, b in enumerate(blocks):
            b.forward = make_stub(k)
        yield
    finally:
        for b, old in zip(blocks, saved):
            if old is None:
                b.__dict__.pop("forward", None)
            else:
                b.forward = old


@contextlib.contextmanager
def calibration_mode(model: nn.Module, *extra: Optional[nn.Module]) -> Iterator[None]:
    """Eval mode and no_grad for the block; Hugging Face's ``config.use_cache`` off (no key/value cache is built);
    every module's training flag and the config restored afterwards."""
    roots = [model] + [m for m in extra if isinstance(m, nn.Module)]
    flags = {id(m): (m, m.training) for r in roots for m in r.modules()}
    configs = {id(c): (c, c.use_cache) for r in roots for m in r.modules()
               for c in [getattr(m, "config", None)] if c is not None and isinstance(getattr(c, "use_cache", None), bool)}
    try:
        for r in roots:
            r.eval()
        for c, _ in configs.values():
            c.use_cache = False
        with torch.no_grad():
            yield
    finally:
        for m, flag in flags.values():
            m.training = flag
        for c, value in configs.values():
            c.use_cache = value


class BlockRunner:
    """The calibration forward of ``inputs`` (one model input per batch) split into prefix, blocks and suffix.

    :meth:`capture` caches block 0's inputs; :meth:`run_block` runs block ``k`` on the cached inputs (and caches
    its outputs when asked); :meth:`advance` makes those the inputs of block ``k+1``; :meth:`run_prefix` and
    :meth:`run_suffix` run the forward before the first / after the last block. Run inside :func:`calibration_mode`.
    """

    def __init__(self, model: nn.Module, name: str, blocks: nn.Module, inputs: List[Any], budget: MemoryBudget):
        self.model, self.name, self.blocks, self.inputs, self.budget = model, name, blocks, inputs, budget
        self.calls = ActivationCache(budget)  # batch -> Call (block 0's arguments but the hidden states)
        self.hidden = ActivationCache(budget)  # batch -> the current block's input
        self.block = 0  # the block whose inputs ``hidden`` holds
        self._last: Optional[ActivationCache] = None  # the last block's outputs, for the suffix

    def __len__(self) -> int:
        return len(self.blocks)

    def _catch(self, inputs: Any) -> Tuple[torch.Tensor, Call]:
        caught: list = []

        def hook(module, args, kwargs):
            caught.append(split_call(args, kwargs))
            raise _Caught

        handle = self.blocks[0].register_forward_pre_hook(hook, with_kwargs=True)
        try:
            forward(self.model, inputs)
        except _Caught:
            pass
        finally:
            handle.remove()
        if not caught:
            raise PruningError(f"the model's forward never called {self.name}[0]: name the list of layers the "
                               "forward runs (blocks=...) or calibrate the whole model (blocks=None)")
        return caught[0]

    def run_prefix(self, first: bool = False) -> None:
        """The forward of every batch (or the first only) up to block 0, nothing kept: for the layers before it."""
        for x in self.inputs[:1] if first else self.inputs:
            self._catch(x)

    def capture(self) -> None:
        """Cache block 0's inputs (hidden states and the other arguments) of every batch."""
        self.calls.clear()
        self.hidden.clear()
        for i, x in enumerate(self.inputs):
            hidden, call = self._catch(x)
            self.calls.put(i, call)
            self.hidden.put(i, hidden)
        self.block = 0

    def _call_block(self, k: int, i: int) -> Any:
        args, kwargs = self.calls.get(i).with_hidden(self.hidden.get(i))
        return self.blocks[k](*args, **kwargs)

    def run_block(self, k: int, keep: bool = False, first: bool = False) -> Optional[ActivationCache]:
        """Block ``k`` on the cached inputs of every batch (or the first only); its outputs cached when ``keep``."""
        if k != self.block:
            raise RuntimeError(f"block {k} run with the inputs of block {self.block}")  # a bug of the caller
        out = ActivationCache(self.budget) if keep else None
        for i in range(1 if first else len(self.inputs)):
            y = self._call_block(k, i)
            if out is not None:
                hidden_of(y)
                out.put(i, y)
        return out

    def advance(self, outputs: ActivationCache) -> None:
        """Block ``k``'s ``outputs`` become block ``k+1``'s inputs (after the last block: the suffix's)."""
        self.hidden.clear()
        if self.block == len(self.blocks) - 1:
            self._last = outputs
        else:
            for i in range(len(self.inputs)):
                self.hidden.put(i, hidden_of(outputs.get(i)))
            outputs.clear()
        self.block += 1

    def run_suffix(self, first: bool = False) -> None:
        """The forward of every batch (or the first only) with each block returning the last block's output: for
        the layers after the blocks."""
        if self._last is None:
            raise RuntimeError("run_suffix before the last block ran")  # a bug of the caller
        current = [0]
        with _replaced(self.blocks, lambda k: lambda *a, **kw: self._last.get(current[0])):
            for i, x in enumerate(self.inputs[:1] if first else self.inputs):
                current[0] = i
                forward(self.model, x)

    def close(self) -> None:
        for cache in (self.calls, self.hidden, self._last):
            if cache is not None:
                cache.clear()

    def layout(self, modules: Dict[str, nn.Module]) -> Dict[str, Stage]:
        """The stage each of ``modules`` (name -> module) runs in, checked on the first batch.

        A module inside block ``k`` is of block ``k``; one outside every block is of the prefix when it runs before
        block 0, of the suffix when after the last block. :class:`PruningError` when a module outside the blocks
        runs between two of them, when the blocks do not run once each in list order, or when a block gets other
        arguments than block 0 (but the hidden states). A module that never runs gets no stage.
        """
        owner: Dict[int, int] = {}
        for k, b in enumerate(self.blocks):
            for m in b.modules():
                owner.setdefault(id(m), k)
        stages: Dict[str, Stage] = {n: owner[id(m)] for n, m in modules.items() if id(m) in owner}
        outside = {n: m for n, m in modules.items() if id(m) not in owner}
        hidden, call = self._catch(self.inputs[0])
        args, kwargs = call.with_hidden(hidden)
        output = self.blocks[0](*args, **kwargs)
        hidden_of(output)
        ran: List[int] = []
        between: List[str] = []

        def stub(k):
            def fn(*args, **kwargs):
                if k != len(ran):
                    raise PruningError(f"{self.name}[{k}] ran after {len(ran)} block(s); block-by-block calibration "
                                       f"needs the blocks of {self.name!r} to run once each, in list order")
                _, got = split_call(args, kwargs)
                if got.slot != call.slot or not _same(got.args, call.args) or not _same(got.kwargs, call.kwargs):
                    raise PruningError(f"{self.name}[{k}] is called with other arguments than {self.name}[0] (besides "
                                       "the hidden states); block-by-block calibration replays block 0's arguments: "
                                       "calibrate the whole model (blocks=None)")
                ran.append(k)
                return output
            return fn

        def seen(name):
            def hook(module, args):
                if name not in stages:
                    if 0 < len(ran) < len(self.blocks):
                        between.append(name)
                    stages[name] = PREFIX if not ran else SUFFIX
            return hook

        handles = [m.register_forward_pre_hook(seen(n)) for n, m in outside.items()]
        try:
            with _replaced(self.blocks, stub):
                forward(self.model, self.inputs[0])
        finally:
            for h in handles:
                h.remove()
        if len(ran) != len(self.blocks):
            raise PruningError(f"the forward ran {len(ran)} of the {len(self.blocks)} blocks of {self.name!r}; "
                               "block-by-block calibration needs every block to run once: name the list of layers "
                               "the forward runs (blocks=...) or calibrate the whole model (blocks=None)")
        if between:
            raise PruningError(f"{', '.join(map(repr, between[:3]))} run(s) between two blocks of {self.name!r}, "
                               "outside every block; block-by-block calibration observes layers before, inside or "
                               "after the blocks only: exclude them or calibrate the whole model (blocks=None)")
        return stages
