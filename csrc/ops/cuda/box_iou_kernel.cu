// CUDA kernel of dynrcnn::box_iou: pairwise IoU of x1,y1,x2,y2 boxes, [N,4] x [M,4] -> [N,M].
//
// One launch. A 1-D grid-stride loop over the N*M outputs (row-major, so the stores are
// coalesced). Neighbouring threads share their row of boxes1 (a broadcast load) and read
// consecutive rows of boxes2, which stay in L1/L2: the kernel is bound by the output stores.
// The (row, column) pair is derived with one division per thread and then advanced by the
// grid stride incrementally, so the inner loop has no 64-bit division.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

#include "ops/box_math.h"
#include "ops/checks.h"

namespace dynrcnn {
namespace ops {
namespace {

constexpr int kThreads = 256;
// Resident blocks per SM used to cap the grid (8 x 256 threads = 2048, a full SM).
constexpr int64_t kBlocksPerSM = 8;

template <typename scalar_t, typename acc_t>
__global__ void box_iou_kernel(const scalar_t* __restrict__ boxes1,
                               const scalar_t* __restrict__ boxes2, int64_t m, int64_t total,
                               scalar_t* __restrict__ out) {
  int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  // idx = i * m + j; the stride advances i by di and j by dj (with a carry into i).
  int64_t i = idx / m;
  int64_t j = idx - i * m;
  const int64_t di = stride / m;
  const int64_t dj = stride - di * m;
  for (; idx < total; idx += stride) {
    const scalar_t* a = boxes1 + i * 4;
    const scalar_t* b = boxes2 + j * 4;
    const acc_t iou = iou_xyxy<acc_t>(
        static_cast<acc_t>(a[0]), static_cast<acc_t>(a[1]), static_cast<acc_t>(a[2]),
        static_cast<acc_t>(a[3]), static_cast<acc_t>(b[0]), static_cast<acc_t>(b[1]),
        static_cast<acc_t>(b[2]), static_cast<acc_t>(b[3]));
    out[idx] = static_cast<scalar_t>(iou);
    i += di;
    j += dj;
    if (j >= m) {
      j -= m;
      ++i;
    }
  }
}

at::Tensor box_iou_cuda(const at::Tensor& boxes1, const at::Tensor& boxes2) {
  check_boxes_arg("box_iou", "boxes1", boxes1, at::kCUDA);
  check_boxes_arg("box_iou", "boxes2", boxes2, at::kCUDA);
  TORCH_CHECK(boxes2.device() == boxes1.device(), "box_iou: boxes2 is on ", boxes2.device(),
              " but boxes1 is on ", boxes1.device());
  TORCH_CHECK(boxes1.scalar_type() == boxes2.scalar_type(), "box_iou: boxes1 is ",
              boxes1.scalar_type(), " but boxes2 is ", boxes2.scalar_type());

  at::cuda::CUDAGuard device_guard(boxes1.device());
  const int64_t n = boxes1.size(0);
  const int64_t m = boxes2.size(0);
  at::Tensor out = at::empty({n, m}, boxes1.options());
  const int64_t total = n * m;
  if (total == 0) {
    return out;
  }

  const at::Tensor a = boxes1.contiguous();
  const at::Tensor b = boxes2.contiguous();
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t blocks = std::min<int64_t>((total + kThreads - 1) / kThreads, sms * kBlocksPerSM);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::ScalarType::Half, at::ScalarType::BFloat16, a.scalar_type(), "box_iou_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        box_iou_kernel<scalar_t, acc_t><<<static_cast<unsigned int>(blocks), kThreads, 0,
                                          stream>>>(a.const_data_ptr<scalar_t>(),
                                                    b.const_data_ptr<scalar_t>(), m, total,
                                                    out.mutable_data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(dynrcnn, CUDA, m) {
  m.impl("box_iou", &box_iou_cuda);
}

}  // namespace ops
}  // namespace dynrcnn
