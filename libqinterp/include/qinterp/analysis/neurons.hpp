// Per-neuron accumulators over a hooked layer: dead neurons (PROTOCOLS.md §1.3) and activation
// statistics. Input: activations [tokens, N] or [B, S, N] with a mask (accumulator.hpp).
#pragma once
#include "qinterp/analysis/accumulator.hpp"

namespace qinterp::analysis {

// A neuron is dead if every activation lies strictly inside the band (lo, hi) — the paper's
// (−0.1, 0.1); for ReLU models use relu(1e-6), i.e. |a| < 1e-6. Comparisons happen in the
// activation's own dtype, the band edges rounded to it, as numpy compares an array with a Python
// float (fp16 activations against fp16(0.1) = 0.0999755859375; float32(1e-6) is not below the
// ReLU band's float32(1e-6)). A neuron that has seen no tokens is not reported dead.
//
// finalize(): dead [N] bool, count (0-dim int64), neurons, tokens, min [N], max [N] (float64),
// outside [N] int64 (tokens with a <= lo or a >= hi), lo, hi.
class DeadNeurons : public Accumulator {
 public:
  explicit DeadNeurons(double lo = -0.1, double hi = 0.1);
  static DeadNeurons relu(double eps = 1e-6) { return DeadNeurons(-eps, eps); }

  void update(const at::Tensor& act, const at::Tensor& mask = {});
  std::string kind() const override { return "DeadNeurons"; }
  void merge(const Accumulator& other) override;
  State state() const override;
  void restore(const State& s) override;
  Tensors finalize() const override;
  void to(const at::Device& device) override;

  int64_t tokens() const { return tokens_; }
  at::Tensor dead() const;  // [N] bool

 private:
  double lo_, hi_;
  int64_t tokens_ = 0;
  at::Tensor min_, max_, outside_;  // [N] float64, float64, int64; undefined before the first update
};

// Count, mean and variance (Chan's parallel update of Welford's sums, float64), absolute
// maximum, fraction of tokens outside the dead band ("active"), and a histogram per neuron with
// `bins` equal-width bins over [hist_lo, hist_hi) plus under- and overflow counts (bins = 0
// turns it off).
//
// finalize(): tokens, mean [N], variance [N] (population, divides by tokens), std [N],
// absmax [N], active_fraction [N], and with bins > 0: histogram [N, bins] int64,
// underflow [N], overflow [N], bin_edges [bins + 1].
class NeuronStats : public Accumulator {
 public:
  struct Options {
    double active_lo = -0.1, active_hi = 0.1;  // "active" = outside this band
    int64_t bins = 32;
    double hist_lo = -4.0, hist_hi = 4.0;
  };
  NeuronStats() : NeuronStats(Options{}) {}
  explicit NeuronStats(Options o);

  void update(const at::Tensor& act, const at::Tensor& mask = {});
  std::string kind() const override { return "NeuronStats"; }
  void merge(const Accumulator& other) override;
  State state() const override;
  void restore(const State& s) override;
  Tensors finalize() const override;
  void to(const at::Device& device) override;

  int64_t tokens() const { return tokens_; }

 private:
  Options o_;
  int64_t tokens_ = 0;
  at::Tensor mean_, m2_, absmax_, active_, hist_;  // hist_ [N, bins + 2]: under, bins..., over
};

}  // namespace qinterp::analysis
