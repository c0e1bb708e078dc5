// Dynamic SmoothL1 on the CPU, forward (with the reduction fused) and backward.
// Determinism: the sum is split into fixed-size chunks whose partial sums are combined in
// chunk order, so the bits do not depend on the thread count or scheduling.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <limits>
#include <vector>

#include "ops/box_math.h"
#include "ops/checks.h"

namespace dynrcnn {
namespace ops {
namespace {

constexpr int64_t kChunk = 1 << 15;  // elements per partial sum
constexpr int kLanes = 8;            // independent accumulators: lets the compiler vectorize

template <typename scalar_t, bool kWeighted>
at::opmath_type<scalar_t> chunk_sum(const scalar_t* x, const scalar_t* t, const scalar_t* w,
                                    int64_t begin, int64_t end,
                                    at::opmath_type<scalar_t> beta) {
  using acc_t = at::opmath_type<scalar_t>;
  acc_t lanes[kLanes] = {};
  int64_t i = begin;
  for (; i + kLanes <= end; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      acc_t v = smooth_l1<acc_t>(static_cast<acc_t>(x[i + l]) - static_cast<acc_t>(t[i + l]),
                                 beta);
      if (kWeighted) v *= static_cast<acc_t>(w[i + l]);
      lanes[l] += v;
    }
  }
  for (int l = 0; i < end; ++i, ++l) {
    acc_t v = smooth_l1<acc_t>(static_cast<acc_t>(x[i]) - static_cast<acc_t>(t[i]), beta);
    if (kWeighted) v *= static_cast<acc_t>(w[i]);
    lanes[l] += v;
  }
  acc_t total = 0;
  for (int l = 0; l < kLanes; ++l) total += lanes[l];
  return total;
}

template <typename scalar_t, bool kWeighted>
at::opmath_type<scalar_t> deterministic_sum(const scalar_t* x, const scalar_t* t,
                                            const scalar_t* w, int64_t n,
                                            at::opmath_type<scalar_t> beta) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t num_chunks = (n + kChunk - 1) / kChunk;
  std::vector<acc_t> partial(num_chunks);
  at::parallel_for(0, num_chunks, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c)
      partial[c] = chunk_sum<scalar_t, kWeighted>(x, t, w, c * kChunk,
                                                  std::min(n, (c + 1) * kChunk), beta);
  });
  acc_t total = 0;
  for (int64_t c = 0; c < num_chunks; ++c) total += partial[c];
  return total;
}

at::Tensor dynamic_smooth_l1_cpu(const at::Tensor& input, const at::Tensor& target,
                                 const at::Tensor& beta, const c10::optional<at::Tensor>& weight,
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
    const acc_t b = static_cast<acc_t>(beta.to(at::kDouble).item<double>());
    const scalar_t* px = x.data_ptr<scalar_t>();
    const scalar_t* pt = t.data_ptr<scalar_t>();
    const scalar_t* pw = weighted ? w.data_ptr<scalar_t>() : nullptr;
    if (reduction == 0) {
      out = at::empty_like(x);
      scalar_t* po = out.data_ptr<scalar_t>();
      at::parallel_for(0, n, at::internal::GRAIN_SIZE, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          acc_t v = smooth_l1<acc_t>(static_cast<acc_t>(px[i]) - static_cast<acc_t>(pt[i]), b);
          if (pw != nullptr) v *= static_cast<acc_t>(pw[i]);
          po[i] = static_cast<scalar_t>(v);
        }
      });
      return;
    }
    acc_t total = weighted ? deterministic_sum<scalar_t, true>(px, pt, pw, n, b)
                           : deterministic_sum<scalar_t, false>(px, pt, pw, n, b);
    if (reduction == 1)
      total = n > 0 ? total / static_cast<acc_t>(n) : std::numeric_limits<acc_t>::quiet_NaN();
    out = at::empty({}, x.options());
    out.data_ptr<scalar_t>()[0] = static_cast<scalar_t>(total);
  });
  return out;
}

at::Tensor dynamic_smooth_l1_backward_cpu(const at::Tensor& grad_output, const at::Tensor& input,
                                          const at::Tensor& target, const at::Tensor& beta,
                                          const c10::optional<at::Tensor>& weight,
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
    const acc_t b = static_cast<acc_t>(beta.to(at::kDouble).item<double>());
    const scalar_t* px = x.data_ptr<scalar_t>();
    const scalar_t* pt = t.data_ptr<scalar_t>();
    const scalar_t* pw = weighted ? w.data_ptr<scalar_t>() : nullptr;
    const scalar_t* pg = g.data_ptr<scalar_t>();
    scalar_t* po = grad_input.data_ptr<scalar_t>();
    acc_t scale = reduction == 0 ? acc_t(1) : static_cast<acc_t>(pg[0]);
    if (reduction == 1) scale /= static_cast<acc_t>(n);
    // Separate loops per case keep each one branch-free (and so vectorizable).
    at::parallel_for(0, n, at::internal::GRAIN_SIZE, [&](int64_t begin, int64_t end) {
      if (reduction == 0) {
        for (int64_t i = begin; i < end; ++i) {
          acc_t v = smooth_l1_grad<acc_t>(static_cast<acc_t>(px[i]) - static_cast<acc_t>(pt[i]),
                                          b) * static_cast<acc_t>(pg[i]);
          if (pw != nullptr) v *= static_cast<acc_t>(pw[i]);
          po[i] = static_cast<scalar_t>(v);
        }
      } else if (pw != nullptr) {
        for (int64_t i = begin; i < end; ++i)
          po[i] = static_cast<scalar_t>(
              smooth_l1_grad<acc_t>(static_cast<acc_t>(px[i]) - static_cast<acc_t>(pt[i]), b) *
              scale * static_cast<acc_t>(pw[i]));
      } else {
        for (int64_t i = begin; i < end; ++i)
          po[i] = static_cast<scalar_t>(
              smooth_l1_grad<acc_t>(static_cast<acc_t>(px[i]) - static_cast<acc_t>(pt[i]), b) *
              scale);
      }
    });
  });
  return grad_input;
}

}  // namespace

TORCH_LIBRARY_IMPL(dynrcnn, CPU, m) {
  m.impl("dynamic_smooth_l1", &dynamic_smooth_l1_cpu);
  m.impl("dynamic_smooth_l1_backward", &dynamic_smooth_l1_backward_cpu);
}

}  // namespace ops
}  // namespace dynrcnn
