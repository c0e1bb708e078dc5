// Dynamic SmoothL1 on the CPU, forward (with the reduction fused) and backward.
// Determinism: the sum is split into fixed-size chunks whose partial sums are combined in
// chunk order, so the bits do not depend on the thread count or scheduling.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <limits>
#include <optional>
#include <tuple>
#include <vector>

#include "ops/box_math.h"
#include "ops/checks.h"
#include "ops/cpu/cpu_target.h"

namespace dynrcnn {
namespace ops {
namespace {

constexpr int64_t kChunk = 1 << 15;  // elements per partial sum
constexpr int kLanes = 8;            // independent accumulators: lets the compiler vectorize

// The loops below index through pointers and block counts rather than `i + kLanes <= end`:
// under -fwrapv (which Python's flags add) GCC cannot prove such an index does not wrap and
// gives up vectorizing.

// Sum of the loss over `count` elements. With kGrad it also writes, in the same pass, the
// gradient of the reduced loss for a unit incoming gradient: d(i) * scale (* w[i]), the
// exact expression (and rounding) of grad_elementwise, so both paths give the same bits.
template <typename scalar_t, bool kWeighted, bool kGrad>
DYNRCNN_CPU_CLONES at::opmath_type<scalar_t> chunk_sum(const scalar_t* x, const scalar_t* t,
                                                       const scalar_t* w, int64_t count,
                                                       at::opmath_type<scalar_t> beta,
                                                       at::opmath_type<scalar_t> scale,
                                                       scalar_t* grad) {
  using acc_t = at::opmath_type<scalar_t>;
  acc_t lanes[kLanes] = {};
  auto step = [&](int64_t i, int l) {
    const acc_t diff = static_cast<acc_t>(x[i]) - static_cast<acc_t>(t[i]);
    acc_t v = smooth_l1<acc_t>(diff, beta);
    if (kWeighted) v *= static_cast<acc_t>(w[i]);
    lanes[l] += v;
    if (kGrad) {
      const acc_t d = smooth_l1_grad<acc_t>(diff, beta) * scale;
      grad[i] = static_cast<scalar_t>(kWeighted ? d * static_cast<acc_t>(w[i]) : d);
    }
  };
  const int64_t blocks = count / kLanes;
  for (int64_t blk = 0; blk < blocks; ++blk) {
    for (int l = 0; l < kLanes; ++l) step(l, l);
    x += kLanes;
    t += kLanes;
    if (kWeighted) w += kLanes;
    if (kGrad) grad += kLanes;
  }
  for (int64_t l = 0; l < count - blocks * kLanes; ++l) step(l, static_cast<int>(l));
  acc_t total = 0;
  for (int l = 0; l < kLanes; ++l) total += lanes[l];
  return total;
}

// `grad` null: loss only. Otherwise the gradient is written alongside (see chunk_sum).
template <typename scalar_t, bool kWeighted, bool kGrad>
at::opmath_type<scalar_t> deterministic_sum(const scalar_t* x, const scalar_t* t,
                                            const scalar_t* w, int64_t n,
                                            at::opmath_type<scalar_t> beta,
                                            at::opmath_type<scalar_t> scale, scalar_t* grad) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t num_chunks = (n + kChunk - 1) / kChunk;
  std::vector<acc_t> partial(num_chunks);
  at::parallel_for(0, num_chunks, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) {
      const int64_t off = c * kChunk;
      partial[c] = chunk_sum<scalar_t, kWeighted, kGrad>(
          x + off, t + off, kWeighted ? w + off : w, std::min(kChunk, n - off), beta, scale,
          kGrad ? grad + off : grad);
    }
  });
  acc_t total = 0;
  for (int64_t c = 0; c < num_chunks; ++c) total += partial[c];
  return total;
}

template <typename scalar_t, bool kGrad>
at::opmath_type<scalar_t> reduced_loss(const scalar_t* x, const scalar_t* t, const scalar_t* w,
                                       int64_t n, at::opmath_type<scalar_t> beta,
                                       int64_t reduction, scalar_t* grad) {
  using acc_t = at::opmath_type<scalar_t>;
  // The backward kernel's scale for grad_output = 1: 1 (sum) or 1 / n (mean).
  acc_t scale = acc_t(1);
  if (reduction == 1) scale /= static_cast<acc_t>(n);
  acc_t total = w != nullptr
                    ? deterministic_sum<scalar_t, true, kGrad>(x, t, w, n, beta, scale, grad)
                    : deterministic_sum<scalar_t, false, kGrad>(x, t, w, n, beta, scale, grad);
  if (reduction == 1)
    total = n > 0 ? total / static_cast<acc_t>(n) : std::numeric_limits<acc_t>::quiet_NaN();
  return total;
}

// Elementwise loss (reduction 'none'); `w` may be null.
template <typename scalar_t>
DYNRCNN_CPU_CLONES void loss_elementwise(const scalar_t* x, const scalar_t* t,
                                         const scalar_t* w, int64_t count,
                                         at::opmath_type<scalar_t> beta, scalar_t* out) {
  using acc_t = at::opmath_type<scalar_t>;
  if (w == nullptr) {
    for (int64_t i = 0; i < count; ++i)
      out[i] = static_cast<scalar_t>(
          smooth_l1<acc_t>(static_cast<acc_t>(x[i]) - static_cast<acc_t>(t[i]), beta));
  } else {
    for (int64_t i = 0; i < count; ++i)
      out[i] = static_cast<scalar_t>(
          smooth_l1<acc_t>(static_cast<acc_t>(x[i]) - static_cast<acc_t>(t[i]), beta) *
          static_cast<acc_t>(w[i]));
  }
}

// Gradient: per-element incoming gradient `g` (reduction 'none') or one `scale` for all
// (mean/sum, g null); `w` may be null. One branch-free loop per case.
template <typename scalar_t>
DYNRCNN_CPU_CLONES void grad_elementwise(const scalar_t* x, const scalar_t* t,
                                         const scalar_t* w, const scalar_t* g,
                                         at::opmath_type<scalar_t> scale, int64_t count,
                                         at::opmath_type<scalar_t> beta, scalar_t* out) {
  using acc_t = at::opmath_type<scalar_t>;
  auto d = [&](int64_t i) {
    return smooth_l1_grad<acc_t>(static_cast<acc_t>(x[i]) - static_cast<acc_t>(t[i]), beta);
  };
  if (g != nullptr && w != nullptr) {
    for (int64_t i = 0; i < count; ++i)
      out[i] = static_cast<scalar_t>(d(i) * static_cast<acc_t>(g[i]) * static_cast<acc_t>(w[i]));
  } else if (g != nullptr) {
    for (int64_t i = 0; i < count; ++i)
      out[i] = static_cast<scalar_t>(d(i) * static_cast<acc_t>(g[i]));
  } else if (w != nullptr) {
    for (int64_t i = 0; i < count; ++i)
      out[i] = static_cast<scalar_t>(d(i) * scale * static_cast<acc_t>(w[i]));
  } else {
    for (int64_t i = 0; i < count; ++i) out[i] = static_cast<scalar_t>(d(i) * scale);
  }
}

at::Tensor dynamic_smooth_l1_cpu(const at::Tensor& input, const at::Tensor& target,
                                 const at::Tensor& beta, const std::optional<at::Tensor>& weight,
                                 int64_t reduction) {
  check_loss_args("dynamic_smooth_l1", input, target, beta, weight, reduction, at::kCPU);
  const auto x = input.contiguous();
  const auto t = target.contiguous();
  const bool weighted = weight.has_value() && weight->defined();
  const auto w = weighted ? weight->contiguous() : at::Tensor();
  const int64_t n = x.numel();
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(),
                                  "dynamic_smooth_l1_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t b = static_cast<acc_t>(beta.item<double>());
    const scalar_t* px = x.data_ptr<scalar_t>();
    const scalar_t* pt = t.data_ptr<scalar_t>();
    const scalar_t* pw = weighted ? w.data_ptr<scalar_t>() : nullptr;
    if (reduction == 0) {
      out = at::empty_like(x, at::MemoryFormat::Contiguous);
      scalar_t* po = out.data_ptr<scalar_t>();
      at::parallel_for(0, n, at::internal::GRAIN_SIZE, [&](int64_t begin, int64_t end) {
        loss_elementwise<scalar_t>(px + begin, pt + begin, pw ? pw + begin : nullptr,
                                   end - begin, b, po + begin);
      });
      return;
    }
    const acc_t total = reduced_loss<scalar_t, false>(px, pt, pw, n, b, reduction, nullptr);
    out = at::empty({}, x.options());
    out.data_ptr<scalar_t>()[0] = static_cast<scalar_t>(total);
  });
  return out;
}

// Forward and backward in one pass for a reduced loss (mean/sum): the loss and its
// gradient for grad_output = 1. The autograd kernel calls it when a gradient is needed, so
// the inputs are read once instead of twice (half the memory traffic of the 1M-element case).
std::tuple<at::Tensor, at::Tensor> dynamic_smooth_l1_with_grad_cpu(
    const at::Tensor& input, const at::Tensor& target, const at::Tensor& beta,
    const std::optional<at::Tensor>& weight, int64_t reduction) {
  check_loss_args("dynamic_smooth_l1_with_grad", input, target, beta, weight, reduction,
                  at::kCPU);
  TORCH_CHECK(reduction == 1 || reduction == 2,
              "dynamic_smooth_l1_with_grad: reduction must be 1 (mean) or 2 (sum), got ",
              reduction);
  const auto x = input.contiguous();
  const auto t = target.contiguous();
  const bool weighted = weight.has_value() && weight->defined();
  const auto w = weighted ? weight->contiguous() : at::Tensor();
  const int64_t n = x.numel();
  auto loss = at::empty({}, x.options());
  auto grad = at::empty_like(x, at::MemoryFormat::Contiguous);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(),
                                  "dynamic_smooth_l1_with_grad_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t b = static_cast<acc_t>(beta.item<double>());
    const acc_t total = reduced_loss<scalar_t, true>(
        x.data_ptr<scalar_t>(), t.data_ptr<scalar_t>(),
        weighted ? w.data_ptr<scalar_t>() : nullptr, n, b, reduction,
        grad.data_ptr<scalar_t>());
    loss.data_ptr<scalar_t>()[0] = static_cast<scalar_t>(total);
  });
  return {loss, grad};
}

at::Tensor dynamic_smooth_l1_backward_cpu(const at::Tensor& grad_output, const at::Tensor& input,
                                          const at::Tensor& target, const at::Tensor& beta,
                                          const std::optional<at::Tensor>& weight,
                                          int64_t reduction) {
  check_loss_args("dynamic_smooth_l1_backward", input, target, beta, weight, reduction, at::kCPU);
  TORCH_CHECK(grad_output.device() == input.device(),
              "dynamic_smooth_l1_backward: grad_output is on ", grad_output.device(),
              " but input is on ", input.device());
  if (reduction == 0) {
    TORCH_CHECK(grad_output.sizes() == input.sizes(),
                "dynamic_smooth_l1_backward: grad_output must have the input's shape ",
                input.sizes(), " for reduction='none', got ", grad_output.sizes());
  } else {
    TORCH_CHECK(grad_output.numel() == 1,
                "dynamic_smooth_l1_backward: grad_output must have one element for a reduced "
                "loss, got shape ", grad_output.sizes());
  }
  const auto x = input.contiguous();
  const auto t = target.contiguous();
  const bool weighted = weight.has_value() && weight->defined();
  const auto w = weighted ? weight->contiguous() : at::Tensor();
  const auto g = grad_output.to(x.scalar_type()).contiguous();
  const int64_t n = x.numel();
  auto grad_input = at::empty_like(x, at::MemoryFormat::Contiguous);
  if (n == 0) return grad_input;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(),
                                  "dynamic_smooth_l1_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t b = static_cast<acc_t>(beta.item<double>());
    const scalar_t* px = x.data_ptr<scalar_t>();
    const scalar_t* pt = t.data_ptr<scalar_t>();
    const scalar_t* pw = weighted ? w.data_ptr<scalar_t>() : nullptr;
    const scalar_t* pg = g.data_ptr<scalar_t>();
    scalar_t* po = grad_input.data_ptr<scalar_t>();
    acc_t scale = reduction == 0 ? acc_t(1) : static_cast<acc_t>(pg[0]);
    if (reduction == 1) scale /= static_cast<acc_t>(n);
    const scalar_t* pg_each = reduction == 0 ? pg : nullptr;
    at::parallel_for(0, n, at::internal::GRAIN_SIZE, [&](int64_t begin, int64_t end) {
      grad_elementwise<scalar_t>(px + begin, pt + begin, pw ? pw + begin : nullptr,
                                 pg_each ? pg_each + begin : nullptr, scale, end - begin, b,
                                 po + begin);
    });
  });
  return grad_input;
}

}  // namespace

TORCH_LIBRARY_IMPL(dynrcnn, CPU, m) {
  m.impl("dynamic_smooth_l1", &dynamic_smooth_l1_cpu);
  m.impl("dynamic_smooth_l1_with_grad", &dynamic_smooth_l1_with_grad_cpu);
  m.impl("dynamic_smooth_l1_backward", &dynamic_smooth_l1_backward_cpu);
}

}  // namespace ops
}  // namespace dynrcnn
