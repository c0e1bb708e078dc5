#!/usr/bin/env bash
# One call on a machine with a GPU: build (CPU + CUDA kernels) with the machine's own
# python3/torch, run the test suite (CUDA cases included), then the benchmarks, writing
# their outputs (named after the card) under benchmarks/results/ and, when set, into $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
card=$($PY -c "import torch; print(torch.cuda.get_device_name(0).replace(' ', '_'))")
echo "gpu_check: $card, torch $($PY -c 'import torch; print(torch.__version__)')"
FORCE_CUDA=1 MAX_JOBS=${MAX_JOBS:-8} $PY setup.py build_ext --inplace > /tmp/gpu_build.log 2>&1 \
  || { tail -50 /tmp/gpu_build.log; exit 1; }
export DYNRCNN_REQUIRE_EXTENSION=1
# pycocotools may be missing there: the tests needing it skip or fail visibly.
$PY -m pytest -q -x tests -k "not torchrun" 2>&1 | tail -30
results=benchmarks/results
$PY benchmarks/bench_ops.py --device cuda --json "$results/ops_cuda_$card.json" \
  --markdown "$results/ops_cuda_$card.md"
$PY benchmarks/bench_detectors.py --device cuda --json "$results/detectors_cuda_$card.json" \
  --markdown "$results/detectors_cuda_$card.md" || echo "gpu_check: detector benchmark failed"
if [ -n "${OUT:-}" ]; then cp "$results"/*cuda* "$OUT"/; fi
