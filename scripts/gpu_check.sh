#!/usr/bin/env bash
# The whole GPU check in ONE call, its steps capped at 11 minutes together (an estimate of
# its length, not yet run on a GPU; GPU time comes in short, rare slots):
#
#   scripts/gpu_check.sh RESULTS_DIR            on a machine with a CUDA GPU
#   scripts/gpu_check.sh RESULTS_DIR --dry-run  the non-GPU parts on the CPU (run by `make
#                                                test`, so the script cannot rot between GPUs)
#
# Steps, each under its own time cap (seconds, override with the env variables named):
#   build       setup.py build_ext --inplace, FORCE_CUDA=1, MAX_JOBS=$(nproc), for the card's
#               own arch only                                      (GPU_CHECK_BUILD_S, 240)
#   tests       the CUDA tests (pytest -m cuda) and the CPU/CUDA bit-equality file
#                                                                  (GPU_CHECK_TEST_S, 150)
#   bench_ops   benchmarks/bench_ops.py --device cuda, host-sync counts included
#                                                                  (GPU_CHECK_OPS_S, 60)
#   bench_det   benchmarks/bench_detectors.py --device cuda at a size that fits
#                                                                  (GPU_CHECK_DET_S, 90)
#   study       `dynrcnn study`: baseline and DLA + DSL, one seed each, one run per GPU, on a
#               tiny synthetic set; needs pycocotools (skipped, and said, without it)
#                                                                  (GPU_CHECK_STUDY_S, 120)
# A failed or timed-out step is recorded and the later steps still run (get every number a
# rare slot can give). Everything lands in RESULTS_DIR, named after the card: logs, the
# benchmark JSON/Markdown, and summary.md (card, torch, commit, per-step status and time),
# ready to commit under benchmarks/results/. Exit status: 0 when every step passed, 1 else,
# 2 for bad usage or no GPU.
#
# The dry run uses a fake card name, skips the build (it uses the installed extension),
# collects the CUDA test selection without running it (there is no GPU), and runs both
# benchmarks on the CPU at --quick size.
set -uo pipefail

usage() { echo "usage: scripts/gpu_check.sh RESULTS_DIR [--dry-run]" >&2; exit 2; }
[ $# -ge 1 ] && [ $# -le 2 ] || usage
results=$1
dry=0
if [ $# -eq 2 ]; then [ "$2" = --dry-run ] || usage; dry=1; fi
case "$results" in -*) usage ;; esac

root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$results" || { echo "gpu_check: cannot create $results" >&2; exit 2; }
results=$(cd "$results" && pwd)
cd "$root" || exit 2
PY=${PYTHON:-python3}
export DYNRCNN_REQUIRE_EXTENSION=1
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"  # the in-place build, not an install

if [ "$dry" = 1 ]; then
  card="DRYRUN_Fake_Card"
  # the caps exist for the GPU's short slot; a dry run on a busy CI machine must not time out
  : "${GPU_CHECK_TEST_S:=900}" "${GPU_CHECK_OPS_S:=900}" "${GPU_CHECK_DET_S:=900}"
  : "${GPU_CHECK_STUDY_S:=900}"
  device=cpu
else
  card=$($PY -c "import torch; assert torch.cuda.is_available(); print(torch.cuda.get_device_name(0).replace(' ', '_'))" 2>/dev/null) \
    || { echo "gpu_check: torch sees no CUDA device (use --dry-run on a CPU machine)" >&2; exit 2; }
  device=cuda
fi
arch=$($PY -c "import torch; c = torch.cuda.get_device_capability(0); print(f'{c[0]}.{c[1]}')" 2>/dev/null || echo none)
torch_version=$($PY -c "import torch; print(torch.__version__)")
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
summary="$results/summary_$card.md"
status=0
rows=""
echo "gpu_check: card $card (sm $arch), torch $torch_version, commit $commit, results in $results"

# run_step NAME CAP_SECONDS COMMAND...: run under `timeout`, log to RESULTS_DIR, record a row
run_step() {
  local name=$1 cap=$2; shift 2
  local log="$results/${name}_$card.log" start rc verdict
  start=$(date +%s)
  echo "gpu_check: $name (cap ${cap}s) ..."
  timeout --kill-after=10 "$cap" "$@" > "$log" 2>&1
  rc=$?
  case $rc in
    0) verdict=ok ;;
    124|137) verdict="TIMED OUT after ${cap}s" ;;
    *) verdict="FAILED (exit $rc)" ;;
  esac
  [ "$rc" -eq 0 ] || status=1
  local took=$(( $(date +%s) - start ))
  echo "gpu_check: $name $verdict in ${took}s"
  [ "$rc" -eq 0 ] || tail -20 "$log"
  rows+="| $name | $verdict | ${took} | \`$*\` |"$'\n'
}

skip_step() {
  echo "gpu_check: $1 skipped ($2)"
  rows+="| $1 | skipped: $2 | 0 | |"$'\n'
}

if [ "$dry" = 1 ]; then
  skip_step build "dry run: uses the installed extension"
else
  run_step build "${GPU_CHECK_BUILD_S:-240}" env FORCE_CUDA=1 MAX_JOBS="$(nproc)" \
    TORCH_CUDA_ARCH_LIST="$arch" "$PY" setup.py build_ext --inplace
fi

# collection errors (e.g. no pycocotools on the GPU machine) must not stop the CUDA tests
tests=(tests -m "cuda and not slow" -q -p no:cacheprovider --continue-on-collection-errors)
if [ "$dry" = 1 ]; then
  # no GPU: check that the selection exists and collects (it would all skip here)
  run_step tests "${GPU_CHECK_TEST_S:-150}" "$PY" -m pytest "${tests[@]}" --collect-only
else
  run_step tests "${GPU_CHECK_TEST_S:-150}" "$PY" -m pytest "${tests[@]}" -x \
    --junitxml="$results/tests_$card.xml"
fi

quick=()
[ "$dry" = 1 ] && quick=(--quick --threads 1)
run_step bench_ops "${GPU_CHECK_OPS_S:-60}" "$PY" benchmarks/bench_ops.py --device "$device" \
  "${quick[@]}" --json "$results/ops_${device}_$card.json" \
  --markdown "$results/ops_${device}_$card.md"
if [ "$dry" = 1 ]; then
  det=(--quick --size 96 --no-masks --threads 1 --warmup 0)
else
  det=(--reps 20 --warmup 3)
fi
run_step bench_det "${GPU_CHECK_DET_S:-90}" "$PY" benchmarks/bench_detectors.py \
  --device "$device" "${det[@]}" --json "$results/detectors_${device}_$card.json" \
  --markdown "$results/detectors_${device}_$card.md"

# a 2-run study on the card (on the CPU in the dry run): the GPU path of `dynrcnn study`
if "$PY" -c "import pycocotools" 2>/dev/null; then
  run_step study "${GPU_CHECK_STUDY_S:-120}" bash -c "
    '$PY' -m dynrcnn make-synthetic --out '$results/study_data_$card' --num-train 16 \
      --num-val 8 --image-size 128 128 &&
    '$PY' -m dynrcnn study --data-dir '$results/study_data_$card' --arms baseline dla_dsl \
      --seeds 1 --backbone tiny_fpn --iterations 20 --min-size 128 --max-size 128 \
      --batch-size 2 --num-workers 0 --out-dir '$results/study_$card'"
else
  skip_step study "no pycocotools here (the evaluator needs it)"
fi

{
  echo "# GPU check: $card"
  echo
  echo "- card: $card (compute capability $arch)$([ "$dry" = 1 ] && echo ', DRY RUN on the CPU: no GPU numbers')"
  echo "- torch: $torch_version; commit: $commit; date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "- command: scripts/gpu_check.sh $* (results in this folder)"
  echo
  echo "| step | result | seconds | command |"
  echo "|---|---|---:|---|"
  printf "%s" "$rows"
} > "$summary"
echo "gpu_check: summary in $summary"
exit "$status"
