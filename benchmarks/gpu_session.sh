#!/usr/bin/env bash
# Everything a session lent a GPU should prove, in one call of the device tool (about 10 min):
#   build for that GPU, the whole test suite, compute-sanitizer (memcheck, racecheck) over the
#   CUDA tests, and the CUDA benchmark (batch 64, RedNet-50 shapes) as a results page.
# Run from the repository root: `bash benchmarks/gpu_session.sh`; logs and results land in $OUT
# (the device tool's output folder), or build/gpu-session elsewhere. Copy RESULTS-cuda.md into
# benchmarks/ and quote it in the closing note.
set -uo pipefail
OUT=${OUT:-build/gpu-session}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 FORCE_CUDA=1 MAX_JOBS=${MAX_JOBS:-16}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
PY=${PYTHON:-python3}

nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
echo "== build" && $PY -m pip install --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1 \
  || { tail -40 "$OUT/build.log"; exit 1; }
echo "== tests" && $PY -m pytest -q -p no:warnings -rs tests > "$OUT/pytest.log" 2>&1
tail -15 "$OUT/pytest.log"
SANITIZER=$(command -v compute-sanitizer || echo "$CUDA_HOME/bin/compute-sanitizer")
for tool in memcheck racecheck; do
  echo "== compute-sanitizer --tool $tool"
  "$SANITIZER" --tool "$tool" --error-exitcode 1 $PY -m pytest -q -p no:warnings -x \
    tests/test_cuda.py -k "not compiled" > "$OUT/sanitizer-$tool.log" 2>&1
  echo "exit $?"; tail -5 "$OUT/sanitizer-$tool.log"
done
echo "== benchmark" && $PY -m involution.benchmark --device cuda --dtype float32,float16,bfloat16 \
  --markdown "$OUT/RESULTS-cuda.md" --json "$OUT/results-cuda.json" 2> "$OUT/bench.err"
tail -5 "$OUT/bench.err"
