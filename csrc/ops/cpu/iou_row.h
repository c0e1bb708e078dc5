// IoU of one box against a structure-of-arrays list of boxes: the inner loop of the CPU
// box_iou and dynamic_match kernels, vectorized (and cloned for AVX2, see cpu_target.h).
#pragma once

#include <cstdint>

#include "ops/box_math.h"
#include "ops/cpu/cpu_target.h"

namespace dynrcnn {
namespace ops {

template <typename acc_t, typename out_t>
DYNRCNN_CPU_CLONES void iou_row(acc_t ax1, acc_t ay1, acc_t ax2, acc_t ay2, const acc_t* bx1,
                                const acc_t* by1, const acc_t* bx2, const acc_t* by2,
                                int64_t count, out_t* out) {
  for (int64_t j = 0; j < count; ++j)
    out[j] = static_cast<out_t>(
        iou_xyxy<acc_t>(ax1, ay1, ax2, ay2, bx1[j], by1[j], bx2[j], by2[j]));
}

}  // namespace ops
}  // namespace dynrcnn
