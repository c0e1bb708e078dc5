// C++ test of the dynrcnn CPU kernels, built by CMakeLists.txt and run by ctest.
//
// The ops are called the way a libtorch user calls them: through c10::Dispatcher, by schema
// name, with nothing but libdynrcnn_ops.so linked in. Every output is compared against
// naive scalar loops (test_common.h) written from the op definitions (DESIGN.md "Op
// contracts", dynrcnn/ops/_reference.py), in double precision and independently of
// csrc/ops/box_math.h: IoU, max/argmax with ties to the lowest index, k-th order statistics
// by std::sort, the BoxCoder regression error, SmoothL1 and its derivative.
//
// No test framework: CHECK counts failures, main() returns non-zero if there were any.
//
// Files: test_common.h (CHECK, the references, helpers), test_registration.cpp,
// test_box_iou.cpp, test_dynamic_match.cpp, test_smooth_l1.cpp (one op each); this file
// holds the operators' dispatcher calls and main().
#include "test_common.h"

namespace dynrcnn_test {

// ----------------------------------------------------------------------------------------
// The operators, through the dispatcher.

namespace {

c10::OperatorHandle op_handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "");
}

}  // namespace

at::Tensor box_iou(const at::Tensor& a, const at::Tensor& b) {
  static auto op =
      op_handle("dynrcnn::box_iou").typed<at::Tensor(const at::Tensor&, const at::Tensor&)>();
  return op.call(a, b);
}

MatchOut dynamic_match(const at::Tensor& proposals, const at::Tensor& gt_boxes,
                       const at::Tensor& proposal_splits, const at::Tensor& gt_splits,
                       const at::Tensor& iou_thr, int64_t k_iou, int64_t k_err,
                       c10::ArrayRef<double> weights, bool per_image) {
  static auto op = op_handle("dynrcnn::dynamic_match")
                       .typed<MatchOut(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                       const at::Tensor&, const at::Tensor&, int64_t, int64_t,
                                       c10::ArrayRef<double>, bool)>();
  return op.call(proposals, gt_boxes, proposal_splits, gt_splits, iou_thr, k_iou, k_err, weights,
                 per_image);
}

// `Tensor?` maps to const std::optional<at::Tensor>& (c10::optional is std::optional).
at::Tensor dynamic_smooth_l1(const at::Tensor& input, const at::Tensor& target,
                             const at::Tensor& beta, const std::optional<at::Tensor>& weight,
                             int64_t reduction) {
  static auto op = op_handle("dynrcnn::dynamic_smooth_l1")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const std::optional<at::Tensor>&, int64_t)>();
  return op.call(input, target, beta, weight, reduction);
}

at::Tensor dynamic_smooth_l1_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                      const at::Tensor& target, const at::Tensor& beta,
                                      const std::optional<at::Tensor>& weight,
                                      int64_t reduction) {
  static auto op =
      op_handle("dynrcnn::dynamic_smooth_l1_backward")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                            const at::Tensor&, const std::optional<at::Tensor>&, int64_t)>();
  return op.call(grad_output, input, target, beta, weight, reduction);
}

std::tuple<at::Tensor, at::Tensor> dynamic_smooth_l1_with_grad(
    const at::Tensor& input, const at::Tensor& target, const at::Tensor& beta,
    const std::optional<at::Tensor>& weight, int64_t reduction) {
  static auto op = op_handle("dynrcnn::dynamic_smooth_l1_with_grad")
                       .typed<std::tuple<at::Tensor, at::Tensor>(
                           const at::Tensor&, const at::Tensor&, const at::Tensor&,
                           const std::optional<at::Tensor>&, int64_t)>();
  return op.call(input, target, beta, weight, reduction);
}

}  // namespace dynrcnn_test

using namespace dynrcnn_test;  // the counters and the tests, for main()

int main() {
  std::printf("dynrcnn CPU kernels vs naive loops (%d threads)\n", at::get_num_threads());
  if (!test_registration()) {
    std::fprintf(stderr, "the dynrcnn operators are not registered: stopping\n");
    return 1;
  }
  test_argument_errors();
  test_box_iou_degenerate();
  for (auto dtype : {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16})
    test_box_iou_random(dtype, 300, 17, false);
  test_box_iou_random(at::kFloat, 1, 1, false);
  test_box_iou_random(at::kFloat, 513, 300, false);
  test_box_iou_random(at::kFloat, 64, 9, true);
  test_dynamic_match();
  test_smooth_l1();
  if (g_failures > 0) {
    std::fprintf(stderr, "%d of %d checks FAILED\n", g_failures, g_checks);
    return 1;
  }
  std::printf("all %d checks passed\n", g_checks);
  return 0;
}
