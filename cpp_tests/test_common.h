// Shared by the C++ tests of the dynrcnn CPU kernels (cpp_tests/*.cpp, linked into one
// executable, test_cpu_kernels, that ctest runs): the CHECK macro and its counters, the
// operators called through c10::Dispatcher (defined in test_cpu_kernels.cpp), naive scalar
// references in double precision, tensor helpers and the seeded random generator.
//
// The references are written from the op definitions (DESIGN.md "Op contracts",
// dynrcnn/ops/_reference.py), independently of csrc/ops/box_math.h: IoU, max/argmax with
// ties to the lowest index, k-th order statistics by std::sort, the BoxCoder regression
// error, SmoothL1 and its derivative.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>
#include <c10/util/StringUtil.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <limits>
#include <optional>
#include <random>
#include <string>
#include <tuple>
#include <vector>

namespace dynrcnn_test {

// Counters of all test files: main() returns non-zero if any check failed.
inline int g_checks = 0;
inline int g_failures = 0;
inline std::string g_case;  // the case being checked, printed with each failure

// CHECK(condition, message): message (usually c10::str(...)) is built only on failure.
// It replaces c10's glog-style CHECK (c10/util/logging_is_not_google_glog.h), which aborts.
#undef CHECK
#define CHECK(cond, msg)                                                                 \
  do {                                                                                   \
    ++g_checks;                                                                          \
    if (!(cond)) {                                                                       \
      ++g_failures;                                                                      \
      if (g_failures <= 60) {                                                            \
        std::fprintf(stderr, "FAIL %s:%d [%s] %s: %s\n", __FILE__, __LINE__,             \
                     g_case.c_str(), #cond, std::string(msg).c_str());                   \
      }                                                                                  \
    }                                                                                    \
  } while (0)

inline constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// ----------------------------------------------------------------------------------------
// The operators, through the dispatcher (test_cpu_kernels.cpp).

using MatchOut = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

at::Tensor box_iou(const at::Tensor& a, const at::Tensor& b);
MatchOut dynamic_match(const at::Tensor& proposals, const at::Tensor& gt_boxes,
                       const at::Tensor& proposal_splits, const at::Tensor& gt_splits,
                       const at::Tensor& iou_thr, int64_t k_iou, int64_t k_err,
                       c10::ArrayRef<double> weights, bool per_image);
at::Tensor dynamic_smooth_l1(const at::Tensor& input, const at::Tensor& target,
                             const at::Tensor& beta, const std::optional<at::Tensor>& weight,
                             int64_t reduction);
at::Tensor dynamic_smooth_l1_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                      const at::Tensor& target, const at::Tensor& beta,
                                      const std::optional<at::Tensor>& weight,
                                      int64_t reduction);
std::tuple<at::Tensor, at::Tensor> dynamic_smooth_l1_with_grad(
    const at::Tensor& input, const at::Tensor& target, const at::Tensor& beta,
    const std::optional<at::Tensor>& weight, int64_t reduction);

// ----------------------------------------------------------------------------------------
// Naive references, straight from the definitions, in double.

using Box = std::array<double, 4>;  // x1, y1, x2, y2

inline double naive_iou(const Box& a, const Box& b) {
  const double aw = a[2] - a[0], ah = a[3] - a[1];
  const double bw = b[2] - b[0], bh = b[3] - b[1];
  // Non-positive width or height, or NaN (every comparison false): IoU 0.
  if (!(aw > 0 && ah > 0 && bw > 0 && bh > 0)) return 0.0;
  const double iw = std::min(a[2], b[2]) - std::max(a[0], b[0]);
  const double ih = std::min(a[3], b[3]) - std::max(a[1], b[1]);
  if (!(iw > 0 && ih > 0)) return 0.0;
  const double inter = iw * ih;
  return inter / (aw * ah + bw * bh - inter);
}

// mean(|dx|, |dy|) of the BoxCoder encoding of gt relative to proposal p (no +1).
inline double naive_regression_error(const Box& p, const Box& g, double wx, double wy) {
  const double pw = p[2] - p[0], ph = p[3] - p[1];
  const double pcx = p[0] + 0.5 * pw, pcy = p[1] + 0.5 * ph;
  const double gcx = (g[0] + g[2]) / 2, gcy = (g[1] + g[3]) / 2;
  const double dx = wx * (gcx - pcx) / pw;
  const double dy = wy * (gcy - pcy) / ph;
  return (std::fabs(dx) + std::fabs(dy)) / 2;
}

// k-th largest / smallest (1-based, k clamped to the size) by a full sort; NaN if empty.
inline double naive_kth(std::vector<double> v, int64_t k, bool largest) {
  if (v.empty()) return kNaN;
  if (largest) {
    std::sort(v.begin(), v.end(), std::greater<double>());
  } else {
    std::sort(v.begin(), v.end());
  }
  return v[std::min<int64_t>(k, static_cast<int64_t>(v.size())) - 1];
}

inline double naive_smooth_l1(double d, double beta) {
  const double ad = std::fabs(d);
  if (beta <= 1e-6) return ad;  // L1
  return ad < beta ? 0.5 * d * d / beta : ad - 0.5 * beta;
}

inline double naive_smooth_l1_grad(double d, double beta) {
  const double sign = d > 0 ? 1.0 : (d < 0 ? -1.0 : 0.0);
  if (beta <= 1e-6) return sign;
  return std::fabs(d) < beta ? d / beta : sign;
}

// ----------------------------------------------------------------------------------------
// Tensor helpers.

inline std::vector<double> to_vec(const at::Tensor& t) {
  const auto d = t.to(at::kDouble).contiguous();
  const double* p = d.data_ptr<double>();
  return std::vector<double>(p, p + d.numel());
}

inline std::vector<int64_t> to_vec_long(const at::Tensor& t) {
  const auto d = t.to(at::kLong).contiguous();
  const int64_t* p = d.data_ptr<int64_t>();
  return std::vector<int64_t>(p, p + d.numel());
}

inline std::vector<Box> to_boxes(const at::Tensor& t) {
  const auto v = to_vec(t);
  std::vector<Box> out(v.size() / 4);
  for (size_t i = 0; i < out.size(); ++i)
    for (int c = 0; c < 4; ++c) out[i][c] = v[4 * i + c];
  return out;
}

inline at::Tensor from_boxes(const std::vector<Box>& boxes, at::ScalarType dtype) {
  auto t = at::empty({static_cast<int64_t>(boxes.size()), 4}, at::kDouble);
  double* p = t.data_ptr<double>();
  for (size_t i = 0; i < boxes.size(); ++i)
    for (int c = 0; c < 4; ++c) p[4 * i + c] = boxes[i][c];
  return t.to(dtype);
}

inline at::Tensor from_vec(const std::vector<double>& v, at::IntArrayRef shape, at::ScalarType dtype) {
  auto t = at::empty({static_cast<int64_t>(v.size())}, at::kDouble);
  std::copy(v.begin(), v.end(), t.data_ptr<double>());
  return t.reshape(shape).to(dtype);
}

inline at::Tensor splits_tensor(const std::vector<int64_t>& s) {
  auto t = at::empty({static_cast<int64_t>(s.size())}, at::kLong);
  std::copy(s.begin(), s.end(), t.data_ptr<int64_t>());
  return t;
}

inline bool same_or_both_nan(double a, double b, double tol) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
  return std::fabs(a - b) <= tol;
}

// Tolerance for IoU-like values. max_iou is float32 output whatever the input dtype.
inline double iou_tol(at::ScalarType dtype) { return dtype == at::kDouble ? 2e-7 : 2e-6; }

inline std::mt19937 g_rng(20200823);  // fixed seed: the test is deterministic

inline double uniform(double lo, double hi) { return std::uniform_real_distribution<double>(lo, hi)(g_rng); }
inline double normal(double mean, double sd) { return std::normal_distribution<double>(mean, sd)(g_rng); }

inline Box random_box(double canvas, double min_size, double max_size) {
  const double x1 = uniform(0, canvas), y1 = uniform(0, canvas);
  return {x1, y1, x1 + uniform(min_size, max_size), y1 + uniform(min_size, max_size)};
}

// ----------------------------------------------------------------------------------------
// The tests, one file per op; main() (test_cpu_kernels.cpp) runs them in a fixed order,
// which, with the one seeded g_rng, fixes every input.

// test_registration.cpp
bool test_registration();
void test_argument_errors();
// test_box_iou.cpp
void test_box_iou_degenerate();
void test_box_iou_random(at::ScalarType dtype, int64_t n, int64_t m, bool noncontiguous);
// test_dynamic_match.cpp
void test_dynamic_match();
// test_smooth_l1.cpp
void test_smooth_l1();

}  // namespace dynrcnn_test
