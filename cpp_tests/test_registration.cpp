// The operators are registered with CPU kernels, and bad arguments raise c10::Error.
#include "test_common.h"

namespace dynrcnn_test {
namespace {

template <typename F>
bool throws(F&& f) {
  try {
    f();
  } catch (const c10::Error&) {
    return true;
  }
  return false;
}

}  // namespace

bool test_registration() {
  g_case = "registration";
  const int failures_before = g_failures;
  for (const char* name : {"dynrcnn::box_iou", "dynrcnn::dynamic_match", "dynrcnn::dynamic_smooth_l1",
                           "dynrcnn::dynamic_smooth_l1_backward",
                           "dynrcnn::dynamic_smooth_l1_with_grad", "dynrcnn::batched_nms_topk",
                           "dynrcnn::roi_align", "dynrcnn::roi_align_backward"}) {
    const auto op = c10::Dispatcher::singleton().findSchema({name, ""});
    CHECK(op.has_value(), c10::str(name, " has no schema: is libdynrcnn_ops loaded?"));
    if (op) CHECK(op->hasKernelForDispatchKey(c10::DispatchKey::CPU), c10::str(name, " has no CPU kernel"));
  }
  return g_failures == failures_before;
}

void test_argument_errors() {
  g_case = "argument errors";
  CHECK(throws([] { box_iou(at::rand({3, 3}), at::rand({2, 4})); }), "box_iou [3,3] accepted");
  CHECK(throws([] { box_iou(at::rand({3, 4}), at::rand({2, 4}, at::kDouble)); }),
        "box_iou mixed dtypes accepted");
  CHECK(throws([] { box_iou(at::zeros({3, 4}, at::kLong), at::zeros({2, 4}, at::kLong)); }),
        "box_iou int64 boxes accepted");
  const std::vector<double> w = {10, 10, 5, 5};
  const auto thr = at::scalar_tensor(0.5, at::kFloat);
  CHECK(throws([&] {
          dynamic_match(at::rand({5, 4}), at::rand({2, 4}), splits_tensor({0, 4}),
                        splits_tensor({0, 2}), thr, 1, 1, w, false);
        }),
        "proposal_splits not adding up to N accepted");
  CHECK(throws([&] {
          dynamic_match(at::rand({5, 4}), at::rand({2, 4}), splits_tensor({0, 5}),
                        splits_tensor({0, 1, 2}), thr, 1, 1, w, false);
        }),
        "splits of different lengths accepted");
  CHECK(throws([&] {
          dynamic_match(at::rand({5, 4}), at::rand({2, 4}), splits_tensor({0, 5}),
                        splits_tensor({0, 2}), thr, 0, 1, w, false);
        }),
        "k_iou = 0 accepted");
  CHECK(throws([&] {
          dynamic_match(at::rand({5, 4}), at::rand({2, 4}), splits_tensor({0, 5}),
                        splits_tensor({0, 2}), thr, 1, 1, std::vector<double>{1, 2}, false);
        }),
        "2 weights accepted");
  const auto x = at::rand({4, 4});
  CHECK(throws([&] { dynamic_smooth_l1(x, x, thr, std::nullopt, 3); }), "reduction 3 accepted");
  CHECK(throws([&] { dynamic_smooth_l1(x, at::rand({4, 3}), thr, std::nullopt, 2); }),
        "target of another shape accepted");
  CHECK(throws([&] { dynamic_smooth_l1(x, x, at::rand({2}), std::nullopt, 2); }),
        "beta with 2 elements accepted");
  CHECK(throws([&] { dynamic_smooth_l1(x, x, thr, at::rand({4}), 2); }),
        "weight of another shape accepted");
}

}  // namespace dynrcnn_test
