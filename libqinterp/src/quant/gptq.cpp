#include "qinterp/quant/gptq.hpp"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <cmath>

#include "format_common.hpp"
#include "grouped.hpp"
#include "qinterp/error.hpp"

namespace qinterp::quant {

GptqHessian::GptqHessian(int64_t in, at::Device device) : h_(at::zeros({in, in}, at::TensorOptions(device).dtype(at::kFloat))) {}

void GptqHessian::add(const at::Tensor& x_in) {
  c10::NoGradGuard ng;
  if (x_in.size(-1) != h_.size(0)) fail("GptqHessian: input has ", x_in.size(-1), " features, expected ", h_.size(0));
  const int64_t batch = x_in.dim() >= 3 ? x_in.size(0) : 1;
  const at::Tensor x = x_in.reshape({-1, x_in.size(-1)}).to(h_.device(), at::kFloat).t();
  h_.mul_(static_cast<double>(n_) / static_cast<double>(n_ + batch));
  n_ += batch;
  const at::Tensor s = x * std::sqrt(2.0 / static_cast<double>(n_));
  h_.add_(at::matmul(s, s.t()));
}

QuantizedTensor gptq_quantize(const at::Tensor& w_in, const at::Tensor& h_in, const QuantSpec& spec, double* loss) {
  c10::NoGradGuard no_grad;
  if (w_in.dim() != 2) fail("gptq_quantize: weight must be 2-D [out, in]");
  detail::check_finite(w_in, "gptq_quantize");
  const int64_t rows = w_in.size(0), cols = w_in.size(1);
  if (h_in.dim() != 2 || h_in.size(0) != cols || h_in.size(1) != cols)
    fail("gptq_quantize: Hessian must be [", cols, ", ", cols, "]");
  const int bits = spec.bits;
  const double maxq = std::pow(2.0, bits) - 1;
  const int64_t gs = spec.group > 0 ? spec.group : cols;
  at::Tensor W = w_in.to(at::kCPU, at::kFloat).clone();
  at::Tensor H = h_in.to(at::kCPU, at::kFloat).clone();
  const at::Tensor dead = H.diagonal().eq(0);
  H.diagonal().masked_fill_(dead, 1.0);
  W.index_put_({at::indexing::Slice(), dead}, 0.0);
  at::Tensor perm;
  if (spec.act_order) {
    perm = at::argsort(H.diagonal(), /*stable=*/false, /*dim=*/0, /*descending=*/true);
    W = W.index_select(1, perm);
    H = H.index_select(0, perm).index_select(1, perm);
  }
  const double damp = spec.damp * H.diagonal().mean().item<double>();
  H.diagonal().add_(damp);
  at::Tensor L = std::get<0>(at::linalg_cholesky_ex(H));
  if (!at::isfinite(L).all().item<bool>())
    fail("gptq_quantize: the damped Hessian is not positive definite; raise damp (now ", spec.damp, ")");
  at::Tensor Hinv = at::linalg_cholesky(at::cholesky_inverse(L), /*upper=*/true).contiguous();

  const int64_t n_groups = (cols + gs - 1) / gs;
  at::Tensor codes = at::zeros({rows, cols}, W.options());
  at::Tensor scale = at::zeros({rows, n_groups}, W.options()), zero = at::zeros({rows, n_groups}, W.options());
  at::Tensor cur_s, cur_z;  // [rows] float, the current group's parameters
  double total = 0;
  constexpr int64_t kBlock = 128;
  for (int64_t i1 = 0; i1 < cols; i1 += kBlock) {
    const int64_t i2 = std::min(i1 + kBlock, cols), count = i2 - i1;
    at::Tensor W1 = W.narrow(1, i1, count).clone().contiguous();
    at::Tensor Err1 = at::zeros_like(W1);
    const at::Tensor Hinv1 = Hinv.narrow(0, i1, count).narrow(1, i1, count).contiguous();
    float* w1 = W1.data_ptr<float>();
    float* e1 = Err1.data_ptr<float>();
    const float* hi = Hinv1.data_ptr<float>();
    float* cd = codes.data_ptr<float>();
    for (int64_t i = 0; i < count; ++i) {
      const int64_t col = i1 + i;
      if (col % gs == 0) {  // parameters from the weights as updated so far (the reference reads W here)
        auto sz = minmax_params(W.narrow(1, col, std::min(gs, cols - col)), bits, spec.sym);
        cur_s = sz.first.contiguous();
        cur_z = sz.second.contiguous();
        scale.select(1, col / gs).copy_(cur_s);
        zero.select(1, col / gs).copy_(cur_z);
      }
      const float* sc = cur_s.data_ptr<float>();
      const float* ze = cur_z.data_ptr<float>();
      const float d = hi[i * count + i];
      for (int64_t r = 0; r < rows; ++r) {
        const float wv = w1[r * count + i];
        const float c = std::min(static_cast<float>(maxq), std::max(0.0f, std::nearbyint(wv / sc[r]) + ze[r]));
        const float q = sc[r] * (c - ze[r]);
        cd[r * cols + col] = c;
        const float err = (wv - q) / d;
        total += static_cast<double>(wv - q) * (wv - q) / (static_cast<double>(d) * d) / 2;
        float* wr = w1 + r * count;
        const float* hrow = hi + i * count;
        for (int64_t j = i; j < count; ++j) wr[j] -= err * hrow[j];
        e1[r * count + i] = err;
      }
    }
    if (i2 < cols) W.narrow(1, i2, cols - i2).sub_(at::matmul(Err1, Hinv.narrow(0, i1, count).narrow(1, i2, cols - i2)));
  }
  if (loss) *loss = total;
  at::Tensor g_idx = at::arange(cols, at::kLong).div(gs, "floor");
  if (spec.act_order) {
    const at::Tensor inv = at::argsort(perm);
    codes = codes.index_select(1, inv);
    g_idx = g_idx.index_select(0, inv);
  }
  return make_grouped(spec, codes, scale, zero, g_idx, w_in.scalar_type());
}

}  // namespace qinterp::quant
