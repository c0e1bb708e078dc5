// Autograd of dynrcnn::dynamic_smooth_l1, in C++ (as torchvision does for its ops): the
// backward runs without a trip through Python, which matters for the small tensors of a
// detector's box loss. Gradients flow to input and target (d/d target = -d/d input); beta
// and weight are constants. The forward and backward kernels are found by the dispatcher,
// so this one file serves CPU and CUDA.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <optional>

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

class DynamicSmoothL1Autograd : public torch::autograd::Function<DynamicSmoothL1Autograd> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& input,
                            const at::Tensor& target, const at::Tensor& beta,
                            const std::optional<at::Tensor>& weight, int64_t reduction) {
    at::AutoDispatchBelowADInplaceOrView guard;
    const bool weighted = weight.has_value() && weight->defined();
    ctx->save_for_backward({input, target, beta, weighted ? *weight : at::Tensor()});
    ctx->saved_data["reduction"] = reduction;
    ctx->saved_data["weighted"] = weighted;
    return call_forward(input, target, beta, weight, reduction);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const bool weighted = ctx->saved_data["weighted"].toBool();
    const std::optional<at::Tensor> weight =
        weighted ? std::optional<at::Tensor>(saved[3]) : std::nullopt;
    const auto grad_input = call_backward(grads[0], saved[0], saved[1], saved[2], weight,
                                          ctx->saved_data["reduction"].toInt());
    const bool needs_target = ctx->needs_input_grad(1);
    return {grad_input, needs_target ? grad_input.neg() : at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor()};
  }
};

at::Tensor dynamic_smooth_l1_autograd(const at::Tensor& input, const at::Tensor& target,
                                      const at::Tensor& beta,
                                      const std::optional<at::Tensor>& weight,
                                      int64_t reduction) {
  return DynamicSmoothL1Autograd::apply(input, target, beta, weight, reduction);
}

}  // namespace

TORCH_LIBRARY_IMPL(dynrcnn, Autograd, m) {
  m.impl("dynamic_smooth_l1", &dynamic_smooth_l1_autograd);
}

}  // namespace ops
}  // namespace dynrcnn
