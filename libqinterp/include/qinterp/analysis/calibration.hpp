// Output-side analyses: calibration of the predicted answer and perplexity of a token stream.
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

// Mean negative log-likelihood (nats) and perplexity of predicted tokens.
// update(logits [B, S, V], targets [B, S] int64, mask [B, S]): position s of row b is scored
// against targets[b, s] where the mask is true (so pass targets already shifted by one).
// Log-softmax runs in float32 or wider; sums are float64.
// finalize(): tokens, nll (sum, nats), mean_nll, perplexity = exp(mean_nll).
class Perplexity : public Accumulator {
 public:
  Perplexity() = default;

  void update(const at::Tensor& logits, const at::Tensor& targets, const at::Tensor& mask = {});
  std::string kind() const override { return "Perplexity"; }
  void merge(const Accumulator& other) override;
  State state() const override;
  void restore(const State& s) override;
  Tensors finalize() const override;
  void to(const at::Device& device) override {}

  int64_t tokens() const { return tokens_; }
  double nll() const { return nll_; }

 private:
  int64_t tokens_ = 0;
  double nll_ = 0.0;
};

// Next-token targets of a left-padded batch, for Perplexity::update(logits[:, :-1], targets, mask):
// targets = ids[:, 1:], and a position counts only when it and the token it predicts are both real
// (mask[:, 1:] alone would also score the first real token of a padded row from a pad position).
// ids [B, T] int64, mask [B, T] bool / 0-1 -> {targets [B, T-1], mask [B, T-1] bool}.
std::pair<at::Tensor, at::Tensor> next_token_targets(const at::Tensor& ids, const at::Tensor& mask);

// Sliding-window perplexity of one token stream `ids` [T] (Hugging Face's recipe): windows of
// `context` tokens starting every `stride` tokens; each window scores only the tokens that the
// previous windows have not scored, with at least context − stride tokens of left context.
// With stride < context every token after the first is scored once; stride = context gives
// non-overlapping windows whose first token is not scored (it has no context), as in the recipe.
// Calls progress(done, total) after each window when given.
void perplexity(model::Model& model, const at::Tensor& ids, int64_t context, int64_t stride, Perplexity& acc,
                const std::function<void(int64_t, int64_t)>& progress = {});

}  // namespace qinterp::analysis
