"""Scale-out with PyTorch's distributed engine: the torchrun entry point
(involution.examples.distributed) trains the digits network on two CPU processes (gloo) with
DDP, and with FSDP2 (fully_shard) eager and under torch.compile; every run's per-step losses
and final parameters equal one process's on the same shards (float64, a few steps)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

pytest.importorskip("sklearn", reason="the digits data set comes with scikit-learn")
pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available")

from involution.examples import distributed  # noqa: E402

STEPS = 4
COMMON = ["--steps", str(STEPS), "--batch", "32", "--dtype", "float64", "--lr", "0.05"]


def torchrun() -> list:
    """The torchrun next to this interpreter (the console script), else its module."""
    script = Path(sys.executable).with_name("torchrun")
    if script.exists():
        return [str(script)]
    found = shutil.which("torchrun")
    return [found] if found else [sys.executable, "-m", "torch.distributed.run"]


def run_torchrun(extra, tmp_path: Path):
    out_json, out_params = tmp_path / "losses.json", tmp_path / "params.pt"
    cmd = torchrun() + ["--standalone", "--nproc_per_node=2", "-m",
                        "involution.examples.distributed", *COMMON, *extra,
                        "--json", str(out_json), "--save", str(out_params)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env,
                            cwd=tmp_path)
    assert result.returncode == 0, f"{cmd}\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    lines = [line for line in result.stdout.splitlines() if line.startswith("step ")]
    assert len(lines) == STEPS, result.stdout  # rank 0 prints the loss of every step
    return json.loads(out_json.read_text())["losses"], torch.load(out_params)


def train_here(shards: int):
    threads = torch.get_num_threads()
    try:
        return distributed.train(distributed.parse_args(COMMON + ["--shards", str(shards)]))
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def single_process():
    """The same steps in this process, the batch in two shards as on two ranks."""
    return train_here(2)


@pytest.mark.parametrize("extra", [[], ["--fsdp"], ["--fsdp", "--compile", "aot_eager"]],
                         ids=["ddp", "fsdp2", "fsdp2-compiled"])
def test_torchrun_two_ranks_match_one_process(extra, single_process, tmp_path):
    losses, params = run_torchrun(extra, tmp_path)
    expected = single_process
    assert len(losses) == STEPS
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(expected["losses"]),
                               rtol=1e-10, atol=1e-12)
    assert losses[-1] < losses[0]  # it trains
    assert set(params) == set(expected["params"])
    for name, value in expected["params"].items():
        torch.testing.assert_close(params[name], value, rtol=1e-9, atol=1e-11,
                                   msg=lambda m: f"{name}: {m}")


def test_shards_change_the_result(single_process):
    """The comparison can fail: one shard (whole-batch BatchNorm statistics) differs."""
    whole = train_here(1)
    assert abs(whole["losses"][-1] - single_process["losses"][-1]) > 1e-6
