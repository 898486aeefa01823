"""End to end (run.py --models): RedNet-26/50, fused (the default: the involution blocks run
fused_involution2d) and unfused (``fused=False``: span conv + op), against ResNet-26/50 of the
same layout, batch 8 at 224x224 on the CPU, inference and a training step (SGD), eager and
torch.compile, contiguous and channels_last; and the memory one training forward saves for
backward (saved_worker).

One worker process per variant (mode, backend, layout) builds every model, warms each up (this
compiles it), measures each one's peak memory rise over one step (freed heap memory handed back
first), profiles one step of each RedNet to find the share of time spent in our op, then runs
interleaved rounds, every model once per round, until each model has run long enough (a 0.3 s
inference step gets more rounds than a 2 s training step), and reports medians and the rounds'
interquartile range: one round stalled by a neighbour on the shared host moves neither.
Freed blocks are kept by the allocator (run.py's malloc settings), as in the op benchmark.
"""

import statistics
import time
from typing import Callable, Dict, List

import torch
import torch.nn as nn
import torch.nn.functional as F

from measure import HEAP_RESERVE, peak_rise, reserve_heap, wake_thread_pool

MODELS = ("rednet26", "rednet26-unfused", "resnet26", "rednet50", "rednet50-unfused", "resnet50")
LAYOUTS = ("contiguous", "channels_last")
VARIANTS = [(mode, backend, layout) for backend in ("eager", "compile")
            for mode in ("inference", "training") for layout in ("contiguous", "channels_last")]
BATCH = 8
STAGE_BLOCKS = {26: (1, 2, 4, 1), 50: (3, 4, 6, 3)}


class Bottleneck(nn.Module):
    """The standard ResNet bottleneck (stride on the 3x3 conv, as torchvision's ResNet v1.5)."""

    def __init__(self, in_channels: int, mid: int, stride: int) -> None:
        super().__init__()
        out = 4 * mid
        self.conv1, self.bn1 = nn.Conv2d(in_channels, mid, 1, bias=False), nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3, self.bn3 = nn.Conv2d(mid, out, 1, bias=False), nn.BatchNorm2d(out)
        self.downsample = None
        if stride != 1 or in_channels != out:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, out, 1, stride, bias=False),
                                            nn.BatchNorm2d(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


def resnet(depth: int, num_classes: int = 1000) -> nn.Module:
    """ResNet-26/50 with torchvision's layout (resnet50(): 25,557,032 parameters)."""
    layers: List[nn.Module] = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64),
                               nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)]
    in_channels = 64
    for stage, blocks in enumerate(STAGE_BLOCKS[depth]):
        mid = 64 * 2 ** stage
        for i in range(blocks):
            layers.append(Bottleneck(in_channels, mid, 2 if i == 0 and stage > 0 else 1))
            in_channels = 4 * mid
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_channels, num_classes)]
    return nn.Sequential(*layers)


def resnet_twin(name: str) -> str:
    """The ResNet of a RedNet's depth: rednet50 and rednet50-unfused -> resnet50."""
    return name.split("-")[0].replace("rednet", "resnet")


def build(name: str) -> nn.Module:
    """rednetN (fused), rednetN-unfused (fused=False) or resnetN."""
    torch.manual_seed(0)
    if name.startswith("rednet"):
        import involution

        model, _, variant = name.partition("-")
        if variant not in ("", "unfused"):
            raise ValueError(f"unknown model {name!r}")
        return getattr(involution.models, model)(fused=variant != "unfused")
    try:  # torchvision's own ResNet where it imports (its wheels need the CUDA build of torch)
        import torchvision

        if name == "resnet50":
            return torchvision.models.resnet50()
    except Exception:
        pass
    return resnet(int(name[len("resnet"):]))


def make_step(model: nn.Module, mode: str, backend: str, layout: str) -> Callable:
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    model = model.to(memory_format=fmt).train(mode == "training")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, 3, 224, 224, generator=gen).contiguous(memory_format=fmt)
    labels = torch.randint(0, 1000, (BATCH,), generator=gen)
    run = torch.compile(model) if backend == "compile" else model
    if mode == "inference":
        def step():
            with torch.no_grad():
                run(x)
        return step
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(run(x), labels).backward()
        optimizer.step()
    return train_step


def op_share(step: Callable) -> float:
    """Share of one step's wall time spent in the involution ops (self time of every
    involution:: op, forward and gradients, under torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        step()
        wall = time.perf_counter() - start
    ours = sum(e.self_cpu_time_total for e in prof.key_averages()
               if e.key.startswith("involution::"))
    return ours / 1e6 / wall


MAX_ROUNDS = 60


def iqr_spread(times: List[float]) -> float:
    """The interquartile range over the median: the middle half of the rounds lies within it,
    whatever one stalled round (a neighbour on the shared host) did."""
    if len(times) < 2:
        return 0.0
    q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive")
    return (q3 - q1) / statistics.median(times)


def models_worker(spec: Dict) -> Dict:
    torch.set_num_threads(spec["threads"])
    mode, backend, layout = spec["variant"]
    steps = {name: make_step(build(name), mode, backend, layout) for name in spec["models"]}
    out = {name: {} for name in steps}
    for name, step in steps.items():
        start = time.perf_counter()
        step()  # compiles under torch.compile
        out[name]["first_step_s"] = time.perf_counter() - start
        step()
        out[name]["peak_bytes"] = peak_rise(step, torch.device("cpu"))
        if name.startswith("rednet"):
            out[name]["op_share"] = op_share(step)
    # The heap grows for several steps before it reuses its blocks (see measure.HEAP_RESERVE),
    # and a training step then writes hundreds of MiB of fresh pages: a reserve as large as the
    # largest step's peak rise makes the timed steps reuse written pages.
    reserve_heap(max([HEAP_RESERVE] + [o["peak_bytes"] for o in out.values()]))
    # Interleaved rounds, every model once per round, until there are at least spec["rounds"]
    # and each model has run for spec["seconds"] (a 0.3 s inference step gets far more rounds
    # than a 2 s training step), at most MAX_ROUNDS.
    samples = {name: [] for name in steps}
    for rounds in range(1, MAX_ROUNDS + 1):
        for name, step in steps.items():
            wake_thread_pool(torch.device("cpu"), spec["threads"])
            start = time.perf_counter()
            step()
            samples[name].append(time.perf_counter() - start)
        if rounds >= spec["rounds"] and all(sum(t) >= spec["seconds"] for t in samples.values()):
            break
    for name, times in samples.items():
        out[name].update(median_s=statistics.median(times), spread=iqr_spread(times),
                         rounds=len(times))
    # RedNet's speed-up over the ResNet of the same depth, and the fused RedNet's over the
    # unfused, round by round: the two ran back to back, so a slow spell of the shared host
    # slows both and leaves the ratio.
    for name in samples:
        twin = resnet_twin(name)
        if name.startswith("rednet") and twin in samples:
            ratios = [t / r for r, t in zip(samples[name], samples[twin])]
            out[name].update(speedup=statistics.median(ratios), speedup_spread=iqr_spread(ratios))
        unfused = name + "-unfused"
        if unfused in samples:
            ratios = [t / r for r, t in zip(samples[name], samples[unfused])]
            out[name].update(fused_speedup=statistics.median(ratios),
                             fused_speedup_spread=iqr_spread(ratios))
    return out


def saved_bytes(model: nn.Module, layout: str, batch: int = BATCH,
                size: int = 224) -> Dict[str, int]:
    """The memory one training forward saves for backward: the bytes of the distinct storages
    that autograd's saved-tensor hooks see, the parameters' apart (they exist whether saved or
    not). No timing: the hooks run in the forward."""
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    model = model.to(memory_format=fmt).train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    x = x.contiguous(memory_format=fmt)
    storages: Dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = max(storages.get(storage.data_ptr(), 0), storage.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = model(x)
    del y
    return {"activations": sum(n for p, n in storages.items() if p not in params),
            "parameters": sum(n for p, n in storages.items() if p in params)}


def saved_worker(spec: Dict) -> Dict:
    """saved_bytes of every model in spec["models"], in each layout."""
    torch.set_num_threads(spec["threads"])
    return {name: {layout: saved_bytes(build(name), layout) for layout in LAYOUTS}
            for name in spec["models"]}


def run_models(run_worker: Callable, models: List[str], variants: List[tuple], threads: int,
               rounds: int, seconds: float, step: Callable) -> Dict:
    """One models_worker per variant, then one saved_worker (the last step)."""
    rows = []
    for variant in variants:
        step("models " + " ".join(variant))
        rows.append({"variant": variant, "models": run_worker({
            "kind": "models", "variant": variant, "models": models, "threads": threads,
            "rounds": rounds, "seconds": seconds})})
    step("models saved for backward")
    saved = run_worker({"kind": "saved", "models": models, "threads": threads})
    return {"models": models, "threads": threads, "rounds": rounds, "seconds": seconds,
            "rows": rows, "saved": saved, "torch": torch.__version__}


def saved_total(entry: Dict[str, int]) -> int:
    return entry["activations"] + entry["parameters"]


def format_models(result: Dict) -> str:
    models = result["models"]
    header = (f"end to end: batch {BATCH}, 224x224, float32, CPU, {result['threads']} threads, "
              f"torch {result['torch']}; images/s (higher is better): the median of interleaved "
              f"rounds (every model once per round; at least {result['rounds']} rounds and "
              f"{result['seconds']:g} s of steps per model), ± the rounds' interquartile range "
              f"over the median")
    rednets = [m for m in models if m.startswith("rednet")]
    paired = [m for m in rednets if resnet_twin(m) in models]
    fused = [m for m in rednets if m + "-unfused" in models]
    width = max([16] + [len(m) + 5 for m in paired + fused])
    cols = f"{'mode':<9} {'backend':<7} {'layout':<13} | {'rounds':>6} | " + " ".join(
        f"{m:>16}" for m in models) + " | " + " ".join(
        f"{m + '/res':>{width}}" for m in paired) + " | " + " ".join(
        f"{m + '/unf':>{width}}" for m in fused) + " | peak MiB: " + " ".join(models) + (
        " | in our op: ") + " ".join(rednets)
    lines = [header, "", cols, "-" * len(cols)]
    for row in result["rows"]:
        r = row["models"]
        lines.append(
            f"{row['variant'][0]:<9} {row['variant'][1]:<7} {row['variant'][2]:<13} | "
            f"{r[models[0]]['rounds']:>6} | "
            + " ".join(f"{BATCH / r[m]['median_s']:>9.2f} ±{100 * r[m]['spread']:>4.1f}%"
                       for m in models) + " | "
            + " ".join(f"{r[m]['speedup']:>{width - 8}.2f}x ±{100 * r[m]['speedup_spread']:>4.1f}%"
                       for m in paired) + " | "
            + " ".join(f"{r[m]['fused_speedup']:>{width - 8}.2f}x "
                       f"±{100 * r[m]['fused_speedup_spread']:>4.1f}%" for m in fused) + " | "
            + " ".join(f"{r[m]['peak_bytes'] / 2 ** 20:.0f}" for m in models) + " | "
            + " ".join(f"{100 * r[m]['op_share']:.1f}%" for m in models if "op_share" in r[m]))
    first = {m: max(row["models"][m]["first_step_s"] for row in result["rows"]
                    if row["variant"][1] == "compile") for m in models
             if any(row["variant"][1] == "compile" for row in result["rows"])}
    if first:
        lines += ["", "first step under torch.compile, longest of the variants (compilation; "
                  "short where inductor's on-disk cache already holds the graphs): "
                  + ", ".join(f"{m} {s:.0f} s" for m, s in first.items())]
    lines += ["rednetN: the involution blocks run the fused op (kernel generated inside it); "
              "rednetN-unfused: span conv + op (fused=False)",
              "rednetN/res: RedNet-N's speed-up over ResNet-N, the median of the rounds' ratios "
              "(both ran back to back in each round), ± their interquartile range; "
              "rednetN/unf: the fused RedNet-N's over the unfused, the same way",
              "peak MiB: rise of the process's peak memory during one step, after warm-up; "
              "in our op: self time of the involution:: ops in one profiled step over its time"]
    saved = result.get("saved")
    if saved:
        lines += ["", "saved for backward by one training forward (batch 8, 224x224; the distinct "
                  "storages autograd's saved-tensor hooks see), MiB: activations + parameters "
                  "= total, and the total over ResNet's of the same depth", ""]
        for m in models:
            twin = resnet_twin(m) if m.startswith("rednet") else None
            lines.append(f"{m:<17} " + " | ".join(
                f"{layout:<13} {saved[m][layout]['activations'] / 2 ** 20:>6.0f} + "
                f"{saved[m][layout]['parameters'] / 2 ** 20:>4.0f} = "
                f"{saved_total(saved[m][layout]) / 2 ** 20:>6.0f}"
                + (f" {saved_total(saved[m][layout]) / saved_total(saved[twin][layout]):>5.2f}x"
                   if twin in saved else " " * 7) for layout in LAYOUTS))
    return "\n".join(lines)


# The project's targets for RedNet-50 against ResNet-50 (batch 8, 224x224, float32, CPU).
TARGET_SPEEDUP = 1.3
TARGET_SAVED_RATIO = 1.1


def model_checks(result: Dict) -> List[tuple]:
    """(target, measured, met): the fused RedNet-50's paired speed-up over ResNet-50 in eager
    inference and training, both layouts; under torch.compile no lower than eager's; the memory
    its training forward saves for backward against ResNet-50's."""
    if "rednet50" not in result["models"] or "resnet50" not in result["models"]:
        return []
    ratios = {tuple(row["variant"]): row["models"]["rednet50"]["speedup"]
              for row in result["rows"]}
    checks = []
    for mode in ("inference", "training"):
        for layout in LAYOUTS:
            eager = ratios.get((mode, "eager", layout))
            if eager is not None:
                checks.append((f"RedNet-50 over ResNet-50 >= {TARGET_SPEEDUP}x, eager {mode}, "
                               f"{layout}", f"{eager:.2f}x", eager >= TARGET_SPEEDUP))
            compiled = ratios.get((mode, "compile", layout))
            if compiled is not None and eager is not None:
                checks.append((f"RedNet-50 over ResNet-50 under torch.compile >= eager's, {mode}, "
                               f"{layout}", f"{compiled:.2f}x (eager {eager:.2f}x)",
                               compiled >= eager))
    saved = result.get("saved")
    if saved:
        total = {m: saved_total(saved[m]["contiguous"]) for m in saved}
        v = total["rednet50"] / total["resnet50"]
        unfused = (f"; unfused {total['rednet50-unfused'] / 2 ** 20:.0f} MiB, "
                   f"{total['rednet50-unfused'] / total['resnet50']:.2f}x"
                   if "rednet50-unfused" in total else "")
        checks.append((f"saved for backward by a RedNet-50 training forward <= "
                       f"{TARGET_SAVED_RATIO}x ResNet-50's",
                       f"{v:.2f}x ({total['rednet50'] / 2 ** 20:.0f} vs "
                       f"{total['resnet50'] / 2 ** 20:.0f} MiB{unfused})", v <= TARGET_SAVED_RATIO))
    return checks
