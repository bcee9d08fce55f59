"""Sweeps and searches sharded over the ranks of a torchrun job equal the one-process run.

In one process: the speculative bisection (``width`` probes a round) walks exactly the probes of the plain one.
Over 2 gloo processes: the digits sensitivity sweep, Pareto sweep, budget search and per-layer search give every
rank the one-process results and models; ``prunekit analyze`` under torchrun writes its files once.
"""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from prunekit.errors import ConfigError, PruningError
from prunekit.search import bisect_ratio, shard

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict:
    out = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(REPO)}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        out.pop(key, None)
    return out


def torchrun(*args) -> list:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}", *args]


# --- the speculative bisection, in one process ---------------------------------------------------------------

def cliff(threshold):
    return lambda r: 0.9 if r <= threshold else 0.5


def bumpy(r):
    """Not monotonic: the bisection's path depends on every probe, so a wrong walk would show."""
    return 0.9 - 0.3 * r + (0.2 if 0.6 < r < 0.7 else 0.0) - (0.2 if 0.3 < r < 0.35 else 0.0)


@pytest.mark.parametrize("accuracy", [cliff(0.637), cliff(0.99), cliff(0.0), bumpy])
@pytest.mark.parametrize("width", [2, 3, 4, 7])
def test_speculative_rounds_walk_the_plain_bisection(accuracy, width):
    kw = dict(baseline=0.9, max_drop_points=5.0, lo=0.0, hi=0.98, tol=0.004, max_probes=9)
    plain = bisect_ratio(accuracy, **kw)
    wide = bisect_ratio(accuracy, width=width, **kw)
    assert [p.as_dict() for p in wide.probes] == [p.as_dict() for p in plain.probes]
    assert (wide.best_ratio, wide.best) == (plain.best_ratio, plain.best)
    assert plain.speculative == [] and plain.calls == len(plain.probes)
    walked = {p.ratio for p in wide.probes}
    assert wide.calls == len(wide.probes) + len(wide.speculative)
    assert all(p.ratio not in walked and p.index == -1 for p in wide.speculative)


def test_three_wide_round_probes_the_quarter_points():
    seen = []

    def evaluate(r):
        seen.append(r)
        return 0.9 if r <= 0.3 else 0.5

    bisect_ratio(evaluate, baseline=0.9, max_drop_points=1.0, lo=0.0, hi=0.8, tol=0.05, max_probes=9, width=3)
    # round 1: hi, then the bracket's midpoint and the midpoint above it (the branch taken when it meets the budget)
    assert seen[:3] == [0.8, 0.4, 0.6]
    # round 2 from bracket [0, 0.4]: its midpoint 0.2 and both quarter points 0.3, 0.1 (a 4-way split)
    assert seen[3:6] == [0.2, 0.3, 0.1]


def test_each_probe_draws_the_same_random_numbers_whatever_the_width():
    def evaluate(r):
        return 0.9 - r * float(torch.rand(1))  # a probe that uses the global RNG

    torch.manual_seed(0)
    one = bisect_ratio(evaluate, baseline=0.9, max_drop_points=20.0, hi=0.9, tol=0.01, max_probes=6)
    after_one = torch.rand(1)
    torch.manual_seed(0)
    four = bisect_ratio(evaluate, baseline=0.9, max_drop_points=20.0, hi=0.9, tol=0.01, max_probes=6, width=4)
    assert [p.accuracy for p in four.probes] == [p.accuracy for p in one.probes]
    assert torch.equal(torch.rand(1), after_one)  # the caller's RNG stream does not depend on the probes made


def test_width_must_be_positive():
    with pytest.raises(ConfigError, match="width"):
        bisect_ratio(cliff(0.5), baseline=0.9, max_drop_points=1.0, width=0)


def test_map_sharded_in_one_process_stops_where_told_and_raises_as_is():
    seen = []
    out = shard.map_sharded(lambda x: (x, x * x), [1, 2, 3, 4], on_result=lambda i, v: seen.append(i) or i == 1)
    assert out == [[1, 1], [2, 4]] and seen == [0, 1]  # tuples come back as lists, as they do from other ranks

    def boom(x):
        raise PruningError("no")

    with pytest.raises(PruningError, match="no"):
        shard.map_sharded(boom, [1])
    with pytest.raises(TypeError, match="JSON"):
        shard.map_sharded(lambda x: object(), [1])


# --- two gloo processes -----------------------------------------------------------------------------------

def test_two_ranks_share_out_the_items_and_their_errors(tmp_path):
    proc = subprocess.run(torchrun(str(HERE / "shard_worker.py"), str(tmp_path)), env=env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world"] == 2
    assert r0["ran_here"] == [1, 3, 5] and r1["ran_here"] == [2, 4]  # round-robin, one item per rank a round
    for seed, row in zip(range(10, 15), r0["squares"]):  # each item drew from its own seed, whichever rank ran it
        torch.manual_seed(seed)
        assert row["draw"] == float(torch.rand(1))
    assert r0["ran_chunked"] == [0, 2, 4, 6] and r1["ran_chunked"] == [1, 3, 5]  # rounds of 3 items a rank
    for r in (r0, r1):
        assert r["chunked"] == [100, 101, 102, 103, 104, 105, 106]
        assert r["squares"] == r0["squares"] and [row["sq"] for row in r["squares"]] == [1, 4, 9, 16, 25]
        assert r["seen"] == [0, 1, 2, 3, 4]
        # item 3 (index 2, rounds of 2 items a rank) failed on rank 0: both ranks raise its error type after the
        # items before it; item 4, which rank 1 finished in the same round, is dropped
        assert r["error"]["type"] == "PruningError" and "three is too many" in r["error"]["message"]
        assert r["error"]["before"] == [1, 2] and r["interrupt"]["before"] == [0, 1]
    assert "rank 0" in r1["error"]["message"] and r0["error"]["message"] == "three is too many"
    plain = bisect_ratio(lambda r: 0.9 - 0.3 * r + (0.2 if 0.6 < r < 0.7 else 0.0), baseline=0.9, max_drop_points=5.0,
                         hi=0.98, tol=0.004, max_probes=9)
    for r in (r0, r1):  # two probes a round, one each, and the one-process path
        assert r["bisect"]["probes"] == [p.as_dict() for p in plain.probes]
        assert r["bisect"]["ratio"] == plain.best_ratio and r["bisect"]["speculative"]
        assert r["bisect"]["calls"] == len(plain.probes) + len(r["bisect"]["speculative"])


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    out = tmp_path_factory.mktemp("sharded")
    worker = str(HERE / "sharded_worker.py")
    single = subprocess.run([sys.executable, worker, str(out)], env=env(), capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    dist = subprocess.run(torchrun(worker, str(out)), env=env(), capture_output=True, text=True, timeout=300)
    assert dist.returncode == 0, dist.stderr[-3000:]
    runs = {t: json.loads((out / f"{t}.json").read_text()) for t in ("single", "rank0", "rank1")}
    models = {t: torch.load(out / f"{t}.pt", weights_only=True) for t in runs}
    return runs, models


@pytest.mark.slow
@pytest.mark.parametrize("part", ["sensitivity", "pareto", "layerwise", "rng_after"])
def test_two_ranks_get_the_one_process_results(sweeps, part):
    runs, _ = sweeps
    assert runs["rank0"]["world"] == 2 and runs["single"]["world"] == 1
    assert runs["rank0"][part] == runs["single"][part]
    assert runs["rank1"][part] == runs["single"][part]


@pytest.mark.slow
def test_the_sweeps_are_not_trivial(sweeps):
    runs, _ = sweeps
    sens = runs["single"]["sensitivity"]
    assert len(sens["curves"]) == 3 and not sens["interrupted"]
    assert len({c["accuracy"] for curve in sens["curves"].values() for c in curve}) > 3
    assert runs["single"]["search"]["best"] is not None and runs["single"]["layerwise"]["ratio"] > 0
    assert len(runs["single"]["pareto"]["points"]) == 4


@pytest.mark.slow
def test_two_rank_bisection_walks_the_one_process_probes(sweeps):
    runs, _ = sweeps
    one = runs["single"]["search"]
    assert len(one["probes"]) >= 3 and one["speculative"] == []
    for rank in ("rank0", "rank1"):
        two = runs[rank]["search"]
        assert {k: two[k] for k in ("ratio", "best", "probes", "histories")} == \
               {k: one[k] for k in ("ratio", "best", "probes", "histories")}
        assert two["speculative"] and not {p["ratio"] for p in two["speculative"]} & {p["ratio"] for p in one["probes"]}


@pytest.mark.slow
@pytest.mark.parametrize("which", ["search", "layerwise", "shared"])
def test_every_rank_holds_the_same_chosen_model(sweeps, which):
    _, models = sweeps
    expected = models["single"][which] if which != "shared" else models["rank1"][which]  # rank 1 held that one
    for tag in ("rank0", "rank1"):
        got = models[tag][which]
        assert got.keys() == expected.keys()
        for key in expected:
            assert torch.equal(got[key], expected[key]), (tag, which, key)
    shared = models["rank0"]["shared"]
    assert torch.equal(models["rank0"]["shared_weight"], shared["0.weight_orig"] * shared["0.weight_mask"])


# --- the CLI under torchrun -----------------------------------------------------------------------------------

def cli_once_and_under_torchrun(tmp_path, command: str, stages: dict, timeout: int = 600):
    """Run ``prunekit <command>`` on a digits MLP recipe (a saved checkpoint, then ``stages``) in one process and
    under a 2-process torchrun; both must succeed and write the same files, and only into their own folders.
    Returns ``(stdout, results.json)`` of each, keyed ``one`` / ``two``."""
    from prunekit.io import save
    from prunekit.models import create_model

    torch.manual_seed(0)
    model = create_model("mlp", in_features=64, hidden=[24], num_classes=10)
    save(model, tmp_path / "start.safetensors", model_spec={"name": "mlp", "kwargs": {"hidden": [24]}})
    recipe = {"seed": 0, "output": "unused", "data": {"name": "digits", "normalize": "unit"},
              "model": {"name": "mlp", "kwargs": {"hidden": [24]}, "checkpoint": str(tmp_path / "start.safetensors")},
              **stages, "measure": {"latency": False}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    cli = ["-m", "prunekit", command, str(tmp_path / "r.yaml"), "-q", "-o"]
    runs = {"one": [sys.executable, *cli, str(tmp_path / "one")], "two": torchrun(*cli, str(tmp_path / "two"))}
    out = {}
    for key, argv in runs.items():
        done = subprocess.run(argv, env=env(), capture_output=True, text=True, timeout=timeout, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        out[key] = (done.stdout, json.loads((tmp_path / key / "results.json").read_text()))
    files = lambda d: sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())  # noqa: E731
    assert files(tmp_path / "two") == files(tmp_path / "one")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "r.yaml", "start.safetensors", "two"]
    return out


@pytest.mark.slow
def test_cli_analyze_under_torchrun_writes_once_and_matches_one_process(tmp_path):
    out = cli_once_and_under_torchrun(tmp_path, "analyze", {
        "analyze": {"ratios": [0.5, 0.9], "pareto_ratios": [0.5, 0.9], "bins": 8}}, timeout=300)
    (one_out, one), (two_out, two) = out["one"], out["two"]
    assert two_out.count("baseline validation accuracy") == one_out.count("baseline validation accuracy") == 1
    assert two["analysis"] == one["analysis"]


@pytest.mark.slow
def test_cli_run_with_a_search_stage_under_torchrun_writes_once_and_chooses_as_one_process(tmp_path):
    """The probes run one per process (their recovery fine-tunes alone), so from the same trained checkpoint the
    search walks the same probes. (A ``train:`` stage would differ: under DDP each process's batch_size is
    per process, so N processes train with N times the global batch.)"""
    out = cli_once_and_under_torchrun(tmp_path, "run", {
        "search": {"method": "bisection", "objective": "ratio", "granularity": "weight",
                   "max_accuracy_drop": 1.0, "lo": 0.0, "hi": 0.98, "tol": 0.05, "max_probes": 4,
                   "recovery": "oneshot", "finetune": {"epochs": 1, "lr": 0.001, "restore_best": False}}})
    search = {k: results["search"] for k, (_, results) in out.items()}
    assert search["one"]["probes"], search["one"]  # the search ran probes
    drop = lambda s: [(p["ratio"], p.get("accuracy", p.get("val_accuracy"))) for p in s["probes"]]  # noqa: E731
    assert drop(search["two"]) == drop(search["one"])
    assert search["two"]["ratio"] == search["one"]["ratio"] and search["one"]["ratio"] > 0
