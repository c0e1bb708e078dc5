// 0-dim tensors (the IoU threshold T, SmoothL1's beta) read on the device in whatever dtype
// they arrive in, converted there to the accumulation type as `.to(acc)` would: no
// conversion kernel, no host synchronization.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

namespace dynrcnn {

enum ScalarCode : int { kCodeFloat = 0, kCodeDouble = 1, kCodeHalf = 2, kCodeBFloat16 = 3 };

template <typename acc_t>
__device__ __forceinline__ acc_t load_scalar(const void* ptr, int code) {
  switch (code) {
    case kCodeDouble:
      return static_cast<acc_t>(*static_cast<const double*>(ptr));
    case kCodeHalf:
      return static_cast<acc_t>(static_cast<float>(*static_cast<const c10::Half*>(ptr)));
    case kCodeBFloat16:
      return static_cast<acc_t>(static_cast<float>(*static_cast<const c10::BFloat16*>(ptr)));
    default:
      return static_cast<acc_t>(*static_cast<const float*>(ptr));
  }
}

inline int scalar_code(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::ScalarType::Double:
      return kCodeDouble;
    case at::ScalarType::Half:
      return kCodeHalf;
    case at::ScalarType::BFloat16:
      return kCodeBFloat16;
    default:
      return kCodeFloat;
  }
}

}  // namespace dynrcnn
