"""Ranks agree under torchrun (two CPU processes, gloo), each on its own shard of the calibration / training data:

* data-driven criteria sum their statistics over the ranks, so both ranks get the same channel plan (taylor,
  activation, apoz) or the same masks and weights (wanda, sparsegpt) as one process over the union of the shards;
* DDP fine-tuning with batch b per rank equals one process with batch 2b, and the model rank 0 writes loads
  equal to every rank's copy.

One torchrun job (ranks_worker.py) serves every test; the references run here, in one process.
"""
import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("ranks_worker", HERE / "ranks_worker.py")
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ranks")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "MASTER_ADDR": "127.0.0.1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", str(HERE / "ranks_worker.py"), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    # every built-in data-driven criterion reduces its statistics; the plug-in without all_reduce is named, once
    # per process
    warned = [ln for ln in proc.stderr.splitlines() if "has no all_reduce" in ln]
    assert len(warned) == 2 and all("PlugIn" in ln for ln in warned), proc.stderr[-4000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


def test_both_processes_ran_in_one_group(ranks):
    assert [r["world_size"] for r in ranks] == [2, 2]


@pytest.mark.parametrize("criterion", worker.CHANNEL_CRITERIA)
def test_channel_plans_agree_and_equal_one_process_over_the_union(ranks, criterion):
    r0, r1 = (r[f"plan/{criterion}"] for r in ranks)
    assert r0 == r1  # same removed channels, same scores to the last bit
    union = worker.channel_plan(criterion, worker.image_batches())
    assert r0["removed"] == union["removed"] and r0["removed"]
    for got, want in zip(r0["scores"], union["scores"]):
        assert (got is None) == (want is None)
        if got is not None:
            assert torch.allclose(torch.tensor(got), torch.tensor(want), rtol=1e-5, atol=1e-9)
    # each shard alone would remove other channels: the agreement comes from the reduction
    for r in range(2):
        alone = worker.channel_plan(criterion, worker.shard(worker.image_batches(), r, 2))
        assert alone["removed"] != union["removed"]


@pytest.mark.parametrize("criterion", worker.WEIGHT_CRITERIA)
def test_weight_masks_agree_and_equal_one_process_over_the_union(ranks, criterion):
    r0, r1 = (r[f"weights/{criterion}"] for r in ranks)
    assert r0.keys() == r1.keys()
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k  # masks and (sparsegpt) updated weights: the same bits on both ranks
    union = worker.weight_state(criterion, worker.vector_batches())
    alone = worker.weight_state(criterion, worker.shard(worker.vector_batches(), 0, 2))
    masks = [k for k in r0 if k.endswith("_mask")]
    assert len(masks) == 3
    for k in masks:
        assert torch.equal(r0[k], union[k]), k
    assert any(not torch.equal(alone[k], union[k]) for k in masks)  # one shard alone chooses other weights
    for k in r0:
        assert torch.allclose(r0[k], union[k], rtol=1e-4, atol=1e-6), k


def test_sums_hold_the_union_of_the_keys(ranks):
    for r in ranks:
        assert set(r["sums"]) == {"both", "only0", "only1"}
        assert torch.equal(r["sums"]["both"], torch.tensor([3.0, 6.0]))
        assert r["sums"]["only0"].item() == 10 and r["sums"]["only1"].item() == 11


def test_an_error_on_one_process_raises_on_every_process(ranks):
    assert "calibration batches must be (inputs, targets) pairs" in ranks[1]["failure"]
    assert "failed on another process" in ranks[0]["failure"]
    for r in ranks:
        assert "1 of 2 processes got no calibration batches" in r["empty"]


def test_ddp_finetuning_equals_one_process_with_the_global_batch(ranks):
    r0, r1 = ranks
    for k in r0["finetuned"]:
        assert torch.equal(r0["finetuned"][k], r1["finetuned"][k]), k
    single, history = worker.prune_and_finetune(worker.vector_batches(), 2 * worker.BATCH)
    state = single.state_dict()
    assert state.keys() == r0["finetuned"].keys()
    for k, v in state.items():
        assert torch.allclose(r0["finetuned"][k], v, rtol=1e-4, atol=1e-5), k
    for got, want in zip(r0["history"], history):
        assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-5)
        assert got["val_accuracy"] == want["val_accuracy"]
    # the check can tell batches apart: one process with the per-rank batch ends elsewhere
    other, _ = worker.prune_and_finetune(worker.vector_batches(), worker.BATCH)
    assert any(not torch.allclose(other.state_dict()[k], v, rtol=1e-4, atol=1e-5) for k, v in state.items())


def test_the_model_rank0_writes_loads_equal_to_every_rank(ranks):
    for r in ranks:
        assert r["loaded"].keys() == r["finetuned"].keys()
        for k in r["finetuned"]:
            assert torch.equal(r["loaded"][k], r["finetuned"][k]), k
    assert r["finetuned"]["0.weight"].shape[0] < 32  # the channel plan travelled with the file


def test_one_process_never_reduces():
    from prunekit.importance import calibrate
    from prunekit.importance.taylor import Taylor

    class Counting(Taylor):
        calls = 0

        def all_reduce(self, sums):
            Counting.calls += 1

    assert calibrate(Counting(), worker.conv_net(), worker.image_batches()) == 4
    assert Counting.calls == 0  # no process group: nothing is reduced, nothing waits
