"""DistributedDataParallel: two CPU processes (gloo) train an involution network for one step
and end where a single process does on the whole batch.

Each rank gets half of a fixed global batch and averages its loss over its half, so DDP's
gradient (the mean of the ranks' gradients) is the gradient of the mean loss over the whole
batch. That is exact only if a sample's output does not depend on the rest of its batch:

* "groupnorm": GroupNorm wherever the network normalises (inside the involution kernel branch
  too), so the reference is one process on the whole batch;
* "batchnorm": the default Involution2d (BatchNorm in its kernel branch) and BatchNorm between
  layers, in training mode. Each rank normalises with its own half's statistics, so the
  reference runs the two halves separately in one process and averages their losses.

float64 throughout, so the comparison can be tight. The network has a stride-2 involution, so
both gradients of the op (input and kernel) are exercised at stride 1 and 2.
"""

import datetime
import socket
import time
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F

from involution import Involution2d

WORLD_SIZE = 2
BATCH = 8  # global batch: 4 samples a rank
CLASSES = 5
LR = 0.5
TIMEOUT_S = 120  # the whole run; a rank that fails ends it at once

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available")


def make_model(norm: str) -> nn.Module:
    torch.manual_seed(0)

    def normalise(channels):
        return nn.GroupNorm(4, channels) if norm == "groupnorm" else nn.BatchNorm2d(channels)

    def involution(cin, cout, stride):
        sigma = None  # the default: BatchNorm2d + ReLU
        if norm == "groupnorm":
            sigma = nn.Sequential(nn.GroupNorm(2, cout // 2), nn.ReLU())
        return Involution2d(cin, cout, sigma_mapping=sigma, kernel_size=3, padding=1,
                            stride=stride, groups=2, reduce_ratio=2)

    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), normalise(8), nn.ReLU(),
        involution(8, 8, 1), normalise(8), nn.ReLU(),
        involution(8, 16, 2), normalise(16), nn.ReLU(),  # 9x9 -> 5x5
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, CLASSES),
    ).double()


def global_batch():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, 3, 9, 9, generator=gen, dtype=torch.float64)
    y = torch.randint(0, CLASSES, (BATCH,), generator=gen)
    return x, y


def shards():
    per_rank = BATCH // WORLD_SIZE
    return [slice(r * per_rank, (r + 1) * per_rank) for r in range(WORLD_SIZE)]


def step(model: nn.Module, loss: torch.Tensor) -> dict:
    """Backward, then one SGD step; returns the loss, the gradients and the new parameters."""
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    loss.backward()  # under DDP, this averages the gradients over the ranks
    named = (model.module if isinstance(model, nn.parallel.DistributedDataParallel)
             else model).named_parameters
    grads = {n: p.grad.clone() for n, p in named()}
    optimizer.step()
    return {"loss": loss.detach(), "grads": grads,
            "params": {n: p.detach().clone() for n, p in named()}}


def _rank(rank: int, port: int, norm: str, out_dir: str) -> None:
    """One DDP process: a forward and backward on its half of the batch, then one SGD step."""
    out = Path(out_dir)
    try:
        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=WORLD_SIZE,
                                timeout=datetime.timedelta(seconds=TIMEOUT_S))
        try:
            model = nn.parallel.DistributedDataParallel(make_model(norm))
            x, y = global_batch()
            half = shards()[rank]
            loss = F.cross_entropy(model(x[half]), y[half])  # the mean over this rank's half
            torch.save(step(model, loss), out / f"rank{rank}.pt")
        finally:
            dist.destroy_process_group()
    except BaseException:
        (out / f"rank{rank}.err").write_text(traceback.format_exc())
        raise


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(norm: str, out_dir: Path):
    """Spawns the ranks, waits at most TIMEOUT_S (less when one fails) and returns their results."""
    context = mp.get_context("spawn")  # fresh interpreters; they inherit sys.path and the env
    port = free_port()
    procs = [context.Process(target=_rank, args=(r, port, norm, str(out_dir)), daemon=True)
             for r in range(WORLD_SIZE)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + TIMEOUT_S
    # Polls the exit codes rather than waiting on the processes' sentinels (as join(timeout)
    # and torch.multiprocessing.spawn do): on the development VM a sentinel sometimes stayed
    # silent after its process had exited, until the wait's timeout.
    try:
        while time.monotonic() < deadline:
            codes = [p.exitcode for p in procs]
            if None not in codes or any(codes):  # all done, or one failed (the other would wait)
                break
            time.sleep(0.05)
    finally:
        for p in procs:
            if p.exitcode is None:
                p.kill()
            p.join()
    errors = "\n".join(f"rank {r}: {(out_dir / f'rank{r}.err').read_text()}"
                       for r in range(WORLD_SIZE) if (out_dir / f"rank{r}.err").exists())
    assert all(p.exitcode == 0 for p in procs), (
        f"exit codes {[p.exitcode for p in procs]} (negative: killed after {TIMEOUT_S} s or "
        f"by a signal)\n{errors}")
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(WORLD_SIZE)]


def reference(norm: str):
    """One process, one step: the whole batch at once, or (BatchNorm) the halves separately."""
    model = make_model(norm)
    x, y = global_batch()
    if norm == "groupnorm":
        loss = F.cross_entropy(model(x), y)
    else:
        loss = sum(F.cross_entropy(model(x[s]), y[s]) for s in shards()) / WORLD_SIZE
    return step(model, loss)


@pytest.mark.parametrize("norm", ["groupnorm", "batchnorm"])
def test_ddp_step_matches_single_process(norm, tmp_path):
    ranks = run_ranks(norm, tmp_path)
    expected = reference(norm)
    assert set(ranks[0]["grads"]) == set(expected["grads"])
    for name, grad in expected["grads"].items():
        assert grad.abs().sum() > 0, f"{name}: no gradient reached it"
        for r, result in enumerate(ranks):
            torch.testing.assert_close(result["grads"][name], grad, rtol=1e-9, atol=1e-12,
                                       msg=lambda m: f"rank {r}, grad of {name}: {m}")
    for name, param in expected["params"].items():
        for r, result in enumerate(ranks):
            torch.testing.assert_close(result["params"][name], param, rtol=1e-9, atol=1e-12,
                                       msg=lambda m: f"rank {r}, {name} after the step: {m}")
    # The ranks' losses are those of their halves, and they average to the reference's.
    torch.testing.assert_close(sum(r["loss"] for r in ranks) / WORLD_SIZE, expected["loss"])
    assert not torch.equal(ranks[0]["loss"], ranks[1]["loss"])
