// dynamic_match against naive loops: matched index, best IoU and label per proposal, and the
// k-th order statistics per batch or per image, over dtypes, k, thresholds, degenerate boxes,
// empty images and batches, and thread counts.
#include "test_common.h"

namespace dynrcnn_test {
namespace {

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

}  // namespace

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

}  // namespace dynrcnn_test
