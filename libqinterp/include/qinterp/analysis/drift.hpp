// Drift between a full-precision model and a quantized copy on the same tokens, per neuron.
#pragma once
#include "qinterp/analysis/accumulator.hpp"
#include "qinterp/analysis/neurons.hpp"

namespace qinterp::analysis {

// Full precision (a) against a quantized copy (b) on the same tokens, per neuron: mean squared
// error, cosine similarity and Pearson correlation of the two activation series, and how far
// their dead sets agree (band as in DeadNeurons).
//
// finalize(): tokens, mse [N], cosine [N], correlation [N] (NaN where either side has zero
// variance), dead_full [N], dead_quant [N] bool, dead_both, dead_only_full, dead_only_quant,
// dead_agreement (fraction of neurons with the same status), dead_jaccard (|both| / |either|,
// 1 when neither side has a dead neuron).
class Drift : public Accumulator {
 public:
  explicit Drift(double dead_lo = -0.1, double dead_hi = 0.1);

  void update(const at::Tensor& full, const at::Tensor& quant, const at::Tensor& mask = {});
  std::string kind() const override { return "Drift"; }
  void merge(const Accumulator& other) override;
  State state() const override;
  void restore(const State& s) override;
  Tensors finalize() const override;
  void to(const at::Device& device) override;

  int64_t tokens() const { return n_; }

 private:
  int64_t n_ = 0;
  // [N] float64 each: mean_full, mean_quant, m2_full, m2_quant, c (co-moment), sq_diff, dot,
  // sq_full, sq_quant — also the names in state(). Empty before the first update.
  Tensors sums_;
  DeadNeurons dead_a_, dead_b_;
  void fold(int64_t nb, const Tensors& b);  // Chan's merge of a batch or a shard's sums
};

}  // namespace qinterp::analysis
