// CUDA kernel of dynrcnn::dynamic_match: matching of proposals to the ground truth of their
// own image plus the two Dynamic R-CNN statistics, in ONE kernel launch (plus the zero fill
// of a 4-byte counter). No host synchronization.
//
// Phase 1 (all blocks, grid-stride over the N proposals): each thread finds the image of its
// proposal by a binary search over proposal_splits, takes the best IoU over that image's
// ground truth (ties to the lowest index), writes matched_idxs / max_iou / labels, and two
// 32-bit keys into a workspace: the IoU key (proposal in the IoU population) and the error
// key (foreground with a finite regression error), or kNotInPopulation.
//
// Phase 2 (the last block to finish, found with the threadFenceReduction counter pattern):
// for each scope (the whole batch, or each image with per_image) a radix select finds the
// k-th smallest key of each population: 4 passes of 8 bits, a 256-bin shared histogram per
// population, both populations handled in the same passes. Keys are order-preserving maps of
// the float values (the IoU key is inverted, so its k-th smallest is the k-th largest IoU),
// so the selected key converts back to the exact float32 value a sort would give.
//
// Bad split offsets (values are never read on the host) are tolerated: every offset is
// clamped into range, so they give wrong numbers but never out-of-bounds accesses.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <tuple>
#include <vector>

#include "ops/box_math.h"
#include "ops/checks.h"
#include "ops/cuda/scalar_load.cuh"

namespace dynrcnn {
namespace ops {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kBins = 256;  // radix select digit: 8 bits
static_assert(kThreads == kBins, "the radix select scans one histogram bin per thread");
// Blocks per SM used to cap the grid of the grid-stride loop.
constexpr int64_t kBlocksPerSM = 4;
// proposal_splits with at most this many offsets are staged in shared memory.
constexpr int64_t kSharedSplits = 128;
// Key of a proposal outside a population. No real key takes this value: it would be the key
// of a NaN, and neither population holds NaN (max_iou is never NaN, errors must be finite).
constexpr uint32_t kNotInPopulation = 0xFFFFFFFFu;

// Monotone map float -> uint32: a < b (as floats, -0 < +0) iff key(a) < key(b).
__device__ __forceinline__ uint32_t ordered_key(float v) {
  const uint32_t u = __float_as_uint(v);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ float key_to_float(uint32_t key) {
  const uint32_t u = (key & 0x80000000u) ? (key & 0x7FFFFFFFu) : ~key;
  return __uint_as_float(u);
}

__device__ __forceinline__ int64_t clamp_offset(int64_t v, int64_t hi) {
  return v < 0 ? 0 : (v > hi ? hi : v);
}

// Adds 1 to hist[bin] for every lane with `active`. Must be called by all 32 lanes of the
// warp. Lanes with the same bin are combined into one shared atomic: in the first pass most
// IoUs share one bin (same exponent), which would otherwise serialize 32-way.
__device__ __forceinline__ void histogram_add(unsigned int* hist, unsigned int bin, bool active) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 700
  const unsigned int active_mask = __ballot_sync(0xFFFFFFFFu, active);
  if (active) {
    const unsigned int peers = __match_any_sync(active_mask, bin);
    if (static_cast<int>(threadIdx.x & 31) == __ffs(peers) - 1) {
      atomicAdd(&hist[bin], static_cast<unsigned int>(__popc(peers)));
    }
  }
#else
  if (active) {
    atomicAdd(&hist[bin], 1u);
  }
#endif
}

__device__ __forceinline__ unsigned int warp_inclusive_scan(unsigned int v) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int offset = 1; offset < 32; offset <<= 1) {
    const unsigned int other = __shfl_up_sync(0xFFFFFFFFu, v, offset);
    if (lane >= offset) v += other;
  }
  return v;
}

struct SelectShared {
  unsigned int hist[2][kBins];  // all zero between selections
  unsigned int warp_sums[2][kWarps];
  unsigned int digit[2];
  unsigned int rank[2];
};

// k-th smallest key (k clamped to the population size) of keys0[r0:r1] and of keys1[r0:r1],
// ignoring kNotInPopulation. Called by all threads of the block with the same arguments;
// the results (`key[s]`, `found[s]`: false for an empty population) are valid in every
// thread. `sm.hist` must be all zero on entry and is all zero again on exit.
__device__ void radix_select_pair(const uint32_t* keys0, const uint32_t* keys1, int64_t r0,
                                  int64_t r1, int64_t k0, int64_t k1, SelectShared& sm,
                                  uint32_t key[2], bool found[2]) {
  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int64_t k_wanted[2] = {k0, k1};
  uint32_t prefix[2] = {0u, 0u};
  // 1-based rank of the wanted key among the keys that match `prefix`; 0 = empty population.
  uint32_t rank[2] = {0u, 0u};

#pragma unroll 1
  for (int pass = 0; pass < 4; ++pass) {
    const int shift = 24 - 8 * pass;
    const uint32_t mask = pass == 0 ? 0u : (0xFFFFFFFFu << (shift + 8));
    // Histogram of the next digit of the keys that match the prefix found so far. The loop
    // bounds are block-uniform so that every lane reaches histogram_add's warp intrinsics.
    for (int64_t base = r0; base < r1; base += kThreads) {
      const int64_t i = base + tid;
      uint32_t a = kNotInPopulation, e = kNotInPopulation;
      if (i < r1) {
        // Written by other blocks: read from L2 (__ldcg), never from a stale L1 line.
        a = __ldcg(keys0 + i);
        e = __ldcg(keys1 + i);
      }
      histogram_add(sm.hist[0], (a >> shift) & 0xFFu,
                    a != kNotInPopulation && (a & mask) == prefix[0]);
      histogram_add(sm.hist[1], (e >> shift) & 0xFFu,
                    e != kNotInPopulation && (e & mask) == prefix[1]);
    }
    __syncthreads();

    // Block-wide inclusive scan of the 256 bins, thread t owning bin t. Each thread clears
    // its own bin right after reading it; nobody else touches the bin before the next pass.
    unsigned int count[2], incl[2];
#pragma unroll
    for (int s = 0; s < 2; ++s) {
      count[s] = sm.hist[s][tid];
      sm.hist[s][tid] = 0u;
      incl[s] = warp_inclusive_scan(count[s]);
      if (lane == 31) sm.warp_sums[s][warp] = incl[s];
    }
    __syncthreads();

#pragma unroll
    for (int s = 0; s < 2; ++s) {
      unsigned int offset = 0u, total = 0u;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        const unsigned int v = sm.warp_sums[s][w];
        if (w < warp) offset += v;
        total += v;
      }
      incl[s] += offset;
      const unsigned int excl = incl[s] - count[s];
      if (pass == 0) {
        // total = population size (block-uniform, so rank is too); k >= 1, hence
        // rank = min(k, total) is 0 exactly when the population is empty.
        rank[s] = k_wanted[s] < static_cast<int64_t>(total) ? static_cast<uint32_t>(k_wanted[s])
                                                             : total;
      }
      // The bins' (excl, incl] intervals partition (0, total] and 1 <= rank <= total: exactly
      // one thread owns the digit of the wanted key.
      if (rank[s] != 0u && excl < rank[s] && rank[s] <= incl[s]) {
        sm.digit[s] = static_cast<unsigned int>(tid);
        sm.rank[s] = rank[s] - excl;
      }
    }
    __syncthreads();

#pragma unroll
    for (int s = 0; s < 2; ++s) {
      if (rank[s] != 0u) {
        prefix[s] |= sm.digit[s] << shift;
        rank[s] = sm.rank[s];
      }
    }
    // sm.digit / sm.rank / sm.warp_sums are written again only after the next pass's first
    // __syncthreads(), which every thread reaches after the reads above.
  }
#pragma unroll
  for (int s = 0; s < 2; ++s) {
    key[s] = prefix[s];
    found[s] = rank[s] != 0u;
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) dynamic_match_kernel(
    const scalar_t* __restrict__ proposals, const scalar_t* __restrict__ gt_boxes,
    const int64_t* __restrict__ proposal_splits, const int64_t* __restrict__ gt_splits,
    int64_t n, int64_t g, int64_t num_images, const void* __restrict__ thr_ptr, int thr_code,
    acc_t wx, acc_t wy, int64_t k_iou, int64_t k_err, bool per_image,
    int64_t* __restrict__ matched_idxs, float* __restrict__ max_iou,
    int64_t* __restrict__ labels, uint32_t* __restrict__ iou_keys,
    uint32_t* __restrict__ err_keys, unsigned int* __restrict__ blocks_done,
    float* __restrict__ kth_iou, float* __restrict__ kth_err) {
  __shared__ int64_t s_splits[kSharedSplits];
  __shared__ SelectShared sm;
  __shared__ bool is_last_block;

  // num_images is uniform, so is this branch and its __syncthreads().
  const int64_t* splits = proposal_splits;
  if (num_images + 1 <= kSharedSplits) {
    for (int64_t t = threadIdx.x; t <= num_images; t += blockDim.x) {
      s_splits[t] = proposal_splits[t];
    }
    __syncthreads();
    splits = s_splits;
  }
  const int64_t last_row = splits[num_images];  // rows >= this belong to no image
  const acc_t thr = load_scalar<acc_t>(thr_ptr, thr_code);

  // ---- Phase 1: match every proposal. ----
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    // b = (number of b' in [0, B) with splits[b'] <= i) - 1: the last image starting at or
    // before row i (skips empty images). Always in [-1, B-1], even for unsorted splits.
    int64_t lo = 0, hi = num_images;
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (splits[mid] <= i) {
        lo = mid + 1;
      } else {
        hi = mid;
      }
    }
    const int64_t b = lo - 1;
    int64_t g0 = 0, g1 = 0;
    if (b >= 0 && i < last_row) {
      g0 = clamp_offset(gt_splits[b], g);
      g1 = clamp_offset(gt_splits[b + 1], g);
    }

    int64_t match = -1;
    float best_f = 0.f;
    int64_t label = 0;
    uint32_t iou_key = kNotInPopulation;
    uint32_t err_key = kNotInPopulation;
    if (g1 > g0) {
      const scalar_t* p = proposals + i * 4;
      const acc_t px1 = static_cast<acc_t>(p[0]), py1 = static_cast<acc_t>(p[1]);
      const acc_t px2 = static_cast<acc_t>(p[2]), py2 = static_cast<acc_t>(p[3]);
      // IoUs are >= 0, so the first gt always replaces -1; strict `>` keeps the lowest index
      // on ties, as the reference's first-argmax does.
      acc_t best = acc_t(-1);
      int64_t best_j = g0;
      for (int64_t j = g0; j < g1; ++j) {
        const scalar_t* q = gt_boxes + j * 4;
        const acc_t iou = iou_xyxy<acc_t>(
            px1, py1, px2, py2, static_cast<acc_t>(q[0]), static_cast<acc_t>(q[1]),
            static_cast<acc_t>(q[2]), static_cast<acc_t>(q[3]));
        if (iou > best) {
          best = iou;
          best_j = j;
        }
      }
      match = best_j;
      best_f = static_cast<float>(best);
      iou_key = ~ordered_key(best_f);  // inverted: k-th smallest key = k-th largest IoU
      if (best >= thr) {
        label = 1;
        const scalar_t* q = gt_boxes + best_j * 4;
        const acc_t err = regression_error<acc_t>(
            px1, py1, px2, py2, static_cast<acc_t>(q[0]), static_cast<acc_t>(q[1]),
            static_cast<acc_t>(q[2]), static_cast<acc_t>(q[3]), wx, wy);
        // Finiteness is judged in acc_t, as the reference does before its float32 cast.
        if (::isfinite(err)) err_key = ordered_key(static_cast<float>(err));
      }
    }
    matched_idxs[i] = match;
    max_iou[i] = best_f;
    labels[i] = label;
    iou_keys[i] = iou_key;
    err_keys[i] = err_key;
  }

  // ---- Hand-off: the last block to finish phase 1 computes the statistics. ----
  __threadfence();  // make this thread's key stores visible device-wide before counting
  __syncthreads();
  if (threadIdx.x == 0) {
    is_last_block = atomicAdd(blocks_done, 1u) == gridDim.x - 1;
  }
  __syncthreads();
  if (!is_last_block) return;  // block-uniform
  __threadfence();

  // ---- Phase 2: radix selects, one scope at a time. ----
  sm.hist[0][threadIdx.x] = 0u;
  sm.hist[1][threadIdx.x] = 0u;
  __syncthreads();
  const float nan = __uint_as_float(0x7FC00000u);
  const int64_t num_scopes = per_image ? num_images : 1;
  for (int64_t s = 0; s < num_scopes; ++s) {
    int64_t r0 = 0, r1 = n;
    if (per_image) {
      r0 = clamp_offset(splits[s], n);
      r1 = clamp_offset(splits[s + 1], n);
      if (r1 < r0) r1 = r0;
    }
    uint32_t key[2];
    bool found[2];
    radix_select_pair(iou_keys, err_keys, r0, r1, k_iou, k_err, sm, key, found);
    if (threadIdx.x == 0) {
      kth_iou[s] = found[0] ? key_to_float(~key[0]) : nan;
      kth_err[s] = found[1] ? key_to_float(key[1]) : nan;
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> dynamic_match_cuda(
    const at::Tensor& proposals, const at::Tensor& gt_boxes, const at::Tensor& proposal_splits,
    const at::Tensor& gt_splits, const at::Tensor& iou_thr, int64_t k_iou, int64_t k_err,
    at::ArrayRef<double> weights, bool per_image) {
  constexpr auto kCUDA = at::kCUDA;
  check_boxes_arg("dynamic_match", "proposals", proposals, kCUDA);
  check_boxes_arg("dynamic_match", "gt_boxes", gt_boxes, kCUDA);
  TORCH_CHECK(proposals.scalar_type() == gt_boxes.scalar_type(), "dynamic_match: proposals are ",
              proposals.scalar_type(), " but gt_boxes are ", gt_boxes.scalar_type());
  check_splits_arg("dynamic_match", "proposal_splits", proposal_splits, kCUDA);
  check_splits_arg("dynamic_match", "gt_splits", gt_splits, kCUDA);
  TORCH_CHECK(proposal_splits.numel() == gt_splits.numel(),
              "dynamic_match: proposal_splits has ", proposal_splits.numel(),
              " offsets but gt_splits has ", gt_splits.numel(), " (both must be B+1)");
  check_scalar_arg("dynamic_match", "iou_thr", iou_thr, kCUDA);
  // The checks above only ask for some CUDA device: all arguments must share one.
  const auto check_same_device = [&](const char* name, const at::Tensor& t) {
    TORCH_CHECK(t.device() == proposals.device(), "dynamic_match: ", name, " is on ", t.device(),
                " but proposals are on ", proposals.device());
  };
  check_same_device("gt_boxes", gt_boxes);
  check_same_device("proposal_splits", proposal_splits);
  check_same_device("gt_splits", gt_splits);
  check_same_device("iou_thr", iou_thr);
  TORCH_CHECK(k_iou >= 1, "dynamic_match: k_iou must be >= 1, got ", k_iou);
  TORCH_CHECK(k_err >= 1, "dynamic_match: k_err must be >= 1, got ", k_err);
  TORCH_CHECK(weights.size() == 4, "dynamic_match: weights must have 4 values, got ",
              weights.size());
  // The radix select counts in 32 bits.
  TORCH_CHECK(proposals.size(0) <= std::numeric_limits<int32_t>::max(),
              "dynamic_match: at most 2^31 - 1 proposals are supported, got ", proposals.size(0));

  at::cuda::CUDAGuard device_guard(proposals.device());
  const int64_t n = proposals.size(0);
  const int64_t g = gt_boxes.size(0);
  const int64_t num_images = proposal_splits.numel() - 1;

  const auto long_opts = proposals.options().dtype(at::kLong);
  const auto float_opts = proposals.options().dtype(at::kFloat);
  at::Tensor matched_idxs = at::empty({n}, long_opts);
  at::Tensor max_iou = at::empty({n}, float_opts);
  at::Tensor labels = at::empty({n}, long_opts);
  const std::vector<int64_t> stat_shape =
      per_image ? std::vector<int64_t>{num_images} : std::vector<int64_t>{};
  if (n == 0) {
    const double nan = std::numeric_limits<double>::quiet_NaN();
    return {matched_idxs, max_iou, labels, at::full(stat_shape, nan, float_opts),
            at::full(stat_shape, nan, float_opts)};
  }
  at::Tensor kth_iou = at::empty(stat_shape, float_opts);
  at::Tensor kth_err = at::empty(stat_shape, float_opts);

  const at::Tensor props = proposals.contiguous();
  const at::Tensor gts = gt_boxes.contiguous();
  const at::Tensor psplits = proposal_splits.contiguous();
  const at::Tensor gsplits = gt_splits.contiguous();
  // Keys of the two populations (written for every row in phase 1, so no initialisation)
  // and the zero-initialised count of finished blocks.
  at::Tensor keys = at::empty({2 * n}, proposals.options().dtype(at::kInt));
  at::Tensor blocks_done = at::zeros({1}, proposals.options().dtype(at::kInt));
  uint32_t* iou_keys = reinterpret_cast<uint32_t*>(keys.mutable_data_ptr<int32_t>());
  uint32_t* err_keys = iou_keys + n;

  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t blocks = std::min<int64_t>((n + kThreads - 1) / kThreads, sms * kBlocksPerSM);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int thr_code = scalar_code(iou_thr);

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::ScalarType::Half, at::ScalarType::BFloat16, props.scalar_type(), "dynamic_match_cuda",
      [&] {
        using acc_t = at::opmath_type<scalar_t>;
        dynamic_match_kernel<scalar_t, acc_t>
            <<<static_cast<unsigned int>(blocks), kThreads, 0, stream>>>(
                props.const_data_ptr<scalar_t>(), gts.const_data_ptr<scalar_t>(),
                psplits.const_data_ptr<int64_t>(), gsplits.const_data_ptr<int64_t>(), n, g,
                num_images, iou_thr.const_data_ptr(), thr_code,
                static_cast<acc_t>(weights[0]), static_cast<acc_t>(weights[1]), k_iou, k_err,
                per_image, matched_idxs.mutable_data_ptr<int64_t>(),
                max_iou.mutable_data_ptr<float>(), labels.mutable_data_ptr<int64_t>(), iou_keys,
                err_keys, reinterpret_cast<unsigned int*>(blocks_done.mutable_data_ptr<int32_t>()),
                kth_iou.mutable_data_ptr<float>(), kth_err.mutable_data_ptr<float>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return {matched_idxs, max_iou, labels, kth_iou, kth_err};
}

}  // namespace

TORCH_LIBRARY_IMPL(dynrcnn, CUDA, m) {
  m.impl("dynamic_match", &dynamic_match_cuda);
}

}  // namespace ops
}  // namespace dynrcnn
