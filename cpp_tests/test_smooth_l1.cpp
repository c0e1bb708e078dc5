// dynamic_smooth_l1, its backward, and the one-pass forward+backward against the naive
// SmoothL1 and its derivative: dtypes, betas down to L1, weights, reductions, layouts, sizes
// past one chunk of the deterministic sum, and thread counts.
#include "test_common.h"

namespace dynrcnn_test {
namespace {

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

}  // namespace

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

}  // namespace dynrcnn_test
