"""Sparsity paths and the AGP formula checked against hand-computed values."""
import pytest

from prunekit.errors import ConfigError
from prunekit.schedule.paths import agp_sparsity, agp_update_steps, sparsity_path, step_ratios


def test_agp_matches_zhu_gupta_formula():
    si, sf, t0, n, dt = 0.1, 0.8, 10, 5, 2
    for t in range(t0, t0 + n * dt + 1):
        expected = sf + (si - sf) * (1 - (t - t0) / (n * dt)) ** 3
        assert agp_sparsity(t, initial=si, final=sf, start=t0, n_steps=n, interval=dt) == pytest.approx(expected)
    # hand value: t = 12 -> 0.8 - 0.7 * 0.8^3
    assert agp_sparsity(12, initial=si, final=sf, start=t0, n_steps=n, interval=dt) == pytest.approx(0.8 - 0.7 * 0.512)


def test_agp_is_flat_outside_the_pruning_window_and_monotone():
    kw = dict(initial=0.0, final=0.9, start=100, n_steps=10, interval=50)
    assert agp_sparsity(0, **kw) == 0.0
    assert agp_sparsity(100, **kw) == 0.0
    assert agp_sparsity(600, **kw) == pytest.approx(0.9)
    assert agp_sparsity(10_000, **kw) == pytest.approx(0.9)
    values = [agp_sparsity(t, **kw) for t in agp_update_steps(start=100, n_steps=10, interval=50)]
    assert all(b >= a for a, b in zip(values, values[1:]))
    # cubic: the first step removes more than the last one
    assert values[1] - values[0] > values[-1] - values[-2]


def test_update_steps_every_dt():
    assert agp_update_steps(start=3, n_steps=4, interval=5) == [3, 8, 13, 18, 23]


def test_paths_hand_values():
    assert sparsity_path(0.75, 3, "linear") == pytest.approx([0.25, 0.5, 0.75])
    # geometric: each round keeps the same fraction of what is left: sqrt(0.25) = 0.5
    assert sparsity_path(0.75, 2, "geometric") == pytest.approx([0.5, 0.75])
    # cubic: s_k = s_f (1 - (1 - k/n)^3)
    assert sparsity_path(0.9, 3, "cubic") == pytest.approx([0.9 * (1 - (2 / 3) ** 3), 0.9 * (1 - (1 / 3) ** 3), 0.9])
    assert sparsity_path(0.9, 1, "cubic") == [0.9]


def test_step_ratios_compose_to_the_cumulative_path():
    cum = sparsity_path(0.9, 4, "cubic")
    ratios = step_ratios(cum)
    keep = 1.0
    for r, s in zip(ratios, cum):
        keep *= 1.0 - r
        assert 1.0 - keep == pytest.approx(s)
    # geometric path = constant per-round ratio
    assert step_ratios(sparsity_path(0.875, 3, "geometric")) == pytest.approx([0.5, 0.5, 0.5])


def test_bad_path_arguments_are_named():
    with pytest.raises(ConfigError, match="sparsity path"):
        sparsity_path(0.5, 2, "quartic")
    with pytest.raises(ConfigError, match="final sparsity"):
        sparsity_path(1.5, 2)
    with pytest.raises(ConfigError, match="rounds"):
        sparsity_path(0.5, 0)
