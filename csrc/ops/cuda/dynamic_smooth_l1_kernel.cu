// CUDA kernels of dynrcnn::dynamic_smooth_l1 and dynrcnn::dynamic_smooth_l1_backward.
//
// beta (and, in backward with reduction mean/sum, the incoming gradient) is read on the
// device: no host synchronization, no host branch on beta's value.
//
// reduction none and backward: one elementwise grid-stride launch.
// reduction mean/sum: one launch (plus the zero fill of a 4-byte counter). Each block sums
// its grid-stride share in acc_t and writes the partial to a workspace; the last block to
// finish (threadFenceReduction counter pattern) adds the partials. The result is bitwise
// deterministic: the grid size depends only on numel (not on the device), each thread's
// share and the in-block reduction tree are fixed, and the partials are added in a fixed
// order. No floating-point atomics.
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
#include <optional>

#include "ops/box_math.h"
#include "ops/checks.h"
#include "ops/cuda/scalar_load.cuh"

namespace dynrcnn {
namespace ops {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
// Blocks per SM used to cap the grid of the elementwise kernels.
constexpr int64_t kBlocksPerSM = 8;
// Fixed cap of the reduction grid: the grid (and so the order of the sum) depends on numel
// only, not on the device, so one binary gives identical bits run to run. Across GPUs or
// builds no such promise is made (the compiler may order the block sum differently).
// 1024 x 256 threads fill even the largest current GPUs.
constexpr int64_t kMaxReduceBlocks = 1024;

enum Reduction : int64_t { kNone = 0, kMean = 1, kSum = 2 };

// Sum over the block in a fixed order; the result is valid in thread 0. Uses warp_buf
// (kWarps entries); callers separate two calls with a __syncthreads().
template <typename acc_t>
__device__ __forceinline__ acc_t block_sum(acc_t v, acc_t* warp_buf) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    v += __shfl_down_sync(0xFFFFFFFFu, v, offset);
  }
  if (lane == 0) warp_buf[warp] = v;
  __syncthreads();
  v = acc_t(0);
  if (warp == 0) {
    v = lane < kWarps ? warp_buf[lane] : acc_t(0);
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
      v += __shfl_down_sync(0xFFFFFFFFu, v, offset);
    }
  }
  return v;
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) smooth_l1_none_kernel(
    const scalar_t* __restrict__ input, const scalar_t* __restrict__ target,
    const scalar_t* __restrict__ weight, const void* __restrict__ beta_ptr, int beta_code,
    int64_t numel, scalar_t* __restrict__ out) {
  const acc_t beta = load_scalar<acc_t>(beta_ptr, beta_code);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < numel;
       i += stride) {
    acc_t loss = smooth_l1<acc_t>(static_cast<acc_t>(input[i]) - static_cast<acc_t>(target[i]),
                                  beta);
    if (weight != nullptr) loss *= static_cast<acc_t>(weight[i]);
    out[i] = static_cast<scalar_t>(loss);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) smooth_l1_reduce_kernel(
    const scalar_t* __restrict__ input, const scalar_t* __restrict__ target,
    const scalar_t* __restrict__ weight, const void* __restrict__ beta_ptr, int beta_code,
    int64_t numel, bool mean, acc_t* __restrict__ partials,
    unsigned int* __restrict__ blocks_done, scalar_t* __restrict__ out) {
  __shared__ acc_t warp_buf[kWarps];
  __shared__ bool is_last_block;

  const acc_t beta = load_scalar<acc_t>(beta_ptr, beta_code);
  acc_t sum = acc_t(0);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < numel;
       i += stride) {
    acc_t loss = smooth_l1<acc_t>(static_cast<acc_t>(input[i]) - static_cast<acc_t>(target[i]),
                                  beta);
    if (weight != nullptr) loss *= static_cast<acc_t>(weight[i]);
    sum += loss;
  }
  sum = block_sum(sum, warp_buf);

  if (threadIdx.x == 0) {
    partials[blockIdx.x] = sum;
    __threadfence();  // the partial is visible device-wide before the block is counted
    is_last_block = atomicAdd(blocks_done, 1u) == gridDim.x - 1;
  }
  __syncthreads();  // also ends block_sum's use of warp_buf before it is reused below
  if (!is_last_block) return;  // block-uniform
  __threadfence();

  acc_t total = acc_t(0);
  for (int64_t b = threadIdx.x; b < gridDim.x; b += blockDim.x) {
    total += __ldcg(partials + b);  // written by other blocks: read from L2
  }
  total = block_sum(total, warp_buf);
  if (threadIdx.x == 0) {
    if (mean) total /= static_cast<acc_t>(numel);
    *out = static_cast<scalar_t>(total);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) smooth_l1_backward_kernel(
    const scalar_t* __restrict__ grad_output, const scalar_t* __restrict__ input,
    const scalar_t* __restrict__ target, const scalar_t* __restrict__ weight,
    const void* __restrict__ beta_ptr, int beta_code, int64_t numel, int64_t reduction,
    scalar_t* __restrict__ grad_input) {
  const acc_t beta = load_scalar<acc_t>(beta_ptr, beta_code);
  // For mean/sum the incoming gradient is one number, shared by every element.
  acc_t g_all = acc_t(0);
  if (reduction != kNone) {
    g_all = static_cast<acc_t>(grad_output[0]);
    if (reduction == kMean) g_all /= static_cast<acc_t>(numel);
  }
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < numel;
       i += stride) {
    const acc_t g = reduction == kNone ? static_cast<acc_t>(grad_output[i]) : g_all;
    acc_t grad =
        g * smooth_l1_grad<acc_t>(static_cast<acc_t>(input[i]) - static_cast<acc_t>(target[i]),
                                  beta);
    if (weight != nullptr) grad *= static_cast<acc_t>(weight[i]);
    grad_input[i] = static_cast<scalar_t>(grad);
  }
}

int64_t elementwise_blocks(int64_t numel) {
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  return std::min<int64_t>((numel + kThreads - 1) / kThreads, sms * kBlocksPerSM);
}

at::Tensor dynamic_smooth_l1_cuda(const at::Tensor& input, const at::Tensor& target,
                                  const at::Tensor& beta, const std::optional<at::Tensor>& weight,
                                  int64_t reduction) {
  check_loss_args("dynamic_smooth_l1", input, target, beta, weight, reduction, at::kCUDA);
  at::cuda::CUDAGuard device_guard(input.device());
  const int64_t numel = input.numel();

  if (numel == 0) {
    if (reduction == kNone) return at::empty(input.sizes(), input.options());
    // Sum of nothing is 0; mean of nothing is NaN (as the reference's 0 * nan).
    return reduction == kSum
               ? at::zeros({}, input.options())
               : at::full({}, std::numeric_limits<double>::quiet_NaN(), input.options());
  }

  const at::Tensor x = input.contiguous();
  const at::Tensor t = target.contiguous();
  at::Tensor w;
  if (weight.has_value() && weight->defined()) w = weight->contiguous();
  const int code = scalar_code(beta);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  if (reduction == kNone) {
    at::Tensor out = at::empty(input.sizes(), input.options());
    const int64_t blocks = elementwise_blocks(numel);
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::ScalarType::Half, at::ScalarType::BFloat16, x.scalar_type(),
        "dynamic_smooth_l1_cuda", [&] {
          using acc_t = at::opmath_type<scalar_t>;
          smooth_l1_none_kernel<scalar_t, acc_t>
              <<<static_cast<unsigned int>(blocks), kThreads, 0, stream>>>(
                  x.const_data_ptr<scalar_t>(), t.const_data_ptr<scalar_t>(),
                  w.defined() ? w.const_data_ptr<scalar_t>() : nullptr, beta.const_data_ptr(),
                  code, numel, out.mutable_data_ptr<scalar_t>());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
    return out;
  }

  const int64_t blocks = std::min<int64_t>((numel + kThreads - 1) / kThreads, kMaxReduceBlocks);
  const auto acc_type =
      input.scalar_type() == at::ScalarType::Double ? at::ScalarType::Double : at::ScalarType::Float;
  at::Tensor partials = at::empty({blocks}, input.options().dtype(acc_type));
  at::Tensor blocks_done = at::zeros({1}, input.options().dtype(at::kInt));
  at::Tensor out = at::empty({}, input.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::ScalarType::Half, at::ScalarType::BFloat16, x.scalar_type(), "dynamic_smooth_l1_cuda",
      [&] {
        using acc_t = at::opmath_type<scalar_t>;
        smooth_l1_reduce_kernel<scalar_t, acc_t>
            <<<static_cast<unsigned int>(blocks), kThreads, 0, stream>>>(
                x.const_data_ptr<scalar_t>(), t.const_data_ptr<scalar_t>(),
                w.defined() ? w.const_data_ptr<scalar_t>() : nullptr, beta.const_data_ptr(), code,
                numel, reduction == kMean, partials.mutable_data_ptr<acc_t>(),
                reinterpret_cast<unsigned int*>(blocks_done.mutable_data_ptr<int32_t>()),
                out.mutable_data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return out;
}

at::Tensor dynamic_smooth_l1_backward_cuda(const at::Tensor& grad_output, const at::Tensor& input,
                                           const at::Tensor& target, const at::Tensor& beta,
                                           const std::optional<at::Tensor>& weight,
                                           int64_t reduction) {
  check_loss_args("dynamic_smooth_l1_backward", input, target, beta, weight, reduction,
                  at::kCUDA);
  TORCH_CHECK(grad_output.device() == input.device(),
              "dynamic_smooth_l1_backward: grad_output is on ", grad_output.device(),
              " but input is on ", input.device());
  if (reduction == kNone) {
    TORCH_CHECK(grad_output.sizes() == input.sizes(),
                "dynamic_smooth_l1_backward: with reduction 'none' grad_output must have the "
                "input's shape ",
                input.sizes(), ", got ", grad_output.sizes());
  } else {
    TORCH_CHECK(grad_output.numel() == 1,
                "dynamic_smooth_l1_backward: with reduction 'mean' or 'sum' grad_output must "
                "be a 0-dim tensor, got shape ",
                grad_output.sizes());
  }
  at::cuda::CUDAGuard device_guard(input.device());
  const int64_t numel = input.numel();
  at::Tensor grad_input = at::empty(input.sizes(), input.options());
  if (numel == 0) return grad_input;

  // Autograd hands over the output dtype (= input dtype); anything else is converted.
  const at::Tensor go = grad_output.to(input.scalar_type()).contiguous();
  const at::Tensor x = input.contiguous();
  const at::Tensor t = target.contiguous();
  at::Tensor w;
  if (weight.has_value() && weight->defined()) w = weight->contiguous();
  const int code = scalar_code(beta);
  const int64_t blocks = elementwise_blocks(numel);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::ScalarType::Half, at::ScalarType::BFloat16, x.scalar_type(),
      "dynamic_smooth_l1_backward_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        smooth_l1_backward_kernel<scalar_t, acc_t>
            <<<static_cast<unsigned int>(blocks), kThreads, 0, stream>>>(
                go.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
                t.const_data_ptr<scalar_t>(),
                w.defined() ? w.const_data_ptr<scalar_t>() : nullptr, beta.const_data_ptr(),
                code, numel, reduction, grad_input.mutable_data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return grad_input;
}

}  // namespace

TORCH_LIBRARY_IMPL(dynrcnn, CUDA, m) {
  m.impl("dynamic_smooth_l1", &dynamic_smooth_l1_cuda);
  m.impl("dynamic_smooth_l1_backward", &dynamic_smooth_l1_backward_cuda);
}

}  // namespace ops
}  // namespace dynrcnn
