// GPTQ (Frantar et al. 2022; IST-DASLab/gptq gptq.py) on one linear layer, tensors only. The
// model-level driver that collects calibration inputs layer by layer is model/quantize.hpp.
#pragma once
#include <ATen/core/Tensor.h>

#include "qinterp/quant/quantize.hpp"

namespace qinterp::quant {

// H = 2/N Σ x xᵀ over calibration inputs of a linear layer, float32 [in, in]; N counts the
// sequences added (as the reference's add_batch does; the scale does not change the result).
class GptqHessian {
 public:
  explicit GptqHessian(int64_t in_features, at::Device device = at::kCPU);
  // x: [tokens, in] (one sequence) or [batch, seq, in] (batch sequences), any float dtype.
  void add(const at::Tensor& x);
  const at::Tensor& matrix() const { return h_; }
  int64_t samples() const { return n_; }

 private:
  at::Tensor h_;
  int64_t n_ = 0;
};

// Quantizes W [out, in] against H with spec's bits, group, sym, act_order and damp: damped
// Cholesky of H⁻¹, lazy blocks of 128 columns with error feedback, group parameters recomputed
// from the updated weights at each group start. Returns the same storage as round-to-nearest.
// loss (optional): Σ (w - q)² / d² / 2 as the reference reports it.
QuantizedTensor gptq_quantize(const at::Tensor& w, const at::Tensor& h, const QuantSpec& spec,
                              double* loss = nullptr);

}  // namespace qinterp::quant
