// box_iou on the CPU: rows of the output in parallel, one vectorizable loop per row.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "ops/checks.h"
#include "ops/cpu/iou_row.h"

namespace dynrcnn {
namespace ops {
namespace {

at::Tensor box_iou_cpu(const at::Tensor& boxes1, const at::Tensor& boxes2) {
  check_boxes_arg("box_iou", "boxes1", boxes1, at::kCPU);
  check_boxes_arg("box_iou", "boxes2", boxes2, at::kCPU);
  TORCH_CHECK(boxes1.scalar_type() == boxes2.scalar_type(), "box_iou: boxes1 is ",
              boxes1.scalar_type(), " but boxes2 is ", boxes2.scalar_type());
  const auto a = boxes1.contiguous();
  const auto b = boxes2.contiguous();
  const int64_t n = a.size(0), m = b.size(0);
  auto out = at::empty({n, m}, a.options());
  if (n == 0 || m == 0) return out;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.scalar_type(), "box_iou_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* pa = a.data_ptr<scalar_t>();
    const scalar_t* pb = b.data_ptr<scalar_t>();
    scalar_t* po = out.data_ptr<scalar_t>();
    // Columns as structure-of-arrays in the accumulation type, so the row loop vectorizes.
    std::vector<acc_t> soa(4 * m);
    for (int64_t j = 0; j < m; ++j)
      for (int c = 0; c < 4; ++c) soa[c * m + j] = static_cast<acc_t>(pb[4 * j + c]);
    const acc_t *bx1 = soa.data(), *by1 = bx1 + m, *bx2 = by1 + m, *by2 = bx2 + m;
    const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / (8 * m));
    at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const acc_t ax1 = pa[4 * i], ay1 = pa[4 * i + 1], ax2 = pa[4 * i + 2], ay2 = pa[4 * i + 3];
        iou_row<acc_t, scalar_t>(ax1, ay1, ax2, ay2, bx1, by1, bx2, by2, m, po + i * m);
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(dynrcnn, CPU, m) {
  m.impl("box_iou", &box_iou_cpu);
}

}  // namespace ops
}  // namespace dynrcnn
