// Autograd of dynrcnn::roi_align, in C++ as torchvision registers its own: the gradient
// flows to the feature map only (rois are constants, as in torchvision), through
// dynrcnn::roi_align_backward, found by the dispatcher for the input's device.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

namespace dynrcnn {
namespace ops {
namespace {

at::Tensor call_forward(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                        int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio,
                        bool aligned) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("dynrcnn::roi_align", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, double, int64_t,
                                         int64_t, int64_t, bool)>();
  return op.call(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio,
                 aligned);
}

at::Tensor call_backward(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale,
                         int64_t pooled_height, int64_t pooled_width, int64_t batch_size,
                         int64_t channels, int64_t height, int64_t width,
                         int64_t sampling_ratio, bool aligned) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("dynrcnn::roi_align_backward", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, double, int64_t,
                                         int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                                         bool)>();
  return op.call(grad, rois, spatial_scale, pooled_height, pooled_width, batch_size, channels,
                 height, width, sampling_ratio, aligned);
}

class RoIAlignAutograd : public torch::autograd::Function<RoIAlignAutograd> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& input,
                            const at::Tensor& rois, double spatial_scale, int64_t pooled_height,
                            int64_t pooled_width, int64_t sampling_ratio, bool aligned) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({rois});
    ctx->saved_data["spatial_scale"] = spatial_scale;
    ctx->saved_data["pooled_height"] = pooled_height;
    ctx->saved_data["pooled_width"] = pooled_width;
    ctx->saved_data["sampling_ratio"] = sampling_ratio;
    ctx->saved_data["aligned"] = aligned;
    ctx->saved_data["input_shape"] = input.sizes();
    return call_forward(input, rois, spatial_scale, pooled_height, pooled_width,
                        sampling_ratio, aligned);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto rois = ctx->get_saved_variables()[0];
    const auto shape = ctx->saved_data["input_shape"].toIntVector();
    TORCH_CHECK(!at::GradMode::is_enabled() || !grads[0].requires_grad(),
                "roi_align: double backward is not supported (as in torchvision)");
    const auto grad_input = call_backward(
        grads[0], rois, ctx->saved_data["spatial_scale"].toDouble(),
        ctx->saved_data["pooled_height"].toInt(), ctx->saved_data["pooled_width"].toInt(),
        shape[0], shape[1], shape[2], shape[3], ctx->saved_data["sampling_ratio"].toInt(),
        ctx->saved_data["aligned"].toBool());
    return {grad_input, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor()};
  }
};

at::Tensor roi_align_autograd(const at::Tensor& input, const at::Tensor& rois,
                              double spatial_scale, int64_t pooled_height, int64_t pooled_width,
                              int64_t sampling_ratio, bool aligned) {
  return RoIAlignAutograd::apply(input, rois, spatial_scale, pooled_height, pooled_width,
                                 sampling_ratio, aligned);
}

}  // namespace

TORCH_LIBRARY_IMPL(dynrcnn, Autograd, m) {
  m.impl("roi_align", &roi_align_autograd);
}

}  // namespace ops
}  // namespace dynrcnn
