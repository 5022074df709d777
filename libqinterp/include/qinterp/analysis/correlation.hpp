// Pairwise neuron correlation within a layer (the paper's redundancy figure, PROTOCOLS.md §1.3).
// Drift (full precision against a quantized copy) is in drift.hpp, the clustering in clustering.hpp.
#pragma once
#include <vector>

#include "qinterp/analysis/accumulator.hpp"

namespace qinterp::analysis {

// Streaming centred second moments of the N neurons of one hook, without ever holding the
// [tokens, N] matrix. State: token count, mean [N] and the upper triangle of the co-moment matrix
// M2 = Σ (x − mean)(x − mean)ᵀ in float64, kept as block rows of `tile` neurons
// (M2[a0 : a0 + tile, a0 : N]) — about N²/2 × 8 bytes. Each update centres its tokens on their
// own mean, forms one float32 product per block row (chunks of at most `chunk` tokens, so
// rounding stays near 1e-7 of the norms) and adds it to M2 with Chan's correction for the shift
// of the mean. On a CPU with AVX2 and FMA, float32 (and fp16/bf16) activations go through
// qinterp's own kernel, which computes only the upper triangle and updates M2 in one pass;
// elsewhere, and with cpu_kernel = false, ATen matrix products do the same work (the reference
// the kernel is tested against).
//
// finalize(): |Pearson r| over the pairs i < j (diagonal excluded):
//   histogram [bins] int64 and bin_edges [bins + 1] (equal width over [0, 1]; |r| = 1 lands in
//   the last bin); pairs_total = C(N, 2); pairs_counted; zero_variance [K] int64 — neurons whose
//   activations never vary: every pair with one of them is left out of the histogram (numpy
//   would give NaN there) and counted in pairs_excluded; top_values [k], top_i [k], top_j [k]
//   — the k largest |r|; with cluster_threshold > 0, independent_neurons: the number of
//   clusters when average-linkage clustering on 1 − |r| is cut at that distance (NeuroX's
//   clustering; zero-variance neurons are singletons), and cluster [N] int64 labels.
class Correlation : public Accumulator {
 public:
  struct Options {
    int64_t bins = 10;
    int64_t top_k = 100;
    double cluster_threshold = 0.0;  // 0 = no clustering; NeuroX uses 0.5
    int64_t tile = 256;
    int64_t chunk = 2048;
    bool cpu_kernel = true;  // false: ATen products on the CPU too (the kernel's reference)
  };
  Correlation() : Correlation(Options{}) {}
  explicit Correlation(Options o);

  void update(const at::Tensor& act, const at::Tensor& mask = {});
  std::string kind() const override { return "Correlation"; }
  void merge(const Accumulator& other) override;
  State state() const override;
  void restore(const State& s) override;
  Tensors finalize() const override;
  void to(const at::Device& device) override;

  int64_t tokens() const { return n_; }
  int64_t neurons() const { return neurons_; }
  // The full correlation matrix [N, N] float64 (NaN for zero-variance neurons): for small N
  // and tests; finalize() never forms it.
  at::Tensor matrix() const;

 private:
  Options o_;
  int64_t n_ = 0, neurons_ = 0;
  at::Tensor mean_;                 // [N] float64
  std::vector<at::Tensor> tiles_;   // block row a: M2[a0 : a0 + tile, a0 : N], a0 = a * tile
  int64_t ntiles() const { return (neurons_ + o_.tile - 1) / o_.tile; }
  void add_chunk(const at::Tensor& x, const at::Tensor& centre, const at::Tensor& scale = {},
                 const at::Tensor& unscale = {});
  void add_chunks_kernel(const at::Tensor& x, const at::Tensor& centre);
  void merge_moments(int64_t nb, const at::Tensor& mean_b, const std::vector<at::Tensor>& m2_b);
};

}  // namespace qinterp::analysis
