"""The deployment cost (run.py --onnxruntime): our op's forward against the same op exported
with involution.onnx and run in onnxruntime's CPU provider."""

import statistics
import time
from typing import Dict

import torch

from measure import Shape, implementation, make_inputs, wake_thread_pool

# --onnxruntime: the deployment cost. The op exported with involution.onnx at two opsets: 20 (the
# exporter's default) gives one DeformConv node, 18 the decomposition (Pad, then Slice, Mul, Add
# per tap) that 3-D involution and opsets below 19 get.
ONNXRUNTIME_VARIANTS = (("DeformConv", 20), ("decomposed", 18))


def onnxruntime_worker(spec: Dict) -> Dict:
    """Our op's forward and the same op exported with involution.onnx and run in onnxruntime's
    CPU provider, on the same float32 inputs and thread count, interleaved round by round.
    onnxruntime's idle threads sleep instead of spinning, so that they do not take the cores
    from the torch pass that follows. Returns median seconds and the max |difference| to ours."""
    import onnxruntime

    import involution.onnx

    threads = spec["threads"]
    torch.set_num_threads(threads)
    device = torch.device("cpu")
    x, w, _, params = make_inputs(Shape(**spec["shape"]), spec["batch"], torch.float32, device)
    op = implementation("ours")

    class Op(torch.nn.Module):
        def forward(self, x, w):
            return op(x, w, *params)

    expected = op(x, w, *params).numpy()
    feeds = {"input": x.numpy(), "weight": w.numpy()}
    runs, diffs = {"ours": lambda: op(x, w, *params)}, {}
    for name, opset in ONNXRUNTIME_VARIANTS:
        program = involution.onnx.export(Op(), (x, w), opset_version=opset, verbose=False,
                                         input_names=["input", "weight"])
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = onnxruntime.InferenceSession(program.model_proto.SerializeToString(), options,
                                               providers=["CPUExecutionProvider"])
        diffs[name] = float(abs(session.run(None, feeds)[0] - expected).max())
        runs[name] = lambda session=session: session.run(None, feeds)
    samples = {name: [] for name in runs}
    for round_index in range(spec["warmup"] + spec["repeats"]):
        for name, fn in runs.items():
            wake_thread_pool(device, threads)
            start = time.perf_counter()
            fn()
            if round_index >= spec["warmup"]:
                samples[name].append(time.perf_counter() - start)
    return {"times": {name: statistics.median(v) for name, v in samples.items()},
            "max_abs_diff": diffs}


def format_onnxruntime(result: Dict) -> str:
    names = [name for name, _ in ONNXRUNTIME_VARIANTS]
    header = (f"deployment: our op against the op exported with involution.onnx, in onnxruntime "
              f"(CPU provider; DeformConv: opset 20, decomposed: opset 18), forward, float32, "
              f"batch {result['batch']}, interleaved; ms, medians of {result['rounds']} rounds")
    cols = (f"{'shape':<10} {'thr':>3} | {'ours ms':>8} "
            + " ".join(f"{'ort ' + n + ' ms':>20}" for n in names) + " | "
            + " ".join(f"{n + ' / ours':>17}" for n in names) + " | max |ort - ours|")
    lines = [header, "", cols, "-" * len(cols)]
    for threads in dict.fromkeys(r["threads"] for r in result["rows"]):
        rows = [r for r in result["rows"] if r["threads"] == threads]
        for r in rows + [None]:
            times = ({k: sum(x["times"][k] for x in rows) for k in ["ours"] + names}
                     if r is None else r["times"])
            label = "total" if r is None else r["shape"]["name"]
            diff = "" if r is None else ", ".join(f"{r['max_abs_diff'][n]:.1e}" for n in names)
            lines.append(f"{label:<10} {threads:>3} | {times['ours'] * 1e3:>8.2f} "
                         + " ".join(f"{times[n] * 1e3:>20.2f}" for n in names) + " | "
                         + " ".join(f"{times[n] / times['ours']:>16.1f}x" for n in names)
                         + f" | {diff}")
    return "\n".join(lines)
