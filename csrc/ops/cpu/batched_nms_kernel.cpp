// batched_nms_topk on the CPU: torchvision.ops.batched_nms(boxes, scores, idxs, thr)[:max_keep]
// with the same kept indices in the same order, bit for bit, but with far less work.
//
// torchvision's CPU NMS compares every kept box with every later box (n^2 / 2 IoUs per
// level), although the RPN then uses only the first post_nms_top_n survivors. Here each
// candidate, in torchvision's score order, is compared with the boxes kept so far (one
// vectorized pass over a structure-of-arrays), and a level stops once it has kept one box
// more than can be used. Greedy NMS keeps a box iff no earlier kept box overlaps it by more
// than the threshold, so both formulations keep the same boxes; the overlap is computed with
// torchvision's expression, operand for operand (std::max / std::min are not symmetric in
// NaN), and compared with the threshold as torchvision does (a float against a double).
//
// Ties: torchvision's nms kernel sorts each level stably, but batched_nms then orders the
// kept boxes with torch's default sort, which is not stable on the CPU: the order of equal
// scores depends on the whole array sorted. The kernel therefore makes exactly torchvision's
// sort calls (each level's scores, then the kept scores), and uses a truncated level only when the first
// max_keep + 1 kept scores are strictly decreasing (then every sort gives that order);
// otherwise it redoes the levels in full. Which of torchvision's two paths runs (the
// coordinate offset trick for boxes.numel() <= 4000, one NMS per level above) is also
// reproduced, since the offset changes the rounding of the IoUs.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <vector>

#include "ops/cpu/cpu_target.h"

namespace dynrcnn {
namespace ops {
namespace {

// torchvision's batched_nms switches from the offset trick to per-level NMS above this many
// box coordinates on the CPU (torchvision/ops/boxes.py).
constexpr int64_t kVanillaAboveNumel = 4000;

// Largest value of T that is <= thr: for any x of type T, x > t  <=>  double(x) > thr,
// NaN included (both false), so the inner loop compares in T as torchvision compares in double.
template <typename T>
T threshold_in(double thr) {
  T t = static_cast<T>(thr);
  if (static_cast<double>(t) > thr) t = std::nextafter(t, -std::numeric_limits<T>::infinity());
  return t;
}

// The boxes a group has kept so far, as structure-of-arrays for the vectorized overlap test.
template <typename T>
struct KeptBoxes {
  std::vector<T> x1, y1, x2, y2, area;
  void reserve(size_t n) {
    for (auto* v : {&x1, &y1, &x2, &y2, &area}) v->reserve(n);
  }
  void push(T a, T b, T c, T d, T e) {
    x1.push_back(a), y1.push_back(b), x2.push_back(c), y2.push_back(d), area.push_back(e);
  }
  size_t size() const { return x1.size(); }
};

// Whether any kept box in [begin, end) overlaps candidate (cx1..cy2, carea) by more than t.
// torchvision's expression with the kept box (`i` there) as first operand, std::max(a, b)
// written out as (a < b ? b : a) and std::min(a, b) as (b < a ? b : a): the same values,
// NaN included, in a form gcc vectorizes.
template <typename T>
DYNRCNN_CPU_CLONES bool overlaps_any(const T* kx1, const T* ky1, const T* kx2, const T* ky2,
                                     const T* karea, int64_t begin, int64_t end, T cx1, T cy1,
                                     T cx2, T cy2, T carea, T t) {
  int hit = 0;
  for (int64_t k = begin; k < end; ++k) {
    const T xx1 = kx1[k] < cx1 ? cx1 : kx1[k];
    const T yy1 = ky1[k] < cy1 ? cy1 : ky1[k];
    const T xx2 = cx2 < kx2[k] ? cx2 : kx2[k];
    const T yy2 = cy2 < ky2[k] ? cy2 : ky2[k];
    const T dw = xx2 - xx1, dh = yy2 - yy1;
    const T w = T(0) < dw ? dw : T(0);
    const T h = T(0) < dh ? dh : T(0);
    const T inter = w * h;
    const T ovr = inter / (karea[k] + carea - inter);
    hit |= ovr > t;
  }
  return hit != 0;
}

// Greedy NMS over `order` (rows of `b` in score order), each row compared only with the
// kept rows of its own group (group[row]: 0 .. groups-1); stops after `stop` kept in all.
// Returns the kept rows in order.
template <typename T>
std::vector<int64_t> nms_in_order(const T* b, const T* areas, const std::vector<int64_t>& order,
                                  const std::vector<int32_t>& group, int32_t groups, T t,
                                  int64_t stop) {
  std::vector<KeptBoxes<T>> kept(groups);
  std::vector<int64_t> rows;
  constexpr int64_t kBlock = 64;  // test in blocks: a suppressed box stops early
  for (const int64_t i : order) {
    if (static_cast<int64_t>(rows.size()) >= stop) break;
    auto& k = kept[group[i]];
    const T cx1 = b[4 * i], cy1 = b[4 * i + 1], cx2 = b[4 * i + 2], cy2 = b[4 * i + 3];
    const T carea = areas[i];
    const int64_t n = static_cast<int64_t>(k.size());
    bool suppressed = false;
    for (int64_t s = 0; s < n && !suppressed; s += kBlock)
      suppressed = overlaps_any<T>(k.x1.data(), k.y1.data(), k.x2.data(), k.y2.data(),
                                   k.area.data(), s, std::min(n, s + kBlock), cx1, cy1, cx2,
                                   cy2, carea, t);
    if (suppressed) continue;
    k.push(cx1, cy1, cx2, cy2, carea);
    rows.push_back(i);
  }
  return rows;
}

// The order of scores[rows] by a descending sort, as global rows: stable in torchvision's
// nms kernel (each level), not stable in batched_nms' final `.sort(descending=True)`.
std::vector<int64_t> score_order(const at::Tensor& scores, const std::vector<int64_t>& rows,
                                 bool stable) {
  const auto idx = at::tensor(rows, scores.options().dtype(at::kLong));
  const auto order_t = std::get<1>(
      scores.index_select(0, idx).sort(/*stable=*/stable, /*dim=*/0, /*descending=*/true));
  const int64_t* o = order_t.data_ptr<int64_t>();
  std::vector<int64_t> out(rows.size());
  for (size_t k = 0; k < rows.size(); ++k) out[k] = rows[o[k]];
  return out;
}

// (x2 - x1) * (y2 - y1) per row, as torchvision's areas tensor.
template <typename T>
std::vector<T> box_areas(const T* b, int64_t n) {
  std::vector<T> a(n);
  for (int64_t i = 0; i < n; ++i) a[i] = (b[4 * i + 2] - b[4 * i]) * (b[4 * i + 3] - b[4 * i + 1]);
  return a;
}

// The offset-trick path: one NMS over boxes shifted by idx * (max coordinate + 1).
template <typename T>
std::vector<int64_t> nms_offset_trick(const at::Tensor& boxes, const at::Tensor& scores,
                                      const at::Tensor& idxs, T t, int64_t limit) {
  // The same tensor ops as torchvision's _batched_nms_coordinate_trick, so the same roundings
  // (and NaN everywhere if any coordinate is NaN).
  const auto max_coordinate = boxes.max();
  const auto offsets = idxs.to(boxes.scalar_type()) *
                       (max_coordinate + at::scalar_tensor(1, boxes.options()));
  const auto shifted = (boxes + offsets.unsqueeze(1)).contiguous();
  const int64_t n = boxes.size(0);
  std::vector<int64_t> all(n);
  for (int64_t i = 0; i < n; ++i) all[i] = i;
  const T* b = shifted.data_ptr<T>();
  const auto areas = box_areas(b, n);
  const std::vector<int32_t> one_group(n, 0);
  return nms_in_order<T>(b, areas.data(), score_order(scores, all, /*stable=*/true), one_group,
                         1, t, limit);
}

// The per-level path (torchvision's _batched_nms_vanilla). All levels are walked at once in
// the stable score order of the whole batch, which restricted to a level is that level's
// own stable order (torchvision's nms sort), and the walk stops after `stop` kept boxes in
// all. Returns the kept rows in torchvision's final order, and whether that order is
// certain to be torchvision's (see the file comment).
template <typename T>
std::vector<int64_t> nms_per_level(const std::vector<int32_t>& level, int32_t levels,
                                   const T* b, const T* areas, const at::Tensor& scores,
                                   const std::vector<int64_t>& order, T t, int64_t limit,
                                   int64_t stop, bool* exact) {
  auto keep = nms_in_order<T>(b, areas, order, level, levels, t, stop);
  const bool truncated = static_cast<int64_t>(keep.size()) >= stop;
  std::sort(keep.begin(), keep.end());  // torch.where(keep_mask): ascending rows
  auto ordered = score_order(scores, keep, /*stable=*/false);
  *exact = true;
  if (truncated) {
    // Certain only if the first limit + 1 kept scores are strictly decreasing (no ties, no
    // NaN): then no sort can order them otherwise, and every box the walk did not reach
    // ranks below them.
    const at::Tensor s = scores.contiguous();
    const T* sp = s.data_ptr<T>();
    const int64_t m = std::min<int64_t>(limit + 1, ordered.size());
    for (int64_t k = 0; k + 1 < m && *exact; ++k) *exact = sp[ordered[k]] > sp[ordered[k + 1]];
  }
  if (static_cast<int64_t>(ordered.size()) > limit) ordered.resize(limit);
  return ordered;
}

at::Tensor batched_nms_topk_cpu(const at::Tensor& boxes, const at::Tensor& scores,
                                const at::Tensor& idxs, double iou_threshold,
                                int64_t max_keep) {
  const char* op = "batched_nms_topk";
  for (const auto* t : {&boxes, &scores, &idxs})
    TORCH_CHECK(t->device().is_cpu(), op, ": every tensor must be on the CPU, got ",
                t->device());
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4, op,
              ": boxes must have shape [N, 4] (x1, y1, x2, y2), got ", boxes.sizes());
  TORCH_CHECK(boxes.scalar_type() == at::kFloat || boxes.scalar_type() == at::kDouble, op,
              ": boxes must be float32 or float64 (as torchvision's CPU nms), got ",
              boxes.scalar_type());
  TORCH_CHECK(scores.scalar_type() == boxes.scalar_type(), op, ": scores are ",
              scores.scalar_type(), " but boxes are ", boxes.scalar_type());
  TORCH_CHECK(scores.dim() == 1 && scores.size(0) == boxes.size(0), op,
              ": scores must have shape [N] with N = boxes.size(0) = ", boxes.size(0),
              ", got ", scores.sizes());
  TORCH_CHECK(idxs.dim() == 1 && idxs.size(0) == boxes.size(0), op,
              ": idxs must have shape [N] with N = boxes.size(0) = ", boxes.size(0), ", got ",
              idxs.sizes());
  TORCH_CHECK(at::isIntegralType(idxs.scalar_type(), /*includeBool=*/false), op,
              ": idxs must be an integer tensor, got ", idxs.scalar_type());
  TORCH_CHECK(max_keep >= -1, op, ": max_keep must be >= 0, or -1 for all, got ", max_keep);

  const int64_t n = boxes.size(0);
  const int64_t limit = max_keep < 0 ? n : std::min(max_keep, n);
  auto result_of = [&](const std::vector<int64_t>& rows) {
    return at::tensor(rows, boxes.options().dtype(at::kLong));
  };
  if (n == 0 || limit == 0) return at::empty({0}, boxes.options().dtype(at::kLong));

  std::vector<int64_t> kept;
  AT_DISPATCH_FLOATING_TYPES(boxes.scalar_type(), "batched_nms_topk_cpu", [&] {
    const scalar_t t = threshold_in<scalar_t>(iou_threshold);
    if (boxes.numel() <= kVanillaAboveNumel) {
      kept = nms_offset_trick<scalar_t>(boxes, scores, idxs, t, limit);
      return;
    }
    const auto bc = boxes.contiguous();
    const scalar_t* b = bc.data_ptr<scalar_t>();
    const auto areas = box_areas(b, n);
    // Dense level numbers (any int64 ids, as torch.unique).
    const auto ic = idxs.to(at::kLong).contiguous();
    const int64_t* ip = ic.data_ptr<int64_t>();
    std::map<int64_t, int32_t> slot_of;
    for (int64_t i = 0; i < n; ++i) slot_of.emplace(ip[i], 0);
    int32_t levels = 0;
    for (auto& kv : slot_of) kv.second = levels++;
    std::vector<int32_t> level(n);
    for (int64_t i = 0; i < n; ++i) level[i] = slot_of[ip[i]];
    std::vector<int64_t> all(n);
    for (int64_t i = 0; i < n; ++i) all[i] = i;
    const auto order = score_order(scores, all, /*stable=*/true);
    bool exact = false;
    kept = nms_per_level<scalar_t>(level, levels, b, areas.data(), scores, order, t, limit,
                                   limit + 1, &exact);
    if (!exact)  // ties at the cut: the full per-level NMS, as torchvision
      kept = nms_per_level<scalar_t>(level, levels, b, areas.data(), scores, order, t, limit,
                                     n + 1, &exact);
  });
  return result_of(kept);
}

}  // namespace

TORCH_LIBRARY_IMPL(dynrcnn, CPU, m) {
  m.impl("batched_nms_topk", &batched_nms_topk_cpu);
}

}  // namespace ops
}  // namespace dynrcnn
