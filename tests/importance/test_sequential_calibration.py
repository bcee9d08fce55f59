"""Block-by-block calibration (blocks=, max_memory=, block_inputs=) against whole-model calibration as the reference.

Where the math is the same the results must be the same: Wanda and activation statistics with dense block inputs,
SparseGPT with pruned block inputs (prunekit's whole-model SparseGPT also calibrates every layer on the model with
the earlier layers pruned). SparseGPT with dense inputs is checked against a one-shot reference built here from
whole-model Hessians of the dense model.
"""
from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import prunekit
from prunekit.errors import ConfigError, PruningError
from prunekit.importance import calibrate, create_criterion
from prunekit.importance.activation_cache import ActivationCache, MemoryBudget, parse_memory
from prunekit.importance.blockwise import find_blocks
from prunekit.importance.sequential import calibrate_blocks
from prunekit.importance.wanda import Wanda
from prunekit.unstructured import get_masks
from prunekit.unstructured.select import select_params
from prunekit.unstructured.sparsegpt import install, reconstruct_layer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "hf"))
hf_zoo = pytest.importorskip("hf_zoo")

ZOO = ["llama", "gpt2", "bert"]


def batches(n: int = 3, b: int = 2, s: int = 12):
    return [(torch.randint(0, 96, (b, s), generator=torch.Generator().manual_seed(10 + i)),) for i in range(n)]


def build(name):
    entry = hf_zoo.ENTRIES[name]
    return entry.build(), entry.inputs()


def assert_same_model(a: nn.Module, b: nn.Module, exact: bool = True):
    ma, mb = get_masks(a), get_masks(b)
    assert ma.keys() == mb.keys() and ma
    for k in ma:
        assert torch.equal(ma[k], mb[k]), k
    sa, sb = a.state_dict(), b.state_dict()
    for k in sa:
        if exact:
            assert torch.equal(sa[k], sb[k]), k
        else:
            torch.testing.assert_close(sa[k], sb[k], rtol=1e-5, atol=1e-6)


# --- equality with whole-model calibration --------------------------------------------------------------------


@pytest.mark.parametrize("name", ZOO)
def test_wanda_on_dense_block_inputs_equals_whole_model_wanda(name):
    model, x = build(name)
    calib = batches()
    whole = prunekit.prune(model, x, granularity="weight", criterion="wanda", ratio=0.5, calibration=calib)
    blocks = prunekit.prune(model, x, granularity="weight", criterion="wanda", ratio=0.5, calibration=calib,
                            blocks="auto", block_inputs="dense")
    assert_same_model(whole, blocks)


@pytest.mark.parametrize("name", ZOO)
def test_wanda_statistics_block_by_block_equal_the_calibration_loop(name):
    model, _ = build(name)
    calib = batches()
    ref, got = create_criterion("wanda"), create_criterion("wanda")
    assert calibrate(ref, model, calib) == calibrate_blocks(got, model, calib) == len(calib)
    assert ref._sq.keys() == got._sq.keys()
    for k in ref._sq:
        assert torch.equal(ref._sq[k], got._sq[k]), k


@pytest.mark.parametrize("name", ZOO)
def test_sparsegpt_on_pruned_block_inputs_equals_whole_model_sparsegpt(name):
    model, x = build(name)
    calib = batches()
    whole = prunekit.prune(model, x, granularity="weight", criterion="sparsegpt", ratio=0.5, calibration=calib)
    blocks = prunekit.prune(model, x, granularity="weight", criterion="sparsegpt", ratio=0.5, calibration=calib,
                            blocks="auto")  # block_inputs="pruned" is the default
    assert_same_model(whole, blocks, exact=False)


def one_shot_sparsegpt(model, calib, ratio):
    """SparseGPT with every layer's Hessian from the dense model (one whole-model calibration), layer by layer."""
    model = copy.deepcopy(model)
    targets = select_params(model)
    crit = create_criterion("sparsegpt")
    calibrate(crit, model, calib, layers=[(t.key, t.module, t.param) for t in targets])
    removal = lambda t, dead: int(round(ratio * int((~dead).sum())))  # noqa: E731  (relative_to="remaining")
    decided = [(t, reconstruct_layer(t, crit, removal)) for t in targets]
    for t, (w, keep) in decided:
        install(t, w, keep)
    return model


def test_sparsegpt_on_dense_block_inputs_equals_one_shot_whole_model_hessians():
    model, x = build("llama")
    calib = batches()
    ref = one_shot_sparsegpt(model, calib, 0.5)
    got = prunekit.prune(model, x, granularity="weight", criterion="sparsegpt", ratio=0.5, calibration=calib,
                         blocks="auto", block_inputs="dense")
    assert_same_model(ref, got, exact=False)


def test_pruned_and_dense_block_inputs_give_different_sparsegpt_results():
    model, x = build("llama")
    calib = batches()
    kw = dict(granularity="weight", criterion="sparsegpt", ratio=0.5, calibration=calib, blocks="auto")
    pruned = get_masks(prunekit.prune(model, x, block_inputs="pruned", **kw))
    dense = get_masks(prunekit.prune(model, x, block_inputs="dense", **kw))
    first = "model.layers.0.self_attn.q_proj.weight"  # the first layer sees the same inputs either way
    assert torch.equal(pruned[first], dense[first])
    assert any(not torch.equal(pruned[k], dense[k]) for k in pruned)


@pytest.mark.parametrize("name", ["llama", "bert"])
@pytest.mark.parametrize("criterion", ["activation", "apoz"])
def test_activation_statistics_block_by_block_equal_the_calibration_loop(name, criterion):
    from prunekit.structured.api import build_graph
    from prunekit.structured.handlers import handler_for

    model, x = build(name)
    graph = build_graph(model, x, (), "auto", module_rule=handler_for)
    calib = batches()
    ref, got = create_criterion(criterion), create_criterion(criterion)
    calibrate(ref, model, calib, graph=graph)
    calibrate_blocks(got, model, calib, graph=graph)
    assert ref._count == got._count and ref._count
    assert ref._sum.keys() == got._sum.keys()
    for a in ref._sum:
        assert got._sum[a] == pytest.approx(ref._sum[a], rel=1e-12, abs=1e-12)


def test_activations_computed_inside_a_module_refuse_block_by_block_naming_the_fix():
    from prunekit.structured.api import build_graph
    from prunekit.structured.handlers import handler_for

    model, x = build("gpt2")  # GPT-2's NewGELUActivation is several ops: its watched activation is not its output
    graph = build_graph(model, x, (), "auto", module_rule=handler_for)
    with pytest.raises(PruningError, match="blocks=None"):
        calibrate_blocks(create_criterion("activation"), model, batches(), graph=graph)


# --- spilling to disk --------------------------------------------------------------------------------------------


class SpyWanda(Wanda):
    """Wanda that records, whenever it observes inputs, what the spill folders hold."""

    def __init__(self, root: Path, fail_after: int = -1):
        super().__init__()
        self.root, self.fail_after, self.files, self.calls = root, fail_after, 0, 0

    def observe_input(self, name, inputs):
        self.calls += 1
        self.files = max(self.files, sum(len(fs) for _, _, fs in os.walk(self.root)))
        if self.calls == self.fail_after:
            raise RuntimeError("stop here")
        super().observe_input(name, inputs)


@pytest.mark.parametrize("name", ["llama", "bert"])
def test_a_tiny_max_memory_spills_to_disk_gives_equal_results_and_removes_its_files(name, tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    model, x = build(name)
    calib = batches()
    ref = create_criterion("wanda")
    calibrate_blocks(ref, model, calib)  # max_memory=None: everything in memory
    assert list(tmp_path.iterdir()) == []
    spy = SpyWanda(tmp_path)
    calibrate_blocks(spy, model, calib, max_memory=0)
    assert spy.files >= len(calib)  # the cached block inputs were on disk while blocks ran
    assert list(tmp_path.iterdir()) == []  # and are gone
    for k in ref._sq:
        assert torch.equal(ref._sq[k], spy._sq[k]), k
    whole = prunekit.prune(model, x, granularity="weight", criterion="sparsegpt", ratio=0.5, calibration=calib)
    spilled = prunekit.prune(model, x, granularity="weight", criterion="sparsegpt", ratio=0.5, calibration=calib,
                             blocks="auto", max_memory="1KB")
    assert_same_model(whole, spilled, exact=False)
    assert list(tmp_path.iterdir()) == []


def test_spill_files_are_removed_when_calibration_fails(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    model, _ = build("llama")
    spy = SpyWanda(tmp_path, fail_after=20)
    with pytest.raises(RuntimeError, match="stop here"):
        calibrate_blocks(spy, model, batches(), max_memory=0)
    assert spy.files > 0 and list(tmp_path.iterdir()) == []


def test_the_budget_keeps_what_fits_in_memory_and_spills_the_rest(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    a, b = torch.arange(4.0), (torch.ones(2, 2), {"mask": torch.zeros(3), "flag": True})
    with MemoryBudget(16) as budget:  # room for a (16 bytes), not for b too
        cache = ActivationCache(budget)
        cache.put(0, a)
        cache.put(1, b)
        assert (budget.used, budget.spilled, budget.spilled_bytes) == (16, 1, 28)
        assert torch.equal(cache.get(0), a)
        got = cache.get(1)
        assert torch.equal(got[0], b[0]) and torch.equal(got[1]["mask"], b[1]["mask"]) and got[1]["flag"] is True
        cache.drop(0)
        assert budget.used == 0 and len(cache) == 1
        folder = budget.directory
        assert len(os.listdir(folder)) == 1
        cache.clear()
        assert os.listdir(folder) == []
    assert not os.path.exists(folder)


@pytest.mark.parametrize("value,expected", [(None, None), (0, 0), (123, 123), ("0", 0), ("2GB", 2 * 10 ** 9),
                                            ("512 MiB", 512 * 2 ** 20), ("1.5kb", 1500), ("64b", 64)])
def test_max_memory_sizes(value, expected):
    assert parse_memory(value) == expected


@pytest.mark.parametrize("bad", [-1, "-1GB", "2XB", "lots", True, 1.5, [1], "GB"])
def test_a_bad_max_memory_is_a_config_error_naming_the_forms(bad):
    with pytest.raises(ConfigError, match="max_memory must be a number of bytes"):
        parse_memory(bad)
    model, x = build("llama")
    with pytest.raises(ConfigError, match="max_memory"):
        prunekit.prune(model, x, granularity="weight", criterion="wanda", calibration=batches(1), blocks="auto",
                       max_memory=bad)


# --- options and errors ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("options,match", [
    ({"max_memory": "1GB"}, "set blocks='auto'"),
    ({"block_inputs": "dense"}, "set blocks='auto'"),
    ({"blocks": "auto", "criterion": "l1"}, "reads no calibration data"),
    ({"blocks": "auto", "criterion": "taylor"}, "gradients"),
    ({"blocks": "auto", "scope": "global"}, "block_inputs='dense' for one global ranking"),
    ({"blocks": "auto", "block_inputs": "later"}, "block_inputs must be"),
    ({"blocks": 3}, "blocks must be 'auto'"),
])
def test_block_options_are_checked(options, match):
    model, x = build("llama")
    kw = {"granularity": "weight", "criterion": "wanda", "calibration": batches(1), **options}
    with pytest.raises(ConfigError, match=match):
        prunekit.prune(model, x, **kw)


def test_global_wanda_with_dense_block_inputs_equals_whole_model():
    model, x = build("llama")
    kw = dict(granularity="weight", criterion="wanda", ratio=0.5, calibration=batches(), scope="global")
    assert_same_model(prunekit.prune(model, x, **kw),
                      prunekit.prune(model, x, blocks="model.layers", block_inputs="dense", max_memory=0, **kw))


def test_blocks_are_found_in_the_zoo_and_can_be_named():
    expected = {"llama": "model.layers", "gpt2": "transformer.h", "bert": "bert.encoder.layer"}
    for name, path in expected.items():
        model, _ = build(name)
        found, module = find_blocks(model)
        assert found == path and module is model.get_submodule(path)
        assert find_blocks(model, path)[0] == path


def test_missing_or_ambiguous_blocks_say_what_to_pass():
    with pytest.raises(PruningError, match="pass blocks='<dotted name"):
        find_blocks(nn.Sequential(nn.Linear(2, 2), nn.ReLU()))
    t5, _ = build("t5")
    with pytest.raises(PruningError, match=r"'encoder.block' \(2 x T5Block\), 'decoder.block'.*pass blocks="):
        find_blocks(t5)
    llama, _ = build("llama")
    with pytest.raises(PruningError, match="names no module.*'model.layers'"):
        find_blocks(llama, "model.layer")
    with pytest.raises(PruningError, match="RMSNorm"):
        find_blocks(llama, "model.norm")


class Block(nn.Module):
    def __init__(self, width=8):
        super().__init__()
        self.up, self.act, self.down = nn.Linear(width, 2 * width), nn.ReLU(), nn.Linear(2 * width, width)

    def forward(self, x):
        return x + self.down(self.act(self.up(x)))


class Toy(nn.Module):
    """Linear stem, three residual blocks, a Linear head; ``between``: a Linear after block 0, outside the blocks;
    ``reverse``: the blocks run in reverse order."""

    def __init__(self, between=False, reverse=False):
        super().__init__()
        self.stem, self.layers, self.head = nn.Linear(4, 8), nn.ModuleList(Block() for _ in range(3)), nn.Linear(8, 3)
        self.mid = nn.Linear(8, 8) if between else None
        self.reverse = reverse

    def forward(self, x):
        h = self.stem(x)
        for i, block in enumerate(reversed(self.layers) if self.reverse else self.layers):
            h = block(h)
            if i == 0 and self.mid is not None:
                h = self.mid(h)
        return self.head(h)


def toy_batches(n=3):
    return [(torch.randn(5, 4, generator=torch.Generator().manual_seed(i)),) for i in range(n)]


@pytest.mark.parametrize("criterion", ["wanda", "sparsegpt"])
def test_a_plain_model_with_a_stem_and_a_head_equals_whole_model(criterion):
    model = Toy().eval()
    x = toy_batches(1)[0][0]
    feed = "dense" if criterion == "wanda" else "pruned"
    kw = dict(granularity="weight", criterion=criterion, ratio=0.5, calibration=toy_batches())
    assert_same_model(prunekit.prune(model, x, **kw),
                      prunekit.prune(model, x, blocks="auto", block_inputs=feed, **kw), exact=False)


def test_activation_modules_of_an_fx_traced_model_block_by_block():
    from prunekit.structured.api import build_graph
    from prunekit.structured.handlers import handler_for

    model = Toy().eval()
    graph = build_graph(model, toy_batches(1)[0][0], (), "auto", module_rule=handler_for)
    ref, got = create_criterion("apoz"), create_criterion("apoz")
    calibrate(ref, model, toy_batches(), graph=graph)
    calibrate_blocks(got, model, toy_batches(), graph=graph, max_memory=0)
    assert ref._count == got._count and ref._count
    assert all(got._sum[a] == pytest.approx(ref._sum[a], rel=1e-12) for a in ref._sum)


@pytest.mark.parametrize("kw,match", [({"between": True}, "'mid.weight' run.*between two blocks"),
                                      ({"reverse": True}, r"layers\[2\] ran after 0 block")])
def test_a_forward_that_does_not_chain_the_blocks_is_refused(kw, match):
    with pytest.raises(PruningError, match=match):
        calibrate_blocks(create_criterion("wanda"), Toy(**kw).eval(), toy_batches())


def test_training_flags_and_use_cache_are_restored():
    model, _ = build("llama")
    model.train()
    model.model.layers[1].eval()
    flags = {n: m.training for n, m in model.named_modules()}
    use_cache = model.config.use_cache
    calibrate_blocks(create_criterion("wanda"), model, batches(1))
    assert {n: m.training for n, m in model.named_modules()} == flags
    assert model.config.use_cache == use_cache and all(p.grad is None for p in model.parameters())


@pytest.mark.slow  # two spawned processes: about 20 s on an idle 2-core machine
def test_two_torchrun_ranks_with_their_own_shards_prune_as_one_process_over_both(tmp_path):
    import subprocess

    worker = Path(__file__).resolve().parent / "sequential_ranks_worker.py"
    out = str(tmp_path / "ranks")
    subprocess.run([sys.executable, str(worker), out], check=True, timeout=300,
                   env={**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"})
    sys.path.insert(0, str(worker.parent))
    from sequential_ranks_worker import CASES, calibration, prune

    ranks = [torch.load(f"{out}.{r}") for r in (0, 1)]
    for crit, feed in CASES:
        key, single = f"{crit}-{feed}", prune(crit, feed, calibration())
        for state in (ranks[0][key], ranks[1][key]):
            assert state.keys() == single.keys()
            for k in single:
                if k.endswith("_mask"):
                    assert torch.equal(state[k], single[k]), (key, k)
                else:
                    torch.testing.assert_close(state[k], single[k], rtol=1e-5, atol=1e-6)
