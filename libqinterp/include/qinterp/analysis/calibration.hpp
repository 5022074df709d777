// Calibration of the predicted answer (perplexity is in analysis/perplexity.hpp).
#pragma once
#include <functional>
#include <utility>
#include <vector>

#include "qinterp/analysis/accumulator.hpp"

namespace qinterp::model {
class Model;
}

namespace qinterp::analysis {

// Accuracy, average confidence, ECE and ACE (PROTOCOLS.md §1.3). Keeps one float64 confidence
// and one correctness bit per example (ACE needs the sorted confidences).
//   ECE: `bins` equal-width bins over [0, 1]; bin b holds confidences in (b/bins, (b+1)/bins]
//        (confidence 0 goes to the first bin); ECE = Σ_b n_b/n · |acc_b − conf_b|.
//   ACE: the authors' binning — examples sorted by confidence (ties broken by correctness, so
//        that merging shards in any order gives the same answer), split into `bins` bins of equal
//        count where the first n % bins bins get one extra (numpy.array_split);
//        ACE = mean over the non-empty bins of |acc_b − conf_b|.
//
// finalize(): examples, accuracy, confidence, ece, ace, and the reliability tables
// ece_lo/ece_hi/ece_count/ece_accuracy/ece_confidence [bins] and
// ace_lo/ace_hi/ace_count/ace_accuracy/ace_confidence [bins] (lo/hi = smallest/largest
// confidence in the bin; NaN for empty bins).
class Calibration : public Accumulator {
 public:
  explicit Calibration(int64_t bins = 10);

  // confidence [n] in [0, 1] (any float dtype), correct [n] (bool or 0/1).
  void update(const at::Tensor& confidence, const at::Tensor& correct);
  // From next-token logits [n, vocab] and gold ids [n]: confidence = max softmax probability,
  // correct = argmax == gold.
  void update_logits(const at::Tensor& logits, const at::Tensor& gold);
  std::string kind() const override { return "Calibration"; }
  void merge(const Accumulator& other) override;
  State state() const override;
  void restore(const State& s) override;
  Tensors finalize() const override;
  void to(const at::Device& device) override;

  int64_t examples() const;

 private:
  int64_t bins_;
  std::vector<at::Tensor> conf_, correct_;  // appended batches (float64 / bool), CPU
};

}  // namespace qinterp::analysis
