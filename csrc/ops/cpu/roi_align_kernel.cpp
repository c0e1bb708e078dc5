// roi_align on the CPU, forward and backward, with torchvision's results bit for bit
// (torchvision/csrc/ops/cpu/roi_align_kernel.cpp is the reference: same sample points,
// same bilinear weights, same operation order).
//
// Why a second implementation: torchvision's backward walks the pooled gradient element by
// element, (roi, channel, bin), recomputing the roi's geometry and every sample's bilinear
// weights for each channel, single-threaded. Here the weights of a roi are computed once and
// shared by all channels, and the loops run channel plane by channel plane: each (image,
// channel) plane receives the same additions in the same order as in torchvision (rois in
// order, then bins, samples and corners), so the sums are identical, and planes are
// independent, so they run in parallel without atomics and stay deterministic.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace dynrcnn {
namespace ops {
namespace {

// One sample point of a bin: four pixel offsets in a plane and their bilinear weights.
// pos1 < 0 marks a point outside the feature map: it contributes nothing (torchvision skips
// it in the backward and gives it zero weights at offset 0 in the forward).
template <typename T>
struct Sample {
  int32_t pos1, pos2, pos3, pos4;
  T w1, w2, w3, w4;
};

// The geometry of one roi, as torchvision computes it.
template <typename T>
struct RoiGeometry {
  int64_t batch;
  T start_h, start_w, bin_h, bin_w;
  int grid_h, grid_w;
};

template <typename T>
RoiGeometry<T> roi_geometry(const T* roi, T spatial_scale, int64_t pooled_height,
                            int64_t pooled_width, int64_t sampling_ratio, bool aligned) {
  RoiGeometry<T> g;
  g.batch = static_cast<int64_t>(roi[0]);
  // Do not round: the same expressions as torchvision.
  const T offset = aligned ? (T)0.5 : (T)0.0;
  g.start_w = roi[1] * spatial_scale - offset;
  g.start_h = roi[2] * spatial_scale - offset;
  const T end_w = roi[3] * spatial_scale - offset;
  const T end_h = roi[4] * spatial_scale - offset;
  T roi_width = end_w - g.start_w;
  T roi_height = end_h - g.start_h;
  if (!aligned) {  // malformed rois are forced to 1x1
    roi_width = std::max(roi_width, (T)1.);
    roi_height = std::max(roi_height, (T)1.);
  }
  g.bin_h = static_cast<T>(roi_height) / static_cast<T>(pooled_height);
  g.bin_w = static_cast<T>(roi_width) / static_cast<T>(pooled_width);
  g.grid_h = (sampling_ratio > 0) ? static_cast<int>(sampling_ratio)
                                  : static_cast<int>(std::ceil(roi_height / pooled_height));
  g.grid_w = (sampling_ratio > 0) ? static_cast<int>(sampling_ratio)
                                  : static_cast<int>(std::ceil(roi_width / pooled_width));
  return g;
}

// Bilinear weights of point (y, x), as torchvision's bilinear_interpolate_gradient and
// pre_calc_for_bilinear_interpolate (which agree). Written as !(in range) so that NaN
// coordinates give an empty sample instead of an undefined (int) cast.
template <typename T>
Sample<T> bilinear_sample(int64_t height, int64_t width, T y, T x) {
  Sample<T> s{-1, 0, 0, 0, T(0), T(0), T(0), T(0)};
  if (!(y >= -1.0 && y <= height && x >= -1.0 && x <= width)) return s;
  if (y <= 0) y = 0;
  if (x <= 0) x = 0;
  int64_t y_low = static_cast<int>(y), x_low = static_cast<int>(x), y_high, x_high;
  if (y_low >= height - 1) {
    y_high = y_low = height - 1;
    y = (T)y_low;
  } else {
    y_high = y_low + 1;
  }
  if (x_low >= width - 1) {
    x_high = x_low = width - 1;
    x = (T)x_low;
  } else {
    x_high = x_low + 1;
  }
  const T ly = y - y_low, lx = x - x_low;
  const T hy = 1. - ly, hx = 1. - lx;
  s.w1 = hy * hx, s.w2 = hy * lx, s.w3 = ly * hx, s.w4 = ly * lx;
  s.pos1 = static_cast<int32_t>(y_low * width + x_low);
  s.pos2 = static_cast<int32_t>(y_low * width + x_high);
  s.pos3 = static_cast<int32_t>(y_high * width + x_low);
  s.pos4 = static_cast<int32_t>(y_high * width + x_high);
  return s;
}

// The sample points of every bin of a roi, bins in (ph, pw) order, points in (iy, ix) order.
template <typename T>
void roi_samples(const RoiGeometry<T>& g, int64_t height, int64_t width, int64_t pooled_height,
                 int64_t pooled_width, std::vector<Sample<T>>& out) {
  out.clear();
  out.reserve(pooled_height * pooled_width * g.grid_h * g.grid_w);
  for (int64_t ph = 0; ph < pooled_height; ph++)
    for (int64_t pw = 0; pw < pooled_width; pw++)
      for (int iy = 0; iy < g.grid_h; iy++) {
        const T y = g.start_h + static_cast<T>(ph) * g.bin_h +
                    static_cast<T>(iy + .5f) * g.bin_h / static_cast<T>(g.grid_h);
        for (int ix = 0; ix < g.grid_w; ix++) {
          const T x = g.start_w + static_cast<T>(pw) * g.bin_w +
                      static_cast<T>(ix + .5f) * g.bin_w / static_cast<T>(g.grid_w);
          out.push_back(bilinear_sample<T>(height, width, y, x));
        }
      }
}

// Adds one roi's gradient to one channel plane: for each bin, for each sample point,
// g_k = grad * w_k / count at its four pixels, in torchvision's order. When count is a power
// of two, * (1 / count) is the same correctly rounded value as / count and much cheaper.
template <typename T, bool kPow2>
void accumulate_roi_gradient_impl(const T* gn, int64_t hs, int64_t ws, int64_t pooled_width,
                                  int64_t bins, int per_bin, const Sample<T>* s, T* plane) {
  const T count = per_bin;  // (T)(int), as torchvision's `const T count = grid_h * grid_w`
  const T inv = T(1) / count;
  for (int64_t bin = 0; bin < bins; ++bin) {
    const T gb = gn[(bin / pooled_width) * hs + (bin % pooled_width) * ws];
    for (int k = 0; k < per_bin; ++k, ++s) {
      if (s->pos1 < 0) continue;
      T g1, g2, g3, g4;
      if (kPow2) {
        g1 = gb * s->w1 * inv, g2 = gb * s->w2 * inv, g3 = gb * s->w3 * inv, g4 = gb * s->w4 * inv;
      } else {
        g1 = gb * s->w1 / count, g2 = gb * s->w2 / count, g3 = gb * s->w3 / count,
        g4 = gb * s->w4 / count;
      }
      plane[s->pos1] += g1;
      plane[s->pos2] += g2;
      plane[s->pos3] += g3;
      plane[s->pos4] += g4;
    }
  }
}

template <typename T>
void accumulate_roi_gradient(const T* gn, int64_t hs, int64_t ws, int64_t pooled_width,
                             int64_t bins, int per_bin, const Sample<T>* s, T* plane) {
  if (per_bin > 0 && (per_bin & (per_bin - 1)) == 0)
    accumulate_roi_gradient_impl<T, true>(gn, hs, ws, pooled_width, bins, per_bin, s, plane);
  else
    accumulate_roi_gradient_impl<T, false>(gn, hs, ws, pooled_width, bins, per_bin, s, plane);
}

void check_roi_args(const char* op, const at::Tensor& t, const char* name,
                    const at::Tensor& rois) {
  TORCH_CHECK(t.device().is_cpu(), op, ": ", name, " must be a CPU tensor, got ", t.device());
  TORCH_CHECK(rois.device().is_cpu(), op, ": rois must be a CPU tensor, got ", rois.device());
  TORCH_CHECK(rois.dim() == 2 && rois.size(1) == 5, op,
              ": rois must have shape [K, 5] (batch index, x1, y1, x2, y2), got ", rois.sizes());
  TORCH_CHECK(t.scalar_type() == rois.scalar_type(), op, ": ", name, " is ", t.scalar_type(),
              " but rois are ", rois.scalar_type(), " (use one dtype, as torchvision)");
  TORCH_CHECK(t.dim() == 4, op, ": ", name, " must be 4-D, got ", t.sizes());
}

void check_batch_index(const char* op, int64_t b, int64_t batch_size, int64_t roi) {
  TORCH_CHECK(b >= 0 && b < batch_size, op, ": rois[", roi, ", 0] = ", b,
              " is not an image index in [0, ", batch_size, ")");
}

at::Tensor roi_align_forward_cpu(const at::Tensor& input, const at::Tensor& rois,
                                 double spatial_scale, int64_t pooled_height,
                                 int64_t pooled_width, int64_t sampling_ratio, bool aligned) {
  const char* op = "roi_align";
  check_roi_args(op, input, "input", rois);
  TORCH_CHECK(pooled_height > 0 && pooled_width > 0, op, ": output size must be positive, got ",
              pooled_height, " x ", pooled_width);
  const int64_t num_rois = rois.size(0), channels = input.size(1), height = input.size(2),
                width = input.size(3);
  auto output = at::zeros({num_rois, channels, pooled_height, pooled_width}, input.options());
  if (output.numel() == 0) return output;
  const auto in = input.contiguous();
  const auto r = rois.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND_HALF(input.scalar_type(), "roi_align_forward_cpu", [&] {
    using T = scalar_t;
    const T* pin = in.data_ptr<T>();
    const T* pr = r.data_ptr<T>();
    T* pout = output.data_ptr<T>();
    const T scale = static_cast<T>(spatial_scale);
    for (int64_t n = 0; n < num_rois; ++n)
      check_batch_index(op, static_cast<int64_t>(pr[5 * n]), input.size(0), n);
    // Rois write disjoint outputs: in parallel, deterministic.
    at::parallel_for(0, num_rois, 1, [&](int64_t begin, int64_t end) {
      std::vector<Sample<T>> samples;
      for (int64_t n = begin; n < end; ++n) {
        const auto g = roi_geometry<T>(pr + 5 * n, scale, pooled_height, pooled_width,
                                       sampling_ratio, aligned);
        roi_samples<T>(g, height, width, pooled_height, pooled_width, samples);
        const T count = std::max(g.grid_h * g.grid_w, 1);
        const int64_t per_bin = g.grid_h * g.grid_w;
        for (int64_t c = 0; c < channels; ++c) {
          const T* plane = pin + (g.batch * channels + c) * height * width;
          T* o = pout + (n * channels + c) * pooled_height * pooled_width;
          const Sample<T>* s = samples.data();
          for (int64_t bin = 0; bin < pooled_height * pooled_width; ++bin) {
            T val = 0.;
            for (int64_t k = 0; k < per_bin; ++k, ++s) {
              // An outside point reads offset 0 with zero weights, as torchvision's pre_calc.
              const int32_t p1 = s->pos1 < 0 ? 0 : s->pos1;
              val += s->w1 * plane[p1] + s->w2 * plane[s->pos2] + s->w3 * plane[s->pos3] +
                     s->w4 * plane[s->pos4];
            }
            val /= count;
            o[bin] = val;
          }
        }
      }
    });
  });
  return output;
}

at::Tensor roi_align_backward_cpu(const at::Tensor& grad, const at::Tensor& rois,
                                  double spatial_scale, int64_t pooled_height,
                                  int64_t pooled_width, int64_t batch_size, int64_t channels,
                                  int64_t height, int64_t width, int64_t sampling_ratio,
                                  bool aligned) {
  const char* op = "roi_align_backward";
  check_roi_args(op, grad, "grad", rois);
  TORCH_CHECK(grad.size(0) == rois.size(0) && grad.size(1) == channels &&
                  grad.size(2) == pooled_height && grad.size(3) == pooled_width,
              op, ": grad must have shape [K, C, pooled_height, pooled_width] = [", rois.size(0),
              ", ", channels, ", ", pooled_height, ", ", pooled_width, "], got ", grad.sizes());
  auto grad_input = at::zeros({batch_size, channels, height, width}, grad.options());
  if (grad.numel() == 0) return grad_input;
  const auto r = rois.contiguous();
  const int64_t num_rois = rois.size(0);
  const int64_t ns = grad.stride(0), cs = grad.stride(1), hs = grad.stride(2), ws = grad.stride(3);
  AT_DISPATCH_FLOATING_TYPES_AND_HALF(grad.scalar_type(), "roi_align_backward_cpu", [&] {
    using T = scalar_t;
    const T* pr = r.data_ptr<T>();
    const T* pg = grad.data_ptr<T>();
    T* pgi = grad_input.data_ptr<T>();
    const T scale = static_cast<T>(spatial_scale);
    // Every roi's samples, computed once for all channels; rois grouped by image, in order.
    std::vector<std::vector<Sample<T>>> samples(num_rois);
    std::vector<int> per_bin(num_rois);
    std::vector<std::vector<int64_t>> rois_of(batch_size);
    at::parallel_for(0, num_rois, 16, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        const auto g = roi_geometry<T>(pr + 5 * n, scale, pooled_height, pooled_width,
                                       sampling_ratio, aligned);
        roi_samples<T>(g, height, width, pooled_height, pooled_width, samples[n]);
        per_bin[n] = g.grid_h * g.grid_w;
      }
    });
    for (int64_t n = 0; n < num_rois; ++n) {
      const auto b = static_cast<int64_t>(pr[5 * n]);
      check_batch_index(op, b, batch_size, n);
      rois_of[b].push_back(n);
    }
    const int64_t bins = pooled_height * pooled_width;
    // Rois in blocks whose samples stay in cache while every channel plane of the image
    // takes them; each plane still receives its additions in roi order.
    constexpr size_t kRoiBlock = 16;
    for (int64_t b = 0; b < batch_size; ++b) {
      const auto& rois_b = rois_of[b];
      for (size_t r0 = 0; r0 < rois_b.size(); r0 += kRoiBlock) {
        const size_t r1 = std::min(rois_b.size(), r0 + kRoiBlock);
        at::parallel_for(0, channels, 1, [&](int64_t c0, int64_t c1) {
          for (int64_t c = c0; c < c1; ++c) {
            T* plane = pgi + (b * channels + c) * height * width;
            for (size_t r = r0; r < r1; ++r) {
              const int64_t n = rois_b[r];
              const T* gn = pg + n * ns + c * cs;
              accumulate_roi_gradient<T>(gn, hs, ws, pooled_width, bins, per_bin[n],
                                         samples[n].data(), plane);
            }
          }
        });
      }
    }
  });
  return grad_input;
}

}  // namespace

TORCH_LIBRARY_IMPL(dynrcnn, CPU, m) {
  m.impl("roi_align", &roi_align_forward_cpu);
  m.impl("roi_align_backward", &roi_align_backward_cpu);
}

}  // namespace ops
}  // namespace dynrcnn
