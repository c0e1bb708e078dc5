// Small inline box math shared by the CPU and CUDA kernels (and the C++ tests).
// Everything is computed in the accumulation type `T` (float for half/bfloat16/float).
#pragma once

#include <cmath>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define DYNRCNN_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define DYNRCNN_HOST_DEVICE inline
#endif

namespace dynrcnn {

// IoU of two x1,y1,x2,y2 boxes. The operation order matches dynrcnn/ops/_reference.py and
// every product is rounded on its own: setup.py and CMakeLists.txt compile this header with
// -ffp-contract=off (host) and --fmad=false (device), because a contracted union
// fma(bw, bh, aw * ah) rounds differently, and then CPU and CUDA would disagree on IoUs by a
// few ulp and on labels where T equals an IoU. CPU and CUDA results are identical bits. A box with non-positive width or height, or with
// NaN coordinates, has IoU 0 with everything (never NaN).
// Written without branches (every value computed, then selected) so that the CPU loops over
// ground-truth boxes vectorize and CUDA threads do not diverge; a division by zero in a
// discarded lane is harmless (IEEE exceptions are masked).
template <typename T>
DYNRCNN_HOST_DEVICE T iou_xyxy(T ax1, T ay1, T ax2, T ay2, T bx1, T by1, T bx2, T by2) {
  const T aw = ax2 - ax1, ah = ay2 - ay1;
  const T bw = bx2 - bx1, bh = by2 - by1;
  const T iw = (ax2 < bx2 ? ax2 : bx2) - (ax1 > bx1 ? ax1 : bx1);
  const T ih = (ay2 < by2 ? ay2 : by2) - (ay1 > by1 ? ay1 : by1);
  const T inter = iw * ih;
  const T uni = aw * ah + bw * bh - inter;
  const T iou = inter / uni;
  // Comparisons with NaN are false, so NaN boxes (and inf/inf) fall to 0. `&` (not `&&`)
  // keeps it branch-free.
  const bool ok = (aw > T(0)) & (ah > T(0)) & (bw > T(0)) & (bh > T(0)) & (iw > T(0)) &
                  (ih > T(0)) & (iou >= T(0));
  const T clamped = iou < T(1) ? iou : T(1);
  return ok ? clamped : T(0);
}

// Regression error of a proposal against its ground truth: mean(|dx|, |dy|) of the target
// encoded as torchvision's BoxCoder does (no +1 on widths), with weights (wx, wy).
template <typename T>
DYNRCNN_HOST_DEVICE T regression_error(T px1, T py1, T px2, T py2, T gx1, T gy1, T gx2, T gy2,
                                       T wx, T wy) {
  const T pw = px2 - px1, ph = py2 - py1;
  const T pcx = px1 + T(0.5) * pw, pcy = py1 + T(0.5) * ph;
  const T gw = gx2 - gx1, gh = gy2 - gy1;
  const T gcx = gx1 + T(0.5) * gw, gcy = gy1 + T(0.5) * gh;
  const T dx = wx * (gcx - pcx) / pw;
  const T dy = wy * (gcy - pcy) / ph;
  return (std::fabs(dx) + std::fabs(dy)) * T(0.5);
}

// SmoothL1 with beta; beta <= 1e-6 is L1 (the quadratic branch would divide by ~0).
// Both branches are computed and one selected, so loops vectorize (see iou_xyxy).
template <typename T>
DYNRCNN_HOST_DEVICE T smooth_l1(T diff, T beta) {
  const T ad = diff < T(0) ? -diff : diff;
  const T quadratic = T(0.5) * diff * diff / beta;
  const T linear = ad - T(0.5) * beta;
  const T smooth = ad < beta ? quadratic : linear;
  return beta <= T(1e-6) ? ad : smooth;
}

// d smooth_l1 / d diff. A NaN beta gives NaN, as the loss does (and as autograd of the
// reference does): every comparison with NaN is false, which alone would give sign(diff).
template <typename T>
DYNRCNN_HOST_DEVICE T smooth_l1_grad(T diff, T beta) {
  const T sign = diff > T(0) ? T(1) : (diff < T(0) ? T(-1) : T(0));
  const T ad = diff < T(0) ? -diff : diff;
  const T smooth = ad < beta ? diff / beta : sign;
  const T grad = beta <= T(1e-6) ? sign : smooth;
  return beta == beta ? grad : beta;
}

}  // namespace dynrcnn
