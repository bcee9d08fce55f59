"""Independent probes spread over the ranks of a torchrun job: each rank evaluates its share, every rank gets all.

Sweeps and searches evaluate many settings that do not depend on one another (a sensitivity sweep's
(layer, ratio) pairs, a Pareto sweep's ratios, the speculative probes of a bisection round). Under
torchrun they are dealt out round-robin: in round j rank r evaluates item ``j * N + r``, then the round's
results are gathered on every rank, in item order. Three rules keep the result that of one process:

* each probe runs :func:`prunekit.collective.alone`: the ranks now work on different models, so a probe's
  fine-tune must not wrap DDP and a criterion's calibration must not all-reduce with another rank's probe;
* each probe runs with the global torch RNG seeded from a per-probe seed (:func:`sweep_seed` + the probe's
  key), then restored, so a probe's outcome depends neither on the probes before it nor on which rank ran it;
* results travel as JSON (plain numbers, strings, lists, dicts) in uint8 tensors -- no pickle -- and go
  through the same JSON round trip in one process, so both see the same Python values.

In one process (or inside :func:`prunekit.collective.alone`) everything runs in place, in order.
"""
from __future__ import annotations

import json
import logging
from typing import Any, Callable, List, Optional, Sequence

import torch
import torch.distributed as dist
from torch import nn

from .. import collective, errors
from ..errors import PrunekitError, PruningError

log = logging.getLogger(__name__)

SEED_RANGE = 2 ** 31 - 1


def world() -> tuple:
    """``(rank, number of ranks)`` the sweeps shard over; ``(0, 1)`` in one process or inside ``alone()``."""
    if not collective.active():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def _encode(value: Any) -> str:
    def plain(obj):
        if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:  # numpy / torch scalars
            return obj.item()
        if hasattr(obj, "tolist"):
            return obj.tolist()
        raise TypeError(f"a sweep result must be JSON data (numbers, strings, lists, dicts), got {type(obj).__name__}")

    return json.dumps(value, default=plain)


def plain(value: Any) -> Any:
    """``value`` after the JSON round trip results take between ranks (tuples become lists, numpy floats floats)."""
    return json.loads(_encode(value))


def gather_json(value: Any) -> List[Any]:
    """Every rank's ``value`` (JSON data), in rank order, on every rank; ``[plain(value)]`` in one process."""
    _, size = world()
    data = _encode(value).encode("utf-8")
    if size == 1:
        return [json.loads(data)]
    dev = collective.device()
    length = torch.tensor([len(data)], dtype=torch.int64, device=dev)
    lengths = [torch.zeros_like(length) for _ in range(size)]
    dist.all_gather(lengths, length)
    longest = max(int(n.item()) for n in lengths)
    buf = torch.zeros(longest, dtype=torch.uint8, device=dev)
    if data:
        buf[:len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(dev)
    bufs = [torch.zeros_like(buf) for _ in range(size)]
    dist.all_gather(bufs, buf)
    return [json.loads(bytes(b[:int(n.item())].cpu().tolist()).decode("utf-8")) for b, n in zip(bufs, lengths)]


def broadcast_json(value: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``value`` (JSON data) on every rank."""
    return gather_json(value)[src]


def sweep_seed() -> int:
    """One draw from the global torch RNG, rank 0's on every rank: the base of a sweep's per-probe seeds."""
    draw = int(torch.randint(SEED_RANGE, (1,)).item())
    return int(broadcast_json(draw))


def probe_seed(base: int, key: float) -> int:
    """The seed of the probe at ``key`` (an index or a ratio): the same wherever and whenever it runs."""
    return (int(base) + int(round(float(key) * 1_000_003))) % SEED_RANGE


def run_alone(fn: Callable[[], Any], seed: Optional[int]) -> Any:
    """``fn()`` with this process acting alone and, given a seed, the global torch RNG seeded (then restored)."""
    with collective.alone():
        if seed is None:
            return fn()
        devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
        with torch.random.fork_rng(devices=devices):
            torch.default_generator.manual_seed(int(seed))
            if devices:
                torch.cuda.manual_seed_all(int(seed))
            return fn()


def map_sharded(fn: Callable[[Any], Any], items: Sequence[Any], *, seeds: Optional[Sequence[int]] = None,
                on_result: Optional[Callable[[int, Any], Optional[bool]]] = None, chunk: int = 1) -> List[Any]:
    """``[fn(item) ...]`` (JSON data) for ``items`` in order, on every rank, the items dealt out over the ranks.

    A round covers ``chunk`` items per rank (rank r takes every N-th item of the round, from its r-th); the
    results are gathered after each round. ``on_result(i, value)`` is called on every rank for each result in
    item order; a true return value stops the map after item ``i`` (later items of the round are dropped, later
    rounds never start) and the results up to ``i`` are returned. An exception (KeyboardInterrupt included) in
    ``fn`` surfaces on every rank after the results before it were handed to ``on_result``: the rank where it
    happened re-raises it, the others raise the same prunekit error type (a plain :class:`PrunekitError` for
    other exceptions) naming it. Every rank must call this with the same number of items.
    """
    items = list(items)
    if seeds is not None and len(seeds) != len(items):
        raise ValueError("map_sharded: one seed per item")
    rank, size = world()
    results: List[Any] = []
    if size == 1:
        for i, item in enumerate(items):
            results.append(plain(run_alone(lambda: fn(item), None if seeds is None else seeds[i])))
            if on_result is not None and on_result(i, results[-1]):
                break
        return results
    counts = gather_json(len(items))
    if len(set(counts)) != 1:
        raise PrunekitError(f"the ranks of the torchrun job disagree on the number of probes to run ({counts}); "
                            "every rank must run the same sweep on the same model and settings")
    step = size * max(1, int(chunk))
    for start in range(0, len(items), step):
        mine, error = [], None
        for i in range(start + rank, min(start + step, len(items)), size):
            try:
                mine.append([i, {"value": plain(run_alone(lambda: fn(items[i]), None if seeds is None else seeds[i]))}])
            except BaseException as exc:  # handed to every rank below, so none waits for this one forever
                error = exc
                mine.append([i, {"error": type(exc).__name__, "message": str(exc)}])
                break
        got = sorted((i, r, out) for r, part in enumerate(gather_json(mine)) for i, out in part)
        for i, r, out in got:
            if "error" in out:
                _raise(error if r == rank else None, out, r, i)
            results.append(out["value"])
            if on_result is not None and on_result(i, out["value"]):
                return results
    return results


def rounds_of(n: int, rounds: int = 8) -> int:
    """The ``chunk`` that spreads ``n`` items over about ``rounds`` gathers (progress shows after each)."""
    return max(1, -(-n // (world()[1] * rounds)))


def _raise(own: Optional[BaseException], got: dict, where: int, index: int):
    if own is not None:
        raise own
    if got["error"] == "KeyboardInterrupt":
        raise KeyboardInterrupt
    cls = getattr(errors, got["error"], None)
    cls = cls if isinstance(cls, type) and issubclass(cls, PrunekitError) else PrunekitError
    raise cls(f"rank {where} of the torchrun job failed on probe {index} ({got['error']}: {got['message']}); its "
              "traceback is in that rank's output")


def share_model(local: Optional[nn.Module], rebuild: Callable[[], nn.Module]) -> nn.Module:
    """The model that one rank computed (``local`` there, None on the others), on every rank.

    The other ranks call ``rebuild()`` (the same probe, same seed: the same pruned structure) and then copy
    the holder's tensors into it, so every rank ends with the holder's exact weights and masks. In one process
    ``local`` itself is returned.
    """
    _, size = world()
    if size == 1:
        if local is None:
            raise PrunekitError("share_model: no model to share")
        return local
    holders = [r for r, has in enumerate(gather_json(local is not None)) if has]
    if not holders:
        raise PrunekitError("share_model: no rank holds the model to share")
    src = holders[0]
    model = local if dist.get_rank() == src else run_alone(rebuild, None)
    state = model.state_dict(keep_vars=True)
    layouts = gather_json([[k, list(v.shape), str(v.dtype)] for k, v in state.items()])
    for r, layout in enumerate(layouts):
        if layout != layouts[src]:
            raise PruningError(f"rank {r} rebuilt the chosen probe with a different structure than rank {src}, which "
                               "computed it (pruning is not deterministic here); run the search in one process")
    with torch.no_grad():
        for tensor in state.values():
            buf = tensor.detach().to(collective.device()).clone(memory_format=torch.contiguous_format)
            if buf.dtype == torch.bool:  # gloo broadcasts no bool tensors
                buf = buf.to(torch.uint8)
            dist.broadcast(buf, src=src)
            tensor.detach().copy_(buf)
    from ..unstructured.masks import refresh_masked

    refresh_masked(model)  # weight = weight_orig * weight_mask again, from the copied tensors
    return model
