"""Data-parallel training with PyTorch's own distributed engine, launched by torchrun.

    torchrun --nproc_per_node=2 -m involution.examples.distributed                 # DDP, CPU
    torchrun --nproc_per_node=2 -m involution.examples.distributed --fsdp          # FSDP2
    torchrun --nproc_per_node=2 -m involution.examples.distributed --fsdp --compile aot_eager
    python -m involution.examples.distributed --shards 2     # the same steps in one process

It trains the digits network of :mod:`involution.examples.digits` (three ``Involution2d``
layers, one with stride 2; scikit-learn's bundled digits, nothing downloaded) with SGD and
momentum, and rank 0 prints the loss of every step. Each step takes a fixed global batch
(``--batch``, the same order on every rank) and gives rank r the r-th of WORLD_SIZE equal
shards; each rank averages the loss over its shard, and DistributedDataParallel (or FSDP2's
reduce-scatter) averages the gradients, so a step is the gradient of the mean of the shards'
losses. ``--shards N`` without torchrun computes exactly that in one process (the shards one
after the other: BatchNorm normalises each shard with its own statistics, as on N ranks), so
its losses and parameters are those of N ranks, to float rounding (``--dtype float64`` makes
the comparison tight; tests/test_torchrun.py does it).

The process group is gloo on the CPU, NCCL when CUDA is available (each rank takes the GPU
``LOCAL_RANK``; ``--sync-bn`` converts BatchNorm to SyncBatchNorm there, for whole-batch
statistics). On several machines, run the same command on each with ``--nnodes``,
``--node_rank`` and a rendezvous address (see the README, "Distributed training").

``--fsdp`` shards parameters, gradients and optimizer state with
``torch.distributed.fsdp.fully_shard`` (FSDP2) per involution block and at the root;
``--compile BACKEND`` wraps the model in ``torch.compile`` (``inductor``, ``aot_eager``).
``--json PATH`` (rank 0) writes the per-step losses; ``--save PATH`` (rank 0) the final full
parameters.
"""

import argparse
import json
import os
import sys
import time
from typing import Dict, List

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

import involution
from involution.examples.digits import load_data, make_model

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps (default 20)")
    parser.add_argument("--batch", type=int, default=64,
                        help="global batch, split evenly over the ranks (default 64)")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--fsdp", action="store_true", help="FSDP2 (fully_shard) instead of DDP")
    parser.add_argument("--compile", metavar="BACKEND", default=None,
                        help="torch.compile the model with this backend (inductor, aot_eager)")
    parser.add_argument("--sync-bn", action="store_true",
                        help="SyncBatchNorm (GPUs): BatchNorm statistics over the whole batch")
    parser.add_argument("--shards", type=int, default=1,
                        help="without torchrun: split each batch into this many shards, as "
                             "that many ranks would")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per process")
    parser.add_argument("--json", help="rank 0 writes the per-step losses here")
    parser.add_argument("--save", help="rank 0 saves the final parameters here (torch.save)")
    args = parser.parse_args(argv)
    if args.batch < 1 or args.steps < 1:
        parser.error("--batch and --steps must be >= 1")
    return args


def batches(args, n_train: int) -> List[torch.Tensor]:
    """The global batches of every step: indices into the training set, the same on every rank."""
    generator = torch.Generator().manual_seed(args.seed)
    order = torch.cat([torch.randperm(n_train, generator=generator)
                       for _ in range(-(-args.steps * args.batch // n_train))])
    return [order[i * args.batch:(i + 1) * args.batch] for i in range(args.steps)]


def shard_slices(batch: int, shards: int) -> List[slice]:
    if batch % shards != 0:
        raise SystemExit(f"--batch {batch} must be divisible by the number of ranks ({shards})")
    n = batch // shards
    return [slice(r * n, (r + 1) * n) for r in range(shards)]


def full_parameters(model: nn.Module) -> Dict[str, torch.Tensor]:
    """Name -> full parameter tensor (gathered from FSDP2's DTensor shards)."""
    out = {}
    for name, p in model.named_parameters():
        t = p.detach()
        if hasattr(t, "full_tensor"):
            t = t.full_tensor()
        for prefix in ("_orig_mod.", "module."):
            name = name.replace(prefix, "")
        out[name] = t.clone().cpu()
    return out


def train(args) -> Dict:
    """Runs args.steps steps; returns {"losses": [...], "params": {...}} (on every rank)."""
    torch.set_num_threads(args.threads)
    distributed = "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1
    device = torch.device("cpu")
    rank, world = 0, 1
    if distributed:
        if torch.cuda.is_available():
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
    dtype = DTYPES[args.dtype]

    x_train, y_train, _, _ = load_data()
    x_train = x_train.to(device, dtype)
    y_train = y_train.to(device)
    torch.manual_seed(args.seed)
    model = make_model().to(device, dtype)
    if args.sync_bn:
        if device.type == "cpu":
            raise SystemExit("--sync-bn needs GPUs: DDP accepts SyncBatchNorm only on GPU modules")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if distributed and args.fsdp:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(device.type, (world,))
        for layer in model:
            if isinstance(layer, involution.Involution2d):
                fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
    elif distributed:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    forward = torch.compile(model, backend=args.compile) if args.compile else model
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)

    shards = world if distributed else args.shards
    mine = [rank] if distributed else list(range(shards))
    slices = shard_slices(args.batch, shards)
    losses = []
    start = time.perf_counter()
    if rank == 0:
        print(f"{'FSDP2' if args.fsdp and distributed else 'DDP' if distributed else 'one process'}"
              f", {shards} shard(s) of {args.batch // shards}, {args.dtype}"
              f"{', compiled (' + args.compile + ')' if args.compile else ''}", flush=True)
    model.train()
    for step, batch in enumerate(batches(args, len(x_train)), 1):
        optimizer.zero_grad(set_to_none=True)
        # The mean over the shards of each shard's mean loss (one shard per rank under torchrun;
        # the gradient averaging across ranks supplies the 1 / world).
        loss_sum = torch.zeros((), device=device, dtype=dtype)
        for r in mine:
            idx = batch[slices[r]]
            loss = F.cross_entropy(forward(x_train[idx]), y_train[idx])
            (loss / len(mine)).backward()
            loss_sum += loss.detach()
        optimizer.step()
        mean_loss = loss_sum / shards
        if distributed:
            dist.all_reduce(mean_loss)
        losses.append(mean_loss.item())
        if rank == 0:
            print(f"step {step:>3}/{args.steps}  loss {losses[-1]:.6f}", flush=True)
    params = full_parameters(model)
    if rank == 0:
        print(f"{args.steps} steps in {time.perf_counter() - start:.1f} s", flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"losses": losses, "world_size": shards, "args": vars(args)}, f)
        if args.save:
            torch.save(params, args.save)
    if distributed:
        dist.barrier()
        dist.destroy_process_group()
    return {"losses": losses, "params": params}


def main(argv=None) -> int:
    train(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
