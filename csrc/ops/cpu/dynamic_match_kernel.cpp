// dynamic_match on the CPU: one parallel pass over all proposals of the batch (each thread
// walks a contiguous range, which may span images), then the k-th order statistics with
// std::nth_element (linear time, no full sort).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <tuple>
#include <vector>

#include "ops/box_math.h"
#include "ops/checks.h"
#include "ops/cpu/iou_row.h"

namespace dynrcnn {
namespace ops {
namespace {

using MatchOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// Validated split offsets of one batch, read into host vectors.
std::vector<int64_t> read_splits(const at::Tensor& splits, int64_t total, const char* name,
                                 const char* total_name) {
  const auto s = splits.contiguous();
  const int64_t* p = s.data_ptr<int64_t>();
  std::vector<int64_t> v(p, p + s.numel());
  TORCH_CHECK(v.front() == 0, "dynamic_match: ", name, " must start at 0, got ", v.front());
  TORCH_CHECK(v.back() == total, "dynamic_match: ", name, " must end at ", total_name, " = ",
              total, ", got ", v.back(), " (the splits do not add up)");
  for (size_t i = 1; i < v.size(); ++i)
    TORCH_CHECK(v[i] >= v[i - 1], "dynamic_match: ", name, " must be non-decreasing, but ",
                name, "[", i, "] = ", v[i], " < ", v[i - 1]);
  return v;
}

float kth_of(std::vector<float>& values, int64_t k, bool largest) {
  if (values.empty()) return std::numeric_limits<float>::quiet_NaN();
  const auto kk = static_cast<std::ptrdiff_t>(std::min<int64_t>(k, values.size()) - 1);
  if (largest) {
    std::nth_element(values.begin(), values.begin() + kk, values.end(), std::greater<float>());
  } else {
    std::nth_element(values.begin(), values.begin() + kk, values.end());
  }
  return values[kk];
}

template <typename scalar_t>
void match_proposals(const scalar_t* proposals, const scalar_t* gts,
                     const std::vector<int64_t>& ps, const std::vector<int64_t>& gs,
                     double thr_value, double wx_d, double wy_d, int64_t* matched,
                     float* max_iou, int64_t* labels, float* err) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t thr = static_cast<acc_t>(thr_value);
  const acc_t wx = static_cast<acc_t>(wx_d), wy = static_cast<acc_t>(wy_d);
  const int64_t n = ps.back();
  const int64_t g_total = gs.back();
  // All ground truth as structure-of-arrays in acc_t, so the inner loop vectorizes.
  std::vector<acc_t> soa(4 * g_total);
  for (int64_t j = 0; j < g_total; ++j)
    for (int c = 0; c < 4; ++c) soa[c * g_total + j] = static_cast<acc_t>(gts[4 * j + c]);
  const acc_t *gx1 = soa.data(), *gy1 = gx1 + g_total, *gx2 = gy1 + g_total,
              *gy2 = gx2 + g_total;
  int64_t max_g = 0;
  for (size_t b = 0; b + 1 < gs.size(); ++b) max_g = std::max(max_g, gs[b + 1] - gs[b]);
  const int64_t grain = std::max<int64_t>(16, 4096 / std::max<int64_t>(max_g, 1));

  at::parallel_for(0, n, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> ious(max_g);
    // Image of row `begin`: the last b with ps[b] <= begin (empty images skipped).
    int64_t b = std::upper_bound(ps.begin(), ps.end(), begin) - ps.begin() - 1;
    for (int64_t i = begin; i < end; ++i) {
      while (i >= ps[b + 1]) ++b;
      const int64_t g0 = gs[b], ng = gs[b + 1] - g0;
      if (ng == 0) {
        matched[i] = -1;
        max_iou[i] = 0.f;
        labels[i] = 0;
        err[i] = -1.f;
        continue;
      }
      const acc_t px1 = proposals[4 * i], py1 = proposals[4 * i + 1];
      const acc_t px2 = proposals[4 * i + 2], py2 = proposals[4 * i + 3];
      acc_t* iou = ious.data();
      iou_row<acc_t, acc_t>(px1, py1, px2, py2, gx1 + g0, gy1 + g0, gx2 + g0, gy2 + g0, ng, iou);
      acc_t best = acc_t(-1);
      int64_t best_j = 0;
      for (int64_t j = 0; j < ng; ++j) {
        if (iou[j] > best) {  // strict: ties keep the lowest index
          best = iou[j];
          best_j = j;
        }
      }
      const int64_t gj = g0 + best_j;
      matched[i] = gj;
      max_iou[i] = static_cast<float>(best);
      const bool fg = best >= thr;
      labels[i] = fg ? 1 : 0;
      float e = -1.f;
      if (fg) {
        const acc_t e_acc = regression_error<acc_t>(px1, py1, px2, py2, gx1[gj], gy1[gj],
                                                    gx2[gj], gy2[gj], wx, wy);
        // Finiteness is judged in acc_t, before the float32 cast (as the reference does).
        if (std::isfinite(e_acc)) e = static_cast<float>(e_acc);
      }
      err[i] = e;  // -1 marks "not in the error population" (errors are >= 0)
    }
  });
}

MatchOutputs dynamic_match_cpu(const at::Tensor& proposals, const at::Tensor& gt_boxes,
                               const at::Tensor& proposal_splits, const at::Tensor& gt_splits,
                               const at::Tensor& iou_thr, int64_t k_iou, int64_t k_err,
                               at::ArrayRef<double> weights, bool per_image) {
  constexpr auto kCPU = at::kCPU;
  check_boxes_arg("dynamic_match", "proposals", proposals, kCPU);
  check_boxes_arg("dynamic_match", "gt_boxes", gt_boxes, kCPU);
  TORCH_CHECK(proposals.scalar_type() == gt_boxes.scalar_type(), "dynamic_match: proposals are ",
              proposals.scalar_type(), " but gt_boxes are ", gt_boxes.scalar_type());
  check_splits_arg("dynamic_match", "proposal_splits", proposal_splits, kCPU);
  check_splits_arg("dynamic_match", "gt_splits", gt_splits, kCPU);
  TORCH_CHECK(proposal_splits.numel() == gt_splits.numel(),
              "dynamic_match: proposal_splits has ", proposal_splits.numel(),
              " offsets but gt_splits has ", gt_splits.numel(), " (both must be B+1)");
  check_scalar_arg("dynamic_match", "iou_thr", iou_thr, kCPU);
  TORCH_CHECK(k_iou >= 1, "dynamic_match: k_iou must be >= 1, got ", k_iou);
  TORCH_CHECK(k_err >= 1, "dynamic_match: k_err must be >= 1, got ", k_err);
  TORCH_CHECK(weights.size() == 4, "dynamic_match: weights must have 4 values, got ",
              weights.size());

  const int64_t n = proposals.size(0);
  const auto ps = read_splits(proposal_splits, n, "proposal_splits", "proposals.size(0)");
  const auto gs = read_splits(gt_splits, gt_boxes.size(0), "gt_splits", "gt_boxes.size(0)");
  const int64_t num_images = static_cast<int64_t>(ps.size()) - 1;

  const auto p = proposals.contiguous();
  const auto g = gt_boxes.contiguous();
  const auto float_opts = p.options().dtype(at::kFloat);
  auto matched = at::empty({n}, p.options().dtype(at::kLong));
  auto max_iou = at::empty({n}, float_opts);
  auto labels = at::empty({n}, p.options().dtype(at::kLong));
  std::vector<float> err(n);
  const double thr = iou_thr.item<double>();

  if (n > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.scalar_type(), "dynamic_match_cpu",
                                    [&] {
      match_proposals<scalar_t>(p.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(), ps, gs, thr,
                                weights[0], weights[1], matched.data_ptr<int64_t>(),
                                max_iou.data_ptr<float>(), labels.data_ptr<int64_t>(),
                                err.data());
    });
  }

  // Order statistics per scope: the whole batch, or each image.
  const int64_t num_scopes = per_image ? num_images : 1;
  auto kth_iou = per_image ? at::empty({num_images}, float_opts) : at::empty({}, float_opts);
  auto kth_err = per_image ? at::empty({num_images}, float_opts) : at::empty({}, float_opts);
  const float* iou_ptr = max_iou.data_ptr<float>();
  std::vector<float> iou_pop, err_pop;
  for (int64_t s = 0; s < num_scopes; ++s) {
    const int64_t b_begin = per_image ? s : 0, b_end = per_image ? s + 1 : num_images;
    iou_pop.clear();
    err_pop.clear();
    for (int64_t b = b_begin; b < b_end; ++b) {
      if (gs[b + 1] == gs[b]) continue;  // images without gt are in no population
      for (int64_t i = ps[b]; i < ps[b + 1]; ++i) {
        iou_pop.push_back(iou_ptr[i]);
        if (err[i] >= 0.f) err_pop.push_back(err[i]);
      }
    }
    kth_iou.data_ptr<float>()[s] = kth_of(iou_pop, k_iou, /*largest=*/true);
    kth_err.data_ptr<float>()[s] = kth_of(err_pop, k_err, /*largest=*/false);
  }
  return {matched, max_iou, labels, kth_iou, kth_err};
}

}  // namespace

TORCH_LIBRARY_IMPL(dynrcnn, CPU, m) {
  m.impl("dynamic_match", &dynamic_match_cpu);
}

}  // namespace ops
}  // namespace dynrcnn
