// box_iou against the naive IoU: random boxes in every dtype (contiguous or not), and
// degenerate, NaN, touching, identical and empty inputs.
#include "test_common.h"

namespace dynrcnn_test {

void test_box_iou_random(at::ScalarType dtype, int64_t n, int64_t m, bool noncontiguous) {
  g_case = c10::str("box_iou random ", dtype, " ", n, "x", m, noncontiguous ? " non-contiguous" : "");
  std::vector<Box> a, b;
  for (int64_t i = 0; i < n; ++i) a.push_back(random_box(100, 1, 50));
  for (int64_t j = 0; j < m; ++j) b.push_back(random_box(100, 1, 50));
  if (n > 3 && m > 3) {
    a[1] = b[2];  // identical boxes: IoU 1
    a[2] = {b[3][0], b[3][1], b[3][0], b[3][3]};  // zero width
  }
  at::Tensor ta = from_boxes(a, dtype), tb = from_boxes(b, dtype);
  if (noncontiguous) {  // same values, stride-4 columns: [4, N] transposed
    ta = ta.t().contiguous().t();
    tb = tb.t().contiguous().t();
    CHECK(!ta.is_contiguous() || n <= 1, "test setup: expected a non-contiguous tensor");
  }
  const auto out = box_iou(ta, tb);
  CHECK(out.sizes() == at::IntArrayRef({n, m}), c10::str("shape ", out.sizes()));
  CHECK(out.scalar_type() == dtype, c10::str("dtype ", out.scalar_type()));
  const auto av = to_boxes(ta), bv = to_boxes(tb);
  const auto got = to_vec(out);
  // Half/bfloat16 outputs are rounded to the output type.
  const double tol = dtype == at::kHalf ? 1e-3 : dtype == at::kBFloat16 ? 8e-3 : iou_tol(dtype);
  int bad = 0;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < m; ++j) {
      const double want = naive_iou(av[i], bv[j]);
      const double g = got[i * m + j];
      if (!(std::fabs(g - want) <= tol) && ++bad <= 5)
        CHECK(false, c10::str("iou[", i, ",", j, "] = ", g, ", naive ", want));
    }
  CHECK(bad == 0, c10::str(bad, " IoU values differ from the naive loop"));
}

void test_box_iou_degenerate() {
  g_case = "box_iou degenerate";
  const double nan = kNaN;
  const std::vector<Box> a = {
      {0, 0, 10, 10},     // normal
      {5, 5, 5, 10},      // zero width
      {5, 5, 10, 5},      // zero height
      {10, 10, 0, 0},     // negative width and height
      {nan, 0, 10, 10},   // NaN coordinate
      {0, 0, 10, nan},    // NaN coordinate
      {10, 0, 20, 10},    // touches box 0 along an edge: intersection 0
      {0, 0, 10, 10},     // identical to box 0
  };
  for (auto dtype : {at::kFloat, at::kDouble, at::kHalf}) {
    const auto out = box_iou(from_boxes(a, dtype), from_boxes(a, dtype));
    const auto got = to_vec(out);
    const int64_t n = static_cast<int64_t>(a.size());
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < n; ++j) {
        const double g = got[i * n + j];
        CHECK(!std::isnan(g), c10::str(dtype, " iou[", i, ",", j, "] is NaN"));
        const bool degenerate_i = i >= 1 && i <= 5, degenerate_j = j >= 1 && j <= 5;
        if (degenerate_i || degenerate_j)
          CHECK(g == 0.0, c10::str(dtype, " degenerate pair iou[", i, ",", j, "] = ", g));
        else
          CHECK(std::fabs(g - naive_iou(a[i], a[j])) <= 1e-3,
                c10::str(dtype, " iou[", i, ",", j, "] = ", g, ", naive ", naive_iou(a[i], a[j])));
      }
    CHECK(got[0 * n + 7] == 1.0 && got[7 * n + 0] == 1.0, c10::str(dtype, " identical boxes"));
    CHECK(got[0 * n + 6] == 0.0, c10::str(dtype, " edge-touching boxes: ", got[0 * n + 6]));
  }
  g_case = "box_iou empty";
  const auto e1 = box_iou(at::zeros({0, 4}), at::rand({5, 4}));
  CHECK(e1.sizes() == at::IntArrayRef({0, 5}), c10::str("shape ", e1.sizes()));
  const auto e2 = box_iou(at::rand({3, 4}), at::zeros({0, 4}));
  CHECK(e2.sizes() == at::IntArrayRef({3, 0}), c10::str("shape ", e2.sizes()));
}

}  // namespace dynrcnn_test
