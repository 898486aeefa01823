"""The measuring side of the op benchmark: shapes, inputs, the implementations compared, and the
worker functions that time them (each called in a fresh process by run.py).

Implementations of one 2-D involution, all on the same inputs:

- ``ours``: ``torch.ops.involution.involution2d``;
- ``unfold``: the pure-PyTorch unfold formulation (``involution.reference``), run eagerly;
- ``compiled``: the same function under ``torch.compile`` (inductor, static shapes);
- ``deform_conv2d``: torchvision's deformable convolution with zero offsets, an all-ones
  depthwise weight ``(C, 1, KH, KW)``, ``mask`` = the involution kernel viewed as
  ``(B, G*KH*KW, OH, OW)`` and G offset groups, which computes involution exactly. It needs
  torchvision, whose wheels are built against the CUDA build of torch: the worker may run in
  another interpreter (run.py's --torchvision-python), so the workers take their inputs from a
  file the parent writes, with our op's output to compare against, and never import involution.

And the kernel generated inside the op (DESIGN.md §5), on RedNet's inputs of the kernel branch,
``reduced`` (B, R, OH, OW) with R = C/4, ``span_weight`` (G*KH*KW, R, 1, 1) and ``span_bias``:

- ``span+op``: the span 1x1 conv then our op (``conv2d`` + ``involution2d``, unfused);
- ``fused``: ``torch.ops.involution.fused_involution2d``, which never stores the kernel.

Both run in one worker (fused_worker), interleaved round by round, so their ratio is fair.
"""

import ctypes
import os
import resource
import statistics
import time
from typing import Callable, Dict, List, NamedTuple, Optional

import torch

PASSES = ("forward", "backward", "forward+backward")
COMPARED_PASSES = ("forward", "forward+backward")
IMPLEMENTATIONS = ("ours", "unfold", "compiled", "deform_conv2d")
FUSED_IMPLEMENTATIONS = ("span+op", "fused")


class Shape(NamedTuple):
    name: str
    channels: int
    size: int
    groups: int
    kernel: int = 7
    stride: int = 1

    @property
    def padding(self) -> int:
        return (self.kernel - 1) // 2

    @property
    def out(self) -> int:
        from involution.reference import output_size

        return output_size(self.size, self.kernel, self.stride, self.padding)

    @property
    def reduced(self) -> int:
        """Channels of the kernel branch's reduced tensor in RedNet (C/4; the stem's 8)."""
        return self.channels // 4


# RedNet-50 at 224x224 (DESIGN.md §5): 16 channels per group, K = 7, "same" padding.
REDNET50_SHAPES = [
    Shape("stem", 32, 112, 2, kernel=3),
    Shape("stage1", 64, 56, 4),
    Shape("stage2", 128, 28, 8),
    Shape("stage2-s2", 128, 56, 8, stride=2),
    Shape("stage3", 256, 14, 16),
    Shape("stage3-s2", 256, 28, 16, stride=2),
    Shape("stage4", 512, 7, 32),
    Shape("stage4-s2", 512, 14, 32, stride=2),
]


def make_inputs(shape: Shape, batch: int, dtype, device):
    gen = torch.Generator().manual_seed(0)
    k, o = shape.kernel, shape.out
    x = torch.randn(batch, shape.channels, shape.size, shape.size, generator=gen)
    w = torch.randn(batch, shape.groups, k, k, o, o, generator=gen)
    gy = torch.randn(batch, shape.channels, o, o, generator=gen)
    params = ([shape.stride] * 2, [shape.padding] * 2, [1, 1])
    return x.to(device, dtype), w.to(device, dtype), gy.to(device, dtype), params


def make_fused_inputs(shape: Shape, batch: int, dtype, device):
    """x, reduced, span_weight, span_bias, grad_output and the op's arguments (kernel_size,
    stride, padding, dilation) of one RedNet involution layer whose kernel is generated."""
    gen = torch.Generator().manual_seed(0)
    k, o, r = shape.kernel, shape.out, shape.reduced
    x = torch.randn(batch, shape.channels, shape.size, shape.size, generator=gen)
    reduced = torch.randn(batch, r, o, o, generator=gen).relu()  # after the branch's ReLU
    span_weight = torch.randn(shape.groups * k * k, r, 1, 1, generator=gen) / r ** 0.5
    span_bias = 0.1 * torch.randn(shape.groups * k * k, generator=gen)
    gy = torch.randn(batch, shape.channels, o, o, generator=gen)
    tensors = [t.to(device, dtype) for t in (x, reduced, span_weight, span_bias, gy)]
    params = ([k, k], [shape.stride] * 2, [shape.padding] * 2, [1, 1])
    return tensors, params


def span_conv_involution(x, reduced, span_weight, span_bias, kernel_size, stride, padding,
                         dilation):
    """The unfused layer: the span 1x1 conv writes the kernel (B, G*KH*KW, OH, OW), our op reads
    it as (B, G, KH, KW, OH, OW)."""
    import involution  # noqa: F401  (loads the op library)

    kh, kw = kernel_size
    w = torch.nn.functional.conv2d(reduced, span_weight, span_bias)
    b, _, oh, ow = w.shape
    w = w.view(b, span_weight.shape[0] // (kh * kw), kh, kw, oh, ow)
    return torch.ops.involution.involution2d(x, w, stride, padding, dilation)


def fused_implementation(name: str) -> Callable:
    if name == "fused":
        import involution  # noqa: F401  (loads the op library)

        return torch.ops.involution.fused_involution2d
    return span_conv_involution


def deform_conv2d_involution(x, w, stride, padding, dilation):
    """Involution through torchvision.ops.deform_conv2d (exact: zero offsets sample every tap at
    its integer position, the all-ones depthwise weight passes it through, the mask weighs it)."""
    from torchvision.ops import deform_conv2d

    b, c = x.shape[:2]
    _, g, kh, kw, oh, ow = w.shape
    ones = torch.ones(c, 1, kh, kw, dtype=x.dtype, device=x.device)
    offset = torch.zeros(b, 2 * g * kh * kw, oh, ow, dtype=x.dtype, device=x.device)
    return deform_conv2d(x, offset, ones, None, tuple(stride), tuple(padding), tuple(dilation),
                         mask=w.reshape(b, g * kh * kw, oh, ow))


def implementation(name: str) -> Callable:
    if name == "ours":
        import involution  # noqa: F401  (loads the op library)

        return torch.ops.involution.involution2d
    if name == "deform_conv2d":
        return deform_conv2d_involution
    from involution.reference import involution2d_unfold

    if name == "compiled":
        # The backward pass is timed on a retained graph, which donated buffers forbid.
        from torch._functorch import config as functorch_config

        functorch_config.donated_buffer = False
        return torch.compile(involution2d_unfold, dynamic=False)
    return involution2d_unfold


def pass_bytes_and_macs(shape: Shape, batch: int, element_size: int) -> Dict[str, tuple]:
    x = batch * shape.channels * shape.size ** 2
    w = batch * shape.groups * shape.kernel ** 2 * shape.out ** 2
    y = batch * shape.channels * shape.out ** 2
    macs = y * shape.kernel ** 2
    forward = ((x + w + y) * element_size, macs)
    backward = ((y + x + w + x + w) * element_size, 2 * macs)
    return {"forward": forward, "backward": backward,
            "forward+backward": (forward[0] + backward[0], 3 * macs)}


# ------------------------------------------------------------------------------- memory


def current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_rise(fn: Callable, device: torch.device) -> int:
    """Bytes by which fn raises the peak memory: the allocator's peak on CUDA; on the CPU the
    process's peak RSS, after handing freed heap memory back to the system (malloc_trim) so that
    blocks kept from earlier passes (compilation, warm-up) do not hide the rise."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:  # resets the kernel's high-water mark of the RSS (Linux >= 4.0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError as e:
        raise RuntimeError("cannot reset the peak RSS (/proc/self/clear_refs)") from e
    base = current_rss()
    fn()
    return max(0, peak_rss() - base)


# ------------------------------------------------------------------------------- timing


def synchronizer(device: torch.device) -> Callable:
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def wake_thread_pool(device: torch.device, threads: int) -> None:
    """Runs a small parallel op on `threads` threads, so that the pool's threads, asleep after a
    stretch on fewer threads, are awake when the timed pass starts (as after the ops before it
    in a network). One at::parallel_for grain (32768 elements) per thread: 128 KiB each."""
    if device.type == "cpu":
        torch.zeros(threads * 32768).add_(1)


# glibc's posix_memalign (torch's CPU allocator asks for 64-byte alignment) takes the block plus
# the alignment's slack from its heap and hands the unused tail back as a small free chunk. That
# chunk goes into the thread's tcache, which keeps it marked in use, so the block, once freed,
# cannot merge with its neighbours, and the next request of the same size (block + slack) does
# not fit the hole it left: the heap grows by one block, whose pages are written for the first
# time (page faults: about 1 ms per 3 MiB on the benchmark machine). This goes on until the
# tcache's bin for the tail's size is full (7 chunks): a loop that allocates and frees one size
# grows the heap on each of its first 9 allocations, then reuses it. A network's steady state
# does not pay this; a benchmark that timed 5 runs of each pass in turn after one warm-up run
# did, in whichever pass came first, and the heap's growth shows no steady pattern from round to
# round. It made the backward of our op read slower than its forward+backward. So before the
# timed rounds the workers grow the heap by HEAP_RESERVE of written memory and free it at once
# (reserve_heap): growth then reuses pages already written, as in a process that has run for a
# while; blocks above the mmap threshold (32 MiB in the workers) still come fresh at every call.
HEAP_RESERVE = 512 * 2 ** 20
MAX_WARMUP_ROUNDS = 30


def reserve_heap(nbytes: int = HEAP_RESERVE) -> None:
    """Takes nbytes from the C heap in 256 KiB blocks (small enough to fill the holes in a heap
    that malloc_trim handed back, as peak_rise does; below the workers' mmap threshold), writes
    them and frees them: the heap keeps the written pages (the workers' trim threshold is 1 TiB)
    for the blocks that later passes take. Where the heap would hand them back anyway (glibc's
    defaults), it costs the writing and changes nothing."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    block = 256 * 2 ** 10
    blocks = []
    for _ in range(nbytes // block):
        pointer = libc.malloc(block)
        if not pointer:
            break
        ctypes.memset(pointer, 0, block)
        blocks.append(pointer)
    for pointer in reversed(blocks):
        libc.free(pointer)


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


_MALLINFO2 = []


def heap_bytes() -> Optional[int]:
    """Bytes that the C heap of every arena holds from the system (glibc's mallinfo2().arena;
    blocks mmapped on their own, above the mmap threshold, are not counted), None without glibc
    2.33 or later."""
    if not _MALLINFO2:
        try:
            fn = ctypes.CDLL("libc.so.6").mallinfo2
            fn.restype = _Mallinfo2
            _MALLINFO2.append(fn)
        except (OSError, AttributeError):
            _MALLINFO2.append(None)
    return _MALLINFO2[0]().arena if _MALLINFO2[0] is not None else None


def minor_faults() -> int:
    """Page faults of this process so far (every thread) served without I/O: first touches of
    fresh memory."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def interleaved_rounds(device: torch.device, runs: List[tuple], spec: Dict,
                       stats: Optional[Dict] = None,
                       heap: Callable[[], Optional[int]] = heap_bytes) -> List[Dict]:
    """Times runs [(threads, {kind: fn})] in interleaved rounds: every round runs each run's
    functions once, each after a small op wakes the thread pool, so the shared machine's drift
    touches all of them alike, and none pays for the state another left (as whole passes in a
    fixed order did: see HEAP_RESERVE). Returns, per run, the median seconds of each
    kind over spec["repeats"] rounds; after 3, the rounds stop once one function has taken
    spec["budget_s"] in all (deform_conv2d's backward takes seconds).

    Warm-up: one round, then on the CPU reserve_heap(spec.get("heap_reserve", HEAP_RESERVE)),
    then rounds until there have been spec["warmup"] and one neither grew the C heap (`heap`)
    nor page-faulted more than the round before, at most MAX_WARMUP_ROUNDS or, past
    spec["warmup"], spec["budget_s"] of warm-up. `stats`, where given, receives
    "warmup_rounds", "rounds" and "faults": per run and kind, the most page faults of one timed
    call (0 once the heap is steady; blocks above the mmap threshold fault at every call)."""
    sync = synchronizer(device)
    budget = spec.get("budget_s", float("inf"))

    def one_round(samples=None, faults=None):
        for i, (threads, fns) in enumerate(runs):
            torch.set_num_threads(threads)
            for kind, fn in fns.items():
                wake_thread_pool(device, threads)
                sync()
                before = minor_faults()
                start = time.perf_counter()
                fn()
                sync()
                elapsed = time.perf_counter() - start
                if samples is not None:
                    samples[i][kind].append(elapsed)
                    faults[i][kind].append(minor_faults() - before)

    warmup, warm_start, last_faults = 0, time.perf_counter(), None
    steady_check = device.type == "cpu" and heap() is not None
    while True:
        heap_before, faults_before = (heap() if steady_check else None), minor_faults()
        one_round()
        warmup += 1
        faults = minor_faults() - faults_before
        if warmup == 1 and device.type == "cpu":  # after a first round, which may compile
            reserve_heap(spec.get("heap_reserve", HEAP_RESERVE))
            heap_before = heap() if steady_check else None
        steady = not steady_check or (heap() == heap_before and last_faults is not None
                                      and faults <= last_faults)
        last_faults = faults
        if warmup >= spec["warmup"] and (steady or warmup >= MAX_WARMUP_ROUNDS
                                         or time.perf_counter() - warm_start > budget):
            break
    samples = [{kind: [] for kind in fns} for _, fns in runs]
    faults = [{kind: [] for kind in fns} for _, fns in runs]
    while len(samples[0][next(iter(samples[0]))]) < spec["repeats"]:
        one_round(samples, faults)
        if len(samples[0][next(iter(samples[0]))]) >= 3 and any(
                sum(v) > budget for s in samples for v in s.values()):
            break
    if stats is not None:
        stats.update(warmup_rounds=warmup, rounds=len(samples[0][next(iter(samples[0]))]),
                     faults=[{k: max(v) for k, v in f.items()} for f in faults])
    return [{kind: statistics.median(v) for kind, v in s.items()} for s in samples]


def op_worker(spec: Dict) -> Dict:
    """One implementation on one shape: the peak memory rise of one forward+backward, then the
    medians of forward, backward (both gradients, on a retained graph) and forward+backward,
    timed in interleaved rounds after the heap is steady, and the max |difference| of its output
    to our op's. Inputs and our output come from the file spec["inputs"]."""
    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    impl = implementation(spec["impl"])
    data = torch.load(spec["inputs"])
    x, w, gy = (data[k].to(device) for k in ("x", "w", "gy"))
    params = spec["params"]
    x.requires_grad_()
    w.requires_grad_()

    def forward():
        with torch.no_grad():
            return impl(x, w, *params)

    def forward_backward():
        torch.autograd.grad(impl(x, w, *params), (x, w), gy)

    # Warm up at full size (this compiles the compiled peer); peak_rise then hands the freed
    # memory back, so the rise is the pass's own, not first-use costs of the thread pool.
    forward()
    forward_backward()
    peak = peak_rise(forward_backward, device)
    diff = (forward().double().cpu() - data["y"].double()).abs().max().item()

    y = impl(x, w, *params)

    def backward():
        torch.autograd.grad(y, (x, w), gy, retain_graph=True)

    stats: Dict = {}
    times = interleaved_rounds(device, [(spec["threads"], dict(zip(
        PASSES, (forward, backward, forward_backward))))], spec, stats)[0]
    return {"times": times, "peak_bytes": peak, "max_abs_diff": diff,
            "faults": stats["faults"][0], "warmup_rounds": stats["warmup_rounds"],
            "rounds": stats["rounds"]}


def fused_worker(spec: Dict) -> Dict:
    """The fused op and the span conv + op on one shape, in one process: each one's peak memory
    rise over one forward+backward, then forward, backward (the gradients of all four inputs, on
    a retained graph) and forward+backward of both in interleaved rounds, as op_worker times
    them; and the max |fused - span+op| of the forward."""
    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    shape = Shape(**spec["shape"])
    tensors, params = make_fused_inputs(shape, spec["batch"], getattr(torch, spec["dtype"]),
                                        device)
    *inputs, gy = tensors
    for t in inputs:
        t.requires_grad_()
    out: Dict = {"times": {}, "peak_bytes": {}, "faults": {}}
    runs, outputs = [], {}
    for name in FUSED_IMPLEMENTATIONS:
        impl = fused_implementation(name)

        def forward(impl=impl):
            with torch.no_grad():
                return impl(*inputs, *params)

        def forward_backward(impl=impl):
            torch.autograd.grad(impl(*inputs, *params), inputs, gy)

        forward()
        forward_backward()
        out["peak_bytes"][name] = peak_rise(forward_backward, device)
        outputs[name] = forward().double().cpu()
        y = impl(*inputs, *params)

        def backward(y=y):
            torch.autograd.grad(y, inputs, gy, retain_graph=True)

        runs.append((spec["threads"], dict(zip(PASSES, (forward, backward, forward_backward)))))
    stats: Dict = {}
    times = interleaved_rounds(device, runs, spec, stats)
    for i, name in enumerate(FUSED_IMPLEMENTATIONS):
        out["times"][name] = times[i]
        out["faults"][name] = stats["faults"][i]
    out.update(max_abs_diff=(outputs["fused"] - outputs["span+op"]).abs().max().item(),
               warmup_rounds=stats["warmup_rounds"], rounds=stats["rounds"])
    return out


def compare_worker(spec: Dict) -> Dict:
    """Our op under several (dtype, threads) configurations in one process, interleaved: every
    round runs each configuration once, so the shared machine's drift touches all of them alike
    and their ratios are fair. Returns the median seconds per configuration and pass."""
    device = torch.device(spec["device"])
    shape = Shape(**spec["shape"])
    op = implementation("ours")
    runs = []
    for dtype_name, threads in spec["configs"]:
        x, w, gy, params = make_inputs(shape, spec["batch"], getattr(torch, dtype_name), device)
        x.requires_grad_()
        w.requires_grad_()

        def forward(x=x, w=w, params=params):
            with torch.no_grad():
                op(x, w, *params)

        def forward_backward(x=x, w=w, gy=gy, params=params):
            torch.autograd.grad(op(x, w, *params), (x, w), gy)

        runs.append((threads, {"forward": forward, "forward+backward": forward_backward}))
    return {"times": interleaved_rounds(device, runs, spec)}


def machine_worker(spec: Dict) -> Dict:
    """The machine's own scaling with threads, as a reference for our op's: a float32 matrix
    multiply (compute-bound) and a 64 MiB copy (memory-bound) at each thread count, interleaved
    round by round. Returns median seconds per thread count."""
    device = torch.device(spec["device"])
    a = torch.randn(1024, 1024, device=device)
    src = torch.randn(16 * 2 ** 20, device=device)
    dst = torch.empty_like(src)
    work = {"matmul": lambda: a @ a, "copy": lambda: dst.copy_(src)}
    times = interleaved_rounds(device, [(t, work) for t in spec["threads"]], spec)
    return {"times": {str(t): per for t, per in zip(spec["threads"], times)}}


def machine_rates(device: torch.device, threads: int) -> Dict[str, float]:
    """Copy bandwidth (bytes read + written per second) and matrix-multiply rate (multiply-adds
    per second), measured with the benchmark's thread count."""
    torch.set_num_threads(threads)
    sync = synchronizer(device)

    def best(fn, n=10):
        fn()
        sync()
        out = []
        for _ in range(n):
            start = time.perf_counter()
            fn()
            sync()
            out.append(time.perf_counter() - start)
        return min(out)

    src = torch.randn(64 * 2 ** 20 // 4, device=device)  # 64 MiB, beyond the caches
    dst = torch.empty_like(src)
    bandwidth = 2 * src.numel() * 4 / best(lambda: dst.copy_(src))
    n = 2048 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device)
    macs = n ** 3 / best(lambda: a @ a)
    return {"copy_bytes_per_s": bandwidth, "matmul_macs_per_s": macs}
