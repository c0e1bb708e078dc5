#!/usr/bin/env bash
# On a machine with a GPU: build (CPU + CUDA kernels) with the machine's own python3/torch,
# run the test suite (CUDA cases included), then the benchmarks, writing their outputs
# (named after the card) under benchmarks/results/ and, when set, into $OUT.
#
#   scripts/gpu_check.sh          all steps in one call
#   scripts/gpu_check.sh build    one step per call, where a call has a time limit (the
#   scripts/gpu_check.sh test     device tool's 10 minutes): the build stays in place
#   scripts/gpu_check.sh bench    between calls on a warm machine
#
# A failing step is reported and the later steps still run (one GPU session is rare: get
# every number it can give); the exit status is the first failure's.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
step=${1:-all}
status=0
logs=${OUT:-/tmp}
card=$($PY -c "import torch; print(torch.cuda.get_device_name(0).replace(' ', '_'))") \
  || { echo "gpu_check: torch sees no CUDA device"; exit 2; }
echo "gpu_check: $card, torch $($PY -c 'import torch; print(torch.__version__)')"
export DYNRCNN_REQUIRE_EXTENSION=1

fail() {  # remember the first failure, go on
  echo "gpu_check: $1 FAILED"
  [ "$status" -ne 0 ] || status=1
}

if [ "$step" = all ] || [ "$step" = build ]; then
  FORCE_CUDA=1 MAX_JOBS=${MAX_JOBS:-16} $PY setup.py build_ext --inplace > "$logs/gpu_build.log" 2>&1 \
    || { tail -50 "$logs/gpu_build.log"; echo "gpu_check: build FAILED"; exit 1; }
  echo "gpu_check: build ok"
fi

if [ "$step" = all ] || [ "$step" = test ]; then
  # pycocotools may be missing there: the tests needing it skip or fail visibly.
  $PY -m pytest -q tests -k "not torchrun" -p no:cacheprovider > "$logs/gpu_tests.log" 2>&1 \
    || fail "tests"
  tail -30 "$logs/gpu_tests.log"
fi

if [ "$step" = all ] || [ "$step" = bench ]; then
  results=benchmarks/results
  $PY benchmarks/bench_ops.py --device cuda --json "$results/ops_cuda_$card.json" \
    --markdown "$results/ops_cuda_$card.md" || fail "op benchmark"
  $PY benchmarks/bench_detectors.py --device cuda --json "$results/detectors_cuda_$card.json" \
    --markdown "$results/detectors_cuda_$card.md" || fail "detector benchmark"
  if [ -n "${OUT:-}" ]; then cp "$results"/*cuda* "$OUT"/ 2>/dev/null || true; fi
fi
exit "$status"
