// Autograd of dynrcnn::dynamic_smooth_l1, in C++ (as torchvision does for its ops): the
// backward runs without a trip through Python, which matters for the small tensors of a
// detector's box loss. Gradients flow to input and target (d/d target = -d/d input); beta
// and weight are constants. The kernels are found by the dispatcher, so this one file
// serves CPU and CUDA. When a reduced loss needs a gradient and the device has the one-pass
// kernel (dynamic_smooth_l1_with_grad), the gradient is computed in the forward pass.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <c10/core/impl/TorchDispatchModeTLS.h>

#include <optional>
#include <tuple>

namespace dynrcnn {
namespace ops {
namespace {

at::Tensor call_forward(const at::Tensor& input, const at::Tensor& target,
                        const at::Tensor& beta, const std::optional<at::Tensor>& weight,
                        int64_t reduction) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("dynrcnn::dynamic_smooth_l1", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&,
                                         const at::Tensor&, const std::optional<at::Tensor>&,
                                         int64_t)>();
  return op.call(input, target, beta, weight, reduction);
}

at::Tensor call_backward(const at::Tensor& grad, const at::Tensor& input,
                         const at::Tensor& target, const at::Tensor& beta,
                         const std::optional<at::Tensor>& weight, int64_t reduction) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("dynrcnn::dynamic_smooth_l1_backward", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&,
                                         const at::Tensor&, const at::Tensor&,
                                         const std::optional<at::Tensor>&, int64_t)>();
  return op.call(grad, input, target, beta, weight, reduction);
}

std::tuple<at::Tensor, at::Tensor> call_with_grad(const at::Tensor& input,
                                                  const at::Tensor& target,
                                                  const at::Tensor& beta,
                                                  const std::optional<at::Tensor>& weight,
                                                  int64_t reduction) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("dynrcnn::dynamic_smooth_l1_with_grad", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(
                           const at::Tensor&, const at::Tensor&, const at::Tensor&,
                           const std::optional<at::Tensor>&, int64_t)>();
  return op.call(input, target, beta, weight, reduction);
}

// The one-pass forward+backward kernel exists for the CPU only: there the loss is bound by
// memory traffic, and reading the inputs once instead of twice is what makes it faster
// than F.smooth_l1_loss + autograd. On CUDA the box loss is launch-bound and the saved
// pass is a few microseconds, so the two kernels stay.
bool has_fused_kernel(const at::Tensor& input) {
  static const auto handle =
      c10::Dispatcher::singleton().findSchemaOrThrow("dynrcnn::dynamic_smooth_l1_with_grad", "");
  return input.device().is_cpu() && handle.hasKernelForDispatchKey(c10::DispatchKey::CPU);
}

// True when g is a real CPU tensor holding exactly 1 (the usual `loss.backward()`): the
// fused gradient can then be returned as it is. Traced tensors (fake, functional, under a
// dispatch mode) are never read, so torch.compile sees no data-dependent branch.
bool is_host_one(const at::Tensor& g) {
  if (!g.defined() || !g.device().is_cpu() || g.numel() != 1) return false;
  if (g.key_set().has_any(c10::DispatchKeySet(
          {c10::DispatchKey::Python, c10::DispatchKey::Functionalize})) ||
      c10::impl::TorchDispatchModeTLS::any_modes_set())
    return false;
  return g.item<double>() == 1.0;
}

class DynamicSmoothL1Autograd : public torch::autograd::Function<DynamicSmoothL1Autograd> {
 public:
  // fuse: compute the gradient in the forward pass (a reduced loss whose input or target
  // requires grad, on a device with the one-pass kernel).
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& input,
                            const at::Tensor& target, const at::Tensor& beta,
                            const std::optional<at::Tensor>& weight, int64_t reduction,
                            bool fuse) {
    at::AutoDispatchBelowADInplaceOrView guard;
    const bool weighted = weight.has_value() && weight->defined();
    ctx->save_for_backward({input, target, beta, weighted ? *weight : at::Tensor()});
    ctx->saved_data["reduction"] = reduction;
    ctx->saved_data["weighted"] = weighted;
    if (!fuse) return call_forward(input, target, beta, weight, reduction);
    auto [loss, grad] = call_with_grad(input, target, beta, weight, reduction);
    // Kept as a plain IValue, not a saved variable: backward takes it over and scales it
    // in place, which a saved variable's version check would refuse.
    ctx->saved_data["grad"] = grad;
    return loss;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const int64_t reduction = ctx->saved_data["reduction"].toInt();
    at::Tensor grad_input;
    auto fused = ctx->saved_data.find("grad");
    // Under create_graph (grad mode on in backward) the recomputing op is used: the ready
    // gradient carries no graph back to input, and a silently zero second derivative
    // would be worse than the error the backward op gives there.
    if (fused != ctx->saved_data.end() && fused->second.isTensor() &&
        !at::GradMode::is_enabled()) {
      // First backward: the gradient for grad_output = 1 is ready. Taken out of the
      // context so that a second backward (retain_graph=True) recomputes below.
      grad_input = fused->second.toTensor();
      fused->second = c10::IValue();
      if (!is_host_one(grads[0])) grad_input.mul_(grads[0]);
    } else {
      const bool weighted = ctx->saved_data["weighted"].toBool();
      const std::optional<at::Tensor> weight =
          weighted ? std::optional<at::Tensor>(saved[3]) : std::nullopt;
      grad_input = call_backward(grads[0], saved[0], saved[1], saved[2], weight, reduction);
    }
    const bool needs_target = ctx->needs_input_grad(1);
    return {ctx->needs_input_grad(0) ? grad_input : at::Tensor(),
            needs_target ? grad_input.neg() : at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor()};
  }
};

at::Tensor dynamic_smooth_l1_autograd(const at::Tensor& input, const at::Tensor& target,
                                      const at::Tensor& beta,
                                      const std::optional<at::Tensor>& weight,
                                      int64_t reduction) {
  const bool fuse = reduction != 0 && at::GradMode::is_enabled() &&
                    (input.requires_grad() || target.requires_grad()) &&
                    has_fused_kernel(input);
  return DynamicSmoothL1Autograd::apply(input, target, beta, weight, reduction, fuse);
}

}  // namespace

TORCH_LIBRARY_IMPL(dynrcnn, Autograd, m) {
  m.impl("dynamic_smooth_l1", &dynamic_smooth_l1_autograd);
}

}  // namespace ops
}  // namespace dynrcnn
