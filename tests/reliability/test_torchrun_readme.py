"""The README's torchrun command, exactly as written there, in a copy of the repository's recipes folder."""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import prunekit

REPO = Path(__file__).resolve().parents[2]


def readme_torchrun_command() -> list:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("torchrun ")]
    assert len(lines) == 1, f"expected one torchrun line in README.md, found {lines}"
    return shlex.split(lines[0])


def _run(cmd, cwd):
    bindir = str(Path(sys.executable).parent)  # the venv's torchrun and prunekit come first
    env = {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", ""), "OMP_NUM_THREADS": "1",
           "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(REPO)}
    env.pop("WORLD_SIZE", None)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _shape(results: dict) -> dict:
    """What must agree between the two runs: sections, stage rows, artifact names, measured keys."""
    return {"keys": sorted(results), "stages": [r["stage"] for r in results["stages"]],
            "artifacts": sorted(Path(p).name for p in results["artifacts"].values()),
            "after": sorted(results["after"]), "status": results["status"]}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    work = tmp_path_factory.mktemp("torchrun")
    shutil.copytree(REPO / "recipes", work / "recipes")
    cmd = readme_torchrun_command()
    assert cmd[:2] == ["torchrun", "--nproc_per_node"]
    recipe = cmd[-1]
    distributed = _run(cmd, work)
    single = _run(["prunekit", "run", recipe, "-q", "-o", "single"], work)
    out_dir = re.search(r"^output:\s*(\S+)", (work / recipe).read_text(), re.M).group(1)
    return work, distributed, single, work / out_dir, work / "single"


def test_the_readme_torchrun_command_succeeds_quietly(two_runs):
    _, dist_proc, _, _, _ = two_runs
    assert dist_proc.returncode == 0, dist_proc.stderr[-4000:]
    assert "Traceback" not in dist_proc.stderr
    assert "FutureWarning" not in dist_proc.stderr, dist_proc.stderr[-2000:]
    assert "prunekit: error" not in dist_proc.stderr, dist_proc.stderr[-2000:]
    assert dist_proc.stdout.count("test accuracy") == 1  # one table: only rank 0 prints


def test_rank0_wrote_the_same_files_as_a_single_process_run(two_runs):
    _, dist_proc, single_proc, dist_dir, single_dir = two_runs
    assert dist_proc.returncode == 0 and single_proc.returncode == 0, single_proc.stderr[-2000:]
    names = lambda d: sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())  # noqa: E731
    assert names(dist_dir) == names(single_dir)
    assert not list(dist_dir.rglob("*.tmp")) and not (dist_dir / ".prunekit.lock").exists()
    dist_res = json.loads((dist_dir / "results.json").read_text())
    single_res = json.loads((single_dir / "results.json").read_text())
    assert _shape(dist_res) == _shape(single_res)
    assert dist_res["status"] == "completed"
    export = [r for r in dist_res["stages"] if r["stage"] == "export"]
    assert export and all(r.get("max_abs_diff", 0) < 1e-4 for r in export)


def test_the_distributed_checkpoint_loads_and_matches_its_onnx_export(two_runs):
    import onnxruntime as ort

    _, dist_proc, _, dist_dir, _ = two_runs
    assert dist_proc.returncode == 0
    model = prunekit.load(dist_dir / "model.safetensors", "digits_cnn")
    x = torch.randn(4, 1, 8, 8)
    session = ort.InferenceSession(str(dist_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = prunekit.finalize(prunekit.clone_model(model))(x)
    assert torch.allclose(torch.from_numpy(got), want, atol=1e-4)
