// Argument checks shared by the kernels of every dispatch key. The Python wrappers check
// first with friendlier messages; these keep C++ and torch.ops callers safe too.
#pragma once

#include <ATen/ATen.h>

namespace dynrcnn {
namespace ops {

inline bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16 || t == at::kDouble;
}

inline void check_boxes_arg(const char* op, const char* name, const at::Tensor& boxes,
                            at::DeviceType device) {
  TORCH_CHECK(boxes.device().type() == device, op, ": ", name, " must be on ", device,
              ", got ", boxes.device());
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4, op, ": ", name,
              " must have shape [N, 4] (x1, y1, x2, y2), got ", boxes.sizes());
  TORCH_CHECK(is_supported_float(boxes.scalar_type()), op, ": ", name,
              " must be float16, bfloat16, float32 or float64, got ", boxes.scalar_type());
}

inline void check_splits_arg(const char* op, const char* name, const at::Tensor& splits,
                             at::DeviceType device) {
  TORCH_CHECK(splits.device().type() == device, op, ": ", name, " must be on ", device,
              ", got ", splits.device());
  TORCH_CHECK(splits.dim() == 1 && splits.numel() >= 1, op, ": ", name,
              " must be a 1-D tensor of B+1 offsets, got shape ", splits.sizes());
  TORCH_CHECK(splits.scalar_type() == at::kLong, op, ": ", name, " must be int64, got ",
              splits.scalar_type());
}

inline void check_scalar_arg(const char* op, const char* name, const at::Tensor& t,
                             at::DeviceType device) {
  TORCH_CHECK(t.device().type() == device, op, ": ", name, " must be on ", device, ", got ",
              t.device());
  TORCH_CHECK(t.numel() == 1, op, ": ", name, " must be a 0-dim tensor, got shape ", t.sizes());
  TORCH_CHECK(is_supported_float(t.scalar_type()), op, ": ", name,
              " must be a floating tensor, got ", t.scalar_type());
}

inline void check_loss_args(const char* op, const at::Tensor& input, const at::Tensor& target,
                            const at::Tensor& beta, const c10::optional<at::Tensor>& weight,
                            int64_t reduction, at::DeviceType device) {
  TORCH_CHECK(input.device().type() == device, op, ": input must be on ", device, ", got ",
              input.device());
  TORCH_CHECK(is_supported_float(input.scalar_type()), op,
              ": input must be float16, bfloat16, float32 or float64, got ", input.scalar_type());
  TORCH_CHECK(target.device() == input.device(), op, ": target is on ", target.device(),
              " but input is on ", input.device());
  TORCH_CHECK(target.scalar_type() == input.scalar_type(), op, ": target is ",
              target.scalar_type(), " but input is ", input.scalar_type());
  TORCH_CHECK(target.sizes() == input.sizes(), op, ": target has shape ", target.sizes(),
              " but input has ", input.sizes());
  if (weight.has_value() && weight->defined()) {
    TORCH_CHECK(weight->device() == input.device(), op, ": weight is on ", weight->device(),
                " but input is on ", input.device());
    TORCH_CHECK(weight->scalar_type() == input.scalar_type(), op, ": weight is ",
                weight->scalar_type(), " but input is ", input.scalar_type());
    TORCH_CHECK(weight->sizes() == input.sizes(), op, ": weight has shape ", weight->sizes(),
                " but input has ", input.sizes());
  }
  check_scalar_arg(op, "beta", beta, device);
  TORCH_CHECK(beta.device() == input.device(), op, ": beta is on ", beta.device(),
              " but input is on ", input.device());
  TORCH_CHECK(reduction >= 0 && reduction <= 2, op,
              ": reduction must be 0 (none), 1 (mean) or 2 (sum), got ", reduction);
}

}  // namespace ops
}  // namespace dynrcnn
