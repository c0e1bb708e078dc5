// C++ test of the dynrcnn CPU kernels, built by CMakeLists.txt and run by ctest.
//
// The ops are called the way a libtorch user calls them: through c10::Dispatcher, by schema
// name, with nothing but libdynrcnn_ops.so linked in. Every output is compared against
// naive scalar loops written here from the op definitions (DESIGN.md "Op contracts",
// dynrcnn/ops/_reference.py), in double precision and independently of csrc/ops/box_math.h:
// IoU, max/argmax with ties to the lowest index, k-th order statistics by std::sort, the
// BoxCoder regression error, SmoothL1 and its derivative.
//
// No test framework: CHECK counts failures, main() returns non-zero if there were any.
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

namespace {

int g_checks = 0;
int g_failures = 0;
std::string g_case;  // the case being checked, printed with each failure

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

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// ----------------------------------------------------------------------------------------
// The operators, through the dispatcher.

using MatchOut = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

c10::OperatorHandle op_handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "");
}

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

// ----------------------------------------------------------------------------------------
// Naive references, straight from the definitions, in double.

using Box = std::array<double, 4>;  // x1, y1, x2, y2

double naive_iou(const Box& a, const Box& b) {
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
double naive_regression_error(const Box& p, const Box& g, double wx, double wy) {
  const double pw = p[2] - p[0], ph = p[3] - p[1];
  const double pcx = p[0] + 0.5 * pw, pcy = p[1] + 0.5 * ph;
  const double gcx = (g[0] + g[2]) / 2, gcy = (g[1] + g[3]) / 2;
  const double dx = wx * (gcx - pcx) / pw;
  const double dy = wy * (gcy - pcy) / ph;
  return (std::fabs(dx) + std::fabs(dy)) / 2;
}

// k-th largest / smallest (1-based, k clamped to the size) by a full sort; NaN if empty.
double naive_kth(std::vector<double> v, int64_t k, bool largest) {
  if (v.empty()) return kNaN;
  if (largest) {
    std::sort(v.begin(), v.end(), std::greater<double>());
  } else {
    std::sort(v.begin(), v.end());
  }
  return v[std::min<int64_t>(k, static_cast<int64_t>(v.size())) - 1];
}

double naive_smooth_l1(double d, double beta) {
  const double ad = std::fabs(d);
  if (beta <= 1e-6) return ad;  // L1
  return ad < beta ? 0.5 * d * d / beta : ad - 0.5 * beta;
}

double naive_smooth_l1_grad(double d, double beta) {
  const double sign = d > 0 ? 1.0 : (d < 0 ? -1.0 : 0.0);
  if (beta <= 1e-6) return sign;
  return std::fabs(d) < beta ? d / beta : sign;
}

// ----------------------------------------------------------------------------------------
// Tensor helpers.

std::vector<double> to_vec(const at::Tensor& t) {
  const auto d = t.to(at::kDouble).contiguous();
  const double* p = d.data_ptr<double>();
  return std::vector<double>(p, p + d.numel());
}

std::vector<int64_t> to_vec_long(const at::Tensor& t) {
  const auto d = t.to(at::kLong).contiguous();
  const int64_t* p = d.data_ptr<int64_t>();
  return std::vector<int64_t>(p, p + d.numel());
}

std::vector<Box> to_boxes(const at::Tensor& t) {
  const auto v = to_vec(t);
  std::vector<Box> out(v.size() / 4);
  for (size_t i = 0; i < out.size(); ++i)
    for (int c = 0; c < 4; ++c) out[i][c] = v[4 * i + c];
  return out;
}

at::Tensor from_boxes(const std::vector<Box>& boxes, at::ScalarType dtype) {
  auto t = at::empty({static_cast<int64_t>(boxes.size()), 4}, at::kDouble);
  double* p = t.data_ptr<double>();
  for (size_t i = 0; i < boxes.size(); ++i)
    for (int c = 0; c < 4; ++c) p[4 * i + c] = boxes[i][c];
  return t.to(dtype);
}

at::Tensor from_vec(const std::vector<double>& v, at::IntArrayRef shape, at::ScalarType dtype) {
  auto t = at::empty({static_cast<int64_t>(v.size())}, at::kDouble);
  std::copy(v.begin(), v.end(), t.data_ptr<double>());
  return t.reshape(shape).to(dtype);
}

at::Tensor splits_tensor(const std::vector<int64_t>& s) {
  auto t = at::empty({static_cast<int64_t>(s.size())}, at::kLong);
  std::copy(s.begin(), s.end(), t.data_ptr<int64_t>());
  return t;
}

bool same_or_both_nan(double a, double b, double tol) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
  return std::fabs(a - b) <= tol;
}

// Tolerance for IoU-like values. max_iou is float32 output whatever the input dtype.
double iou_tol(at::ScalarType dtype) { return dtype == at::kDouble ? 2e-7 : 2e-6; }

std::mt19937 g_rng(20200823);  // fixed seed: the test is deterministic

double uniform(double lo, double hi) { return std::uniform_real_distribution<double>(lo, hi)(g_rng); }
double normal(double mean, double sd) { return std::normal_distribution<double>(mean, sd)(g_rng); }

Box random_box(double canvas, double min_size, double max_size) {
  const double x1 = uniform(0, canvas), y1 = uniform(0, canvas);
  return {x1, y1, x1 + uniform(min_size, max_size), y1 + uniform(min_size, max_size)};
}

// ----------------------------------------------------------------------------------------
// box_iou

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

// ----------------------------------------------------------------------------------------
// dynamic_match

struct ImageSpec {
  int64_t num_proposals;
  int64_t num_gt;
};

struct MatchCase {
  std::string name;
  std::vector<ImageSpec> images;
  at::ScalarType dtype = at::kFloat;
  double thr = 0.5;
  int64_t k_iou = 75;
  int64_t k_err = 10;
  std::vector<double> weights = {10.0, 10.0, 5.0, 5.0};
  bool degenerate = false;  // add degenerate / NaN proposals and a degenerate gt
  double jitter_fraction = 0.65;  // proposals that are jittered gt copies (the rest: anywhere)
};

struct MatchData {
  std::vector<Box> proposals, gts;
  std::vector<int64_t> ps, gs;  // splits
};

MatchData make_match_data(const MatchCase& c) {
  MatchData d;
  d.ps = {0};
  d.gs = {0};
  for (const auto& img : c.images) {
    const size_t g0 = d.gts.size();
    for (int64_t j = 0; j < img.num_gt; ++j) d.gts.push_back(random_box(80, 4, 40));
    // An exact duplicate of the image's first gt (ties must go to the lowest index) and,
    // in degenerate cases, a zero-height gt.
    if (img.num_gt >= 3) d.gts[g0 + img.num_gt - 1] = d.gts[g0];
    if (c.degenerate && img.num_gt >= 3) d.gts[g0 + 1][3] = d.gts[g0 + 1][1];
    for (int64_t i = 0; i < img.num_proposals; ++i) {
      Box p;
      if (img.num_gt > 0 && uniform(0, 1) < c.jitter_fraction) {  // a jittered copy of one gt
        const auto pick = std::uniform_int_distribution<int64_t>(0, img.num_gt - 1)(g_rng);
        const Box& g = d.gts[g0 + static_cast<size_t>(pick)];
        const double w = g[2] - g[0], h = g[3] - g[1];
        const double s = uniform(0.01, 0.25);
        p = {g[0] + normal(0, s * w), g[1] + normal(0, s * h), g[2] + normal(0, s * w),
             g[3] + normal(0, s * h)};
      } else {  // anywhere (often overlapping nothing: IoU 0 with every gt)
        p = random_box(120, 2, 40);
      }
      if (i % 50 == 7 && img.num_gt > 0) p = d.gts[g0];  // exact copy: IoU 1, error 0
      if (c.degenerate) {
        if (i % 17 == 3) p[2] = p[0];  // zero width: error is not finite
        if (i % 19 == 5) std::swap(p[1], p[3]);  // negative height: IoU 0, finite error
        if (i % 23 == 11) p[0] = kNaN;  // NaN: IoU 0, error NaN
      }
      d.proposals.push_back(p);
    }
    d.ps.push_back(static_cast<int64_t>(d.proposals.size()));
    d.gs.push_back(static_cast<int64_t>(d.gts.size()));
  }
  return d;
}

struct MatchCounts {
  int64_t near_ties = 0;
  int64_t near_threshold = 0;
};

MatchCounts check_match(const MatchCase& c, const MatchData& data, bool per_image,
                        const MatchOut& out) {
  MatchCounts counts;
  const auto& [t_matched, t_max_iou, t_labels, t_kth_iou, t_kth_err] = out;
  const int64_t n = static_cast<int64_t>(data.proposals.size());
  const int64_t num_images = static_cast<int64_t>(c.images.size());
  CHECK(t_matched.scalar_type() == at::kLong && t_matched.sizes() == at::IntArrayRef({n}),
        c10::str("matched_idxs ", t_matched.scalar_type(), t_matched.sizes()));
  CHECK(t_max_iou.scalar_type() == at::kFloat && t_max_iou.sizes() == at::IntArrayRef({n}),
        c10::str("max_iou ", t_max_iou.scalar_type(), t_max_iou.sizes()));
  CHECK(t_labels.scalar_type() == at::kLong && t_labels.sizes() == at::IntArrayRef({n}),
        c10::str("labels ", t_labels.scalar_type(), t_labels.sizes()));
  const auto stat_shape = per_image ? std::vector<int64_t>{num_images} : std::vector<int64_t>{};
  CHECK(t_kth_iou.scalar_type() == at::kFloat && t_kth_iou.sizes() == at::IntArrayRef(stat_shape),
        c10::str("kth_iou ", t_kth_iou.scalar_type(), t_kth_iou.sizes()));
  CHECK(t_kth_err.scalar_type() == at::kFloat && t_kth_err.sizes() == at::IntArrayRef(stat_shape),
        c10::str("kth_err ", t_kth_err.scalar_type(), t_kth_err.sizes()));
  if (g_failures > 0 && t_matched.numel() != n) return counts;

  const auto matched = to_vec_long(t_matched);
  const auto max_iou = to_vec(t_max_iou);
  const auto labels = to_vec_long(t_labels);
  const auto kth_iou = to_vec(t_kth_iou);
  const auto kth_err = to_vec(t_kth_err);
  const double thr = static_cast<double>(static_cast<float>(c.thr));  // iou_thr is float32
  const double tol = iou_tol(c.dtype);
  const double wx = c.weights[0], wy = c.weights[1];

  // Per proposal: the naive best IoU and the fg decision; kernel and naive labels can only
  // legitimately differ when the two IoUs straddle the threshold within rounding.
  std::vector<double> naive_max(n, 0.0), naive_err(n, kNaN);
  std::vector<bool> fg(n, false);
  int bad = 0;
  for (int64_t b = 0; b < num_images; ++b) {
    const int64_t g0 = data.gs[b], ng = data.gs[b + 1] - data.gs[b];
    for (int64_t i = data.ps[b]; i < data.ps[b + 1]; ++i) {
      if (ng == 0) {
        CHECK(matched[i] == -1 && max_iou[i] == 0.0 && labels[i] == 0,
              c10::str("image ", b, " has no gt: proposal ", i, " got matched ", matched[i],
                       " max_iou ", max_iou[i], " label ", labels[i]));
        continue;
      }
      std::vector<double> ious(ng);
      int64_t best_j = 0;
      for (int64_t j = 0; j < ng; ++j) {
        ious[j] = naive_iou(data.proposals[i], data.gts[g0 + j]);
        if (ious[j] > ious[best_j]) best_j = j;  // strict: ties keep the lowest index
      }
      const double best = ious[best_j];
      naive_max[i] = best;
      const int64_t kj = matched[i] - g0;
      bool idx_ok = kj == best_j;
      if (!idx_ok && kj >= 0 && kj < ng && ious[kj] != best && std::fabs(ious[kj] - best) <= tol) {
        idx_ok = true;  // two different IoUs within rounding of each other
        ++counts.near_ties;
      }
      if (!idx_ok && ++bad <= 5)
        CHECK(false, c10::str("proposal ", i, " (image ", b, "): matched ", matched[i],
                              ", naive ", g0 + best_j, " (iou ",
                              (kj >= 0 && kj < ng) ? ious[kj] : kNaN, " vs ", best, ")"));
      if (!(std::fabs(max_iou[i] - best) <= tol) && ++bad <= 5)
        CHECK(false, c10::str("proposal ", i, ": max_iou ", max_iou[i], ", naive ", best));
      const bool naive_fg = best >= thr;
      const bool kernel_fg = labels[i] == 1;
      // Ambiguous only if the two IoUs differ by rounding and straddle thr (an IoU of
      // exactly 0 against thr 0 is not ambiguous: that proposal must be foreground).
      const bool straddle = std::fabs(best - thr) <= tol && best != max_iou[i];
      if (naive_fg != kernel_fg && straddle) {
        ++counts.near_threshold;  // either label is right; follow the kernel
      } else if (naive_fg != kernel_fg && ++bad <= 5) {
        CHECK(false, c10::str("proposal ", i, ": label ", labels[i], ", naive ", naive_fg,
                              " (iou ", best, ", thr ", thr, ")"));
      }
      CHECK(labels[i] == 0 || labels[i] == 1, c10::str("label ", labels[i]));
      fg[i] = straddle ? kernel_fg : naive_fg;
      naive_err[i] = naive_regression_error(data.proposals[i], data.gts[g0 + best_j], wx, wy);
    }
  }
  CHECK(bad == 0, c10::str(bad, " per-proposal outputs differ from the naive loop"));

  // Order statistics over each scope (the batch, or each image).
  const int64_t num_scopes = per_image ? num_images : 1;
  for (int64_t s = 0; s < num_scopes; ++s) {
    const int64_t b0 = per_image ? s : 0, b1 = per_image ? s + 1 : num_images;
    std::vector<double> iou_pop, err_pop;
    for (int64_t b = b0; b < b1; ++b) {
      if (data.gs[b + 1] == data.gs[b]) continue;  // images without gt: in no population
      for (int64_t i = data.ps[b]; i < data.ps[b + 1]; ++i) {
        iou_pop.push_back(naive_max[i]);
        if (fg[i] && std::isfinite(naive_err[i])) err_pop.push_back(naive_err[i]);
      }
    }
    const double want_iou = naive_kth(iou_pop, c.k_iou, /*largest=*/true);
    const double want_err = naive_kth(err_pop, c.k_err, /*largest=*/false);
    // kth_err is float32 whatever the input dtype; float inputs also compute it in float.
    const double err_tol =
        (c.dtype == at::kDouble ? 2e-7 : 1e-4) * (1.0 + (std::isnan(want_err) ? 0 : want_err));
    CHECK(same_or_both_nan(kth_iou[s], want_iou, tol),
          c10::str("kth_iou[", s, "] = ", kth_iou[s], ", naive ", want_iou, " (k=", c.k_iou,
                   " of ", iou_pop.size(), ")"));
    CHECK(same_or_both_nan(kth_err[s], want_err, err_tol),
          c10::str("kth_err[", s, "] = ", kth_err[s], ", naive ", want_err, " (k=", c.k_err,
                   " of ", err_pop.size(), ")"));
  }
  return counts;
}

void run_match_case(const MatchCase& c) {
  const MatchData data = make_match_data(c);
  const auto P = from_boxes(data.proposals, c.dtype);
  const auto G = from_boxes(data.gts, c.dtype);
  // The naive loops use exactly the values the kernel sees (after rounding to dtype).
  MatchData rounded = data;
  rounded.proposals = to_boxes(P);
  rounded.gts = to_boxes(G);
  const auto thr = at::scalar_tensor(c.thr, at::kFloat);
  for (bool per_image : {false, true}) {
    g_case = c10::str("dynamic_match ", c.name, " ", c.dtype, per_image ? " per_image" : " batch");
    const auto out = dynamic_match(P, G, splits_tensor(data.ps), splits_tensor(data.gs), thr,
                                   c.k_iou, c.k_err, c.weights, per_image);
    const auto counts = check_match(c, rounded, per_image, out);
    if (counts.near_ties || counts.near_threshold)
      std::printf("  note [%s]: %lld argmax near-ties, %lld labels within rounding of thr\n",
                  g_case.c_str(), static_cast<long long>(counts.near_ties),
                  static_cast<long long>(counts.near_threshold));
  }
}

void test_dynamic_match() {
  // The brief's batch: 3 images, one without gt and one without proposals.
  const std::vector<ImageSpec> three = {{300, 7}, {120, 0}, {0, 4}};
  const std::vector<ImageSpec> four = {{250, 9}, {0, 3}, {90, 0}, {180, 3}};
  for (auto dtype : {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16}) {
    MatchCase c;
    c.name = "3 images";
    c.images = three;
    c.dtype = dtype;
    run_match_case(c);
  }
  {
    MatchCase c;
    c.name = "4 images, asymmetric weights, thr 0.6";
    c.images = four;
    c.thr = 0.6;
    c.k_iou = 40;
    c.k_err = 7;
    c.weights = {7.0, 3.0, 1.0, 1.0};
    run_match_case(c);
  }
  {
    MatchCase c;
    c.name = "k = 1";
    c.images = four;
    c.k_iou = 1;
    c.k_err = 1;
    run_match_case(c);
  }
  {
    MatchCase c;
    c.name = "k larger than the populations (clamped)";
    c.images = three;
    c.k_iou = 1000000;
    c.k_err = 1000000;
    run_match_case(c);
  }
  for (auto dtype : {at::kFloat, at::kDouble}) {
    MatchCase c;
    c.name = "degenerate boxes, thr 0 (every proposal of an image with gt is fg)";
    c.images = three;
    c.dtype = dtype;
    c.thr = 0.0;
    c.degenerate = true;
    run_match_case(c);
    c.name = "degenerate boxes, thr 0.5";
    c.thr = 0.5;
    run_match_case(c);
  }
  {
    // Every proposal of image 0 overlaps a gt: were the 0-IoU proposals of the image without
    // gt counted, the batch's 60th largest IoU would drop to 0.
    MatchCase c;
    c.name = "images without gt are outside the batch population";
    c.images = {{60, 3}, {80, 0}};
    c.jitter_fraction = 1.0;
    c.k_iou = 60;
    run_match_case(c);
  }
  {
    MatchCase c;
    c.name = "thr above 1: no foreground, kth_err NaN";
    c.images = three;
    c.thr = 1.5;
    run_match_case(c);
  }
  {
    MatchCase c;
    c.name = "no gt anywhere";
    c.images = {{50, 0}, {30, 0}};
    run_match_case(c);
  }
  {
    MatchCase c;
    c.name = "no proposals";
    c.images = {{0, 3}, {0, 0}};
    run_match_case(c);
  }
  {
    MatchCase c;
    c.name = "no images";
    c.images = {};
    run_match_case(c);
  }
  {
    MatchCase c;
    c.name = "many gt per image";
    c.images = {{400, 60}, {200, 33}};
    c.k_iou = 150;
    c.k_err = 20;
    run_match_case(c);
  }

  // The result does not depend on the number of threads (a batch big enough to be split).
  g_case = "dynamic_match thread-count invariance";
  MatchCase big;
  big.images = {{3000, 5}, {2500, 0}, {2000, 12}};
  const MatchData data = make_match_data(big);
  const auto P = from_boxes(data.proposals, at::kFloat), G = from_boxes(data.gts, at::kFloat);
  const int threads = at::get_num_threads();
  std::vector<MatchOut> outs;
  for (int t : {1, 3}) {
    at::set_num_threads(t);
    outs.push_back(dynamic_match(P, G, splits_tensor(data.ps), splits_tensor(data.gs),
                                 at::scalar_tensor(0.5, at::kFloat), 150, 20, big.weights, false));
  }
  at::set_num_threads(threads);
  CHECK(at::equal(std::get<0>(outs[0]), std::get<0>(outs[1])), "matched_idxs differ");
  CHECK(at::equal(std::get<1>(outs[0]), std::get<1>(outs[1])), "max_iou differs");
  CHECK(at::equal(std::get<2>(outs[0]), std::get<2>(outs[1])), "labels differ");
  CHECK(at::equal(std::get<3>(outs[0]), std::get<3>(outs[1])), "kth_iou differs");
  CHECK(at::equal(std::get<4>(outs[0]), std::get<4>(outs[1])), "kth_err differs");
  big.name = "large batch";
  run_match_case(big);
}

// ----------------------------------------------------------------------------------------
std::tuple<at::Tensor, at::Tensor> dynamic_smooth_l1_with_grad(
    const at::Tensor& input, const at::Tensor& target, const at::Tensor& beta,
    const std::optional<at::Tensor>& weight, int64_t reduction) {
  static auto op = op_handle("dynrcnn::dynamic_smooth_l1_with_grad")
                       .typed<std::tuple<at::Tensor, at::Tensor>(
                           const at::Tensor&, const at::Tensor&, const at::Tensor&,
                           const std::optional<at::Tensor>&, int64_t)>();
  return op.call(input, target, beta, weight, reduction);
}

// dynamic_smooth_l1, its backward, and the one-pass forward+backward

const char* reduction_name(int64_t r) { return r == 0 ? "none" : r == 1 ? "mean" : "sum"; }

void check_smooth_l1(at::ScalarType dtype, const std::vector<int64_t>& shape, double beta_value,
                     bool weighted, bool noncontiguous) {
  int64_t n = 1;
  for (auto s : shape) n *= s;
  std::vector<double> x(n), t(n), w(n), go(n);
  for (int64_t i = 0; i < n; ++i) {
    x[i] = normal(0, 1.5);
    // Differences at every scale around beta, and some exactly zero.
    const double scale = std::pow(10.0, uniform(-7, 0.5));
    t[i] = i % 13 == 0 ? x[i] : x[i] + normal(0, scale);
    w[i] = uniform(0, 2);
    go[i] = normal(0, 1);
  }
  auto tx = from_vec(x, shape, dtype), tt = from_vec(t, shape, dtype);
  auto tw = from_vec(w, shape, dtype);
  if (noncontiguous && shape.size() == 2) {  // same logical values, transposed storage
    tx = tx.t().contiguous().t();
    tt = tt.t().contiguous().t();
    tw = tw.t().contiguous().t();
  }
  const auto beta = at::scalar_tensor(beta_value, at::kFloat);
  const double b = static_cast<double>(static_cast<float>(beta_value));
  const std::optional<at::Tensor> weight =
      weighted ? std::optional<at::Tensor>(tw) : std::optional<at::Tensor>();
  // Naive values from exactly what the kernel sees.
  const auto xv = to_vec(tx), tv = to_vec(tt), wv = to_vec(tw);
  const bool low = dtype == at::kHalf || dtype == at::kBFloat16;
  const double rtol = dtype == at::kDouble ? 1e-12 : low ? (dtype == at::kHalf ? 2e-3 : 1.6e-2) : 2e-6;
  const double atol = dtype == at::kDouble ? 1e-14 : 1e-7;

  for (int64_t reduction : {0, 1, 2}) {
    g_case = c10::str("dynamic_smooth_l1 ", dtype, " n=", n, " beta=", beta_value,
                      weighted ? " weighted" : "", noncontiguous ? " non-contiguous" : "",
                      " reduction=", reduction_name(reduction));
    const auto loss = dynamic_smooth_l1(tx, tt, beta, weight, reduction);
    CHECK(loss.scalar_type() == dtype, c10::str("dtype ", loss.scalar_type()));
    std::vector<double> terms(n);
    double total = 0, magnitude = 0;
    for (int64_t i = 0; i < n; ++i) {
      terms[i] = naive_smooth_l1(xv[i] - tv[i], b) * (weighted ? wv[i] : 1.0);
      total += terms[i];
      magnitude += std::fabs(terms[i]);
    }
    if (reduction == 0) {
      CHECK(loss.sizes() == tx.sizes(), c10::str("shape ", loss.sizes(), " vs ", tx.sizes()));
      const auto got = to_vec(loss);
      int bad = 0;
      for (int64_t i = 0; i < n && i < static_cast<int64_t>(got.size()); ++i)
        if (!(std::fabs(got[i] - terms[i]) <= rtol * std::fabs(terms[i]) + atol) && ++bad <= 5)
          CHECK(false, c10::str("loss[", i, "] = ", got[i], ", naive ", terms[i], " (diff ",
                                xv[i] - tv[i], ")"));
      CHECK(bad == 0, c10::str(bad, " elements differ from the naive loop"));
    } else {
      CHECK(loss.dim() == 0, c10::str("reduced loss has shape ", loss.sizes()));
      const double want = reduction == 1 ? (n > 0 ? total / n : kNaN) : total;
      const double scale = reduction == 1 && n > 0 ? magnitude / n : magnitude;
      // A float sum of n terms is good to about n * eps relative to the sum of |terms|.
      const double sum_tol = (dtype == at::kDouble ? 1e-12 : low ? rtol : 1e-5) * scale + atol;
      const double got = loss.to(at::kDouble).item<double>();
      CHECK(same_or_both_nan(got, want, sum_tol),
            c10::str("loss ", got, ", naive ", want, " (tol ", sum_tol, ")"));
    }

    g_case = c10::str("dynamic_smooth_l1_backward ", dtype, " n=", n, " beta=", beta_value,
                      weighted ? " weighted" : "", noncontiguous ? " non-contiguous" : "",
                      " reduction=", reduction_name(reduction));
    const double g_scalar = 0.75;
    const auto grad_out = reduction == 0 ? from_vec(go, shape, dtype)
                                         : at::scalar_tensor(g_scalar, dtype);
    const auto gov = to_vec(grad_out);
    const auto grad = dynamic_smooth_l1_backward(grad_out, tx, tt, beta, weight, reduction);
    CHECK(grad.sizes() == tx.sizes(), c10::str("grad shape ", grad.sizes()));
    CHECK(grad.scalar_type() == dtype, c10::str("grad dtype ", grad.scalar_type()));
    const auto got = to_vec(grad);
    int bad = 0;
    for (int64_t i = 0; i < n && i < static_cast<int64_t>(got.size()); ++i) {
      double want = naive_smooth_l1_grad(xv[i] - tv[i], b) * (weighted ? wv[i] : 1.0);
      want *= reduction == 0 ? gov[i] : gov[0];
      if (reduction == 1) want /= static_cast<double>(n);
      if (!(std::fabs(got[i] - want) <= rtol * std::fabs(want) + atol) && ++bad <= 5)
        CHECK(false, c10::str("grad[", i, "] = ", got[i], ", naive ", want, " (diff ",
                              xv[i] - tv[i], ")"));
    }
    CHECK(bad == 0, c10::str(bad, " gradient elements differ from the naive loop"));

    if (reduction == 0) continue;
    // The one-pass kernel: the forward's loss and the backward's gradient (grad_output 1),
    // bit for bit.
    g_case = c10::str("dynamic_smooth_l1_with_grad ", dtype, " n=", n, " beta=", beta_value,
                      weighted ? " weighted" : "", noncontiguous ? " non-contiguous" : "",
                      " reduction=", reduction_name(reduction));
    const auto [fused_loss, fused_grad] =
        dynamic_smooth_l1_with_grad(tx, tt, beta, weight, reduction);
    const auto unit_grad = dynamic_smooth_l1_backward(at::scalar_tensor(1.0, dtype), tx, tt,
                                                      beta, weight, reduction);
    CHECK(fused_loss.dim() == 0 && fused_grad.sizes() == tx.sizes(),
          c10::str("shapes ", fused_loss.sizes(), " / ", fused_grad.sizes()));
    CHECK(at::equal(fused_loss, loss) || (n == 0 && reduction == 1),
          c10::str("loss ", fused_loss.to(at::kDouble).item<double>(), " vs forward ",
                   loss.to(at::kDouble).item<double>()));
    CHECK(at::equal(fused_grad, unit_grad), "gradient differs from the backward kernel's");
  }
}

void test_smooth_l1() {
  for (double beta : {1.0, 0.11, 1e-3, 1e-5, 1e-7, 0.0}) {  // 1e-7 and 0: L1
    for (bool weighted : {false, true}) {
      check_smooth_l1(at::kFloat, {1031, 4}, beta, weighted, false);
      check_smooth_l1(at::kDouble, {1031, 4}, beta, weighted, false);
    }
  }
  // More than one 32768-element chunk of the deterministic sum.
  check_smooth_l1(at::kFloat, {100003}, 0.11, false, false);
  check_smooth_l1(at::kFloat, {100003}, 1.0, true, false);
  check_smooth_l1(at::kFloat, {257, 4}, 0.5, true, true);
  check_smooth_l1(at::kHalf, {513, 4}, 0.5, true, false);
  check_smooth_l1(at::kBFloat16, {513, 4}, 1e-7, false, false);
  check_smooth_l1(at::kFloat, {0, 4}, 1.0, true, false);  // empty: sum 0, mean NaN
  check_smooth_l1(at::kFloat, {1}, 0.2, false, false);

  // The reduced loss does not depend on the number of threads (fixed chunking).
  g_case = "dynamic_smooth_l1 thread-count invariance";
  const auto x = at::randn({300007}, at::kFloat), t = at::randn({300007}, at::kFloat);
  const auto beta = at::scalar_tensor(0.11, at::kFloat);
  const int threads = at::get_num_threads();
  std::vector<at::Tensor> sums;
  for (int n_threads : {1, 3}) {
    at::set_num_threads(n_threads);
    sums.push_back(dynamic_smooth_l1(x, t, beta, std::nullopt, 2));
  }
  at::set_num_threads(threads);
  CHECK(at::equal(sums[0], sums[1]),
        c10::str("sum with 1 thread ", sums[0].item<float>(), " vs 3 threads ", sums[1].item<float>()));
}

// ----------------------------------------------------------------------------------------
// Registration and argument checks

template <typename F>
bool throws(F&& f) {
  try {
    f();
  } catch (const c10::Error&) {
    return true;
  }
  return false;
}

bool test_registration() {
  g_case = "registration";
  const int failures_before = g_failures;
  for (const char* name : {"dynrcnn::box_iou", "dynrcnn::dynamic_match", "dynrcnn::dynamic_smooth_l1",
                           "dynrcnn::dynamic_smooth_l1_backward",
                           "dynrcnn::dynamic_smooth_l1_with_grad"}) {
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

}  // namespace

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
