"""DDP fine-tuning through torchrun: two CPU processes (gloo) end with identical weights and intact masks,
stop together when one of them diverges, and print no deprecation warning."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# the C++ runtime aborting a rank ("std::terminate" on a joinable thread) during interpreter finalization, after
# the work succeeded: the workers now end with distributed.exit_rank (no finalization); should it still happen, the
# run is repeated once (the results are checked all the same)
ABORT = "terminate called without an active exception"


@pytest.mark.slow
def test_two_process_ddp_keeps_ranks_in_sync_and_masks(tmp_path):
    worker = Path(__file__).with_name("ddp_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
           str(worker), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 and ABORT in proc.stderr:  # seen once in ~10 loaded CI runs: one rerun, not more
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "FutureWarning" not in proc.stderr, proc.stderr[-3000:]  # e.g. DDP's deprecated broadcast_buffers
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert int(r0["world_size"]) == 2
    initial = {k: v for k, v in r0.items() if k.endswith("_mask")}
    assert int(r0["diverged_at"]) == int(r1["diverged_at"]) == 2  # NaN on rank 1 only: both stop at step 2
    assert bool(r0["restored"]) and bool(r1["restored"])
    for key in r0:
        assert torch.equal(r0[key], r1[key]), key  # shards differ, so only all-reduced gradients keep them equal
    for key, mask in initial.items():
        orig = r0[key.replace("_mask", "_orig")]
        assert (orig * mask)[mask == 0].abs().sum() == 0
