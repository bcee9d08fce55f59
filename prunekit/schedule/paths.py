"""Sparsity paths: how the cumulative pruned fraction grows round by round (linear, geometric, cubic) and the AGP formula."""
from __future__ import annotations

from typing import Callable, List

from ..errors import ConfigError, PruningError
from ..registry import Registry

# A path maps (round k in 1..n, n rounds, initial s_i, final s_f) -> cumulative sparsity after round k.
SPARSITY_PATHS: Registry[Callable[[int, int, float, float], float]] = Registry("sparsity path")


@SPARSITY_PATHS.register("linear")
def linear_path(k: int, n: int, initial: float, final: float) -> float:
    """Equal increments: s_k = s_i + (s_f - s_i) k / n."""
    return initial + (final - initial) * k / n


@SPARSITY_PATHS.register("geometric")
def geometric_path(k: int, n: int, initial: float, final: float) -> float:
    """Prune the same fraction of what remains each round: (1 - s_k) = (1 - s_i) * ((1 - s_f) / (1 - s_i))^(k/n)."""
    if final >= 1.0:
        raise PruningError("a geometric sparsity path cannot reach 100% sparsity; use a final sparsity below 1.0")
    keep_i, keep_f = 1.0 - initial, 1.0 - final
    return 1.0 - keep_i * (keep_f / keep_i) ** (k / n)


@SPARSITY_PATHS.register("cubic")
def cubic_path(k: int, n: int, initial: float, final: float) -> float:
    """Zhu & Gupta's cubic path at round granularity: big steps first, small steps near the target."""
    return final + (initial - final) * (1.0 - k / n) ** 3


def sparsity_path(final: float, rounds: int, path: str = "cubic", initial: float = 0.0) -> List[float]:
    """Cumulative sparsity after each of ``rounds`` rounds, ending exactly at ``final``.

    >>> sparsity_path(0.75, 3, "linear")
    [0.25, 0.5, 0.75]
    """
    check_fraction("final sparsity", final)
    check_fraction("initial sparsity", initial)
    if final < initial:
        raise ConfigError(f"final sparsity {final} is below the initial sparsity {initial}; pruning only removes weights")
    if not isinstance(rounds, int) or rounds < 1:
        raise ConfigError(f"rounds must be a positive integer, got {rounds!r}")
    fn = SPARSITY_PATHS.get(path)
    values = [float(fn(k, rounds, initial, final)) for k in range(1, rounds + 1)]
    values[-1] = float(final)  # exact target despite float rounding
    return values


def step_ratios(cumulative: List[float], initial: float = 0.0) -> List[float]:
    """Per-round ratio of the *current* model to remove so the cumulative reduction follows ``cumulative``.

    Channel pruning removes channels from an already smaller model each round, so round k
    prunes r_k = 1 - (1 - s_k) / (1 - s_{k-1}) of what is left.
    """
    ratios, prev = [], initial
    for s in cumulative:
        if prev >= 1.0:
            raise PruningError("nothing is left to prune: cumulative sparsity reached 1.0 before the last round")
        ratios.append(max(0.0, 1.0 - (1.0 - s) / (1.0 - prev)))
        prev = s
    return ratios


def agp_sparsity(t: float, *, initial: float = 0.0, final: float, start: int = 0, n_steps: int, interval: int = 1) -> float:
    """Automated gradual pruning (Zhu & Gupta 2017): s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3.

    ``start`` is t0, ``n_steps`` is n (number of pruning steps), ``interval`` is dt (training
    steps between mask updates). Before t0 the sparsity is s_i; after t0 + n dt it is s_f.
    """
    check_fraction("final sparsity", final)
    check_fraction("initial sparsity", initial)
    if n_steps < 1 or interval < 1:
        raise ConfigError(f"AGP needs n_steps >= 1 and interval >= 1, got n_steps={n_steps}, interval={interval}")
    if t <= start:
        return float(initial)
    progress = min(1.0, (t - start) / (n_steps * interval))
    return float(final + (initial - final) * (1.0 - progress) ** 3)


def agp_update_steps(*, start: int = 0, n_steps: int, interval: int = 1) -> List[int]:
    """The training steps t0, t0 + dt, ..., t0 + n dt at which AGP updates the masks."""
    return [start + k * interval for k in range(n_steps + 1)]


def check_fraction(what: str, value: float) -> None:
    if not 0.0 <= float(value) <= 1.0:
        raise ConfigError(f"{what} must lie in [0, 1], got {value}")
