// Salient neurons from integrated-gradient attributions (PROTOCOLS.md §1.3, §1.5): per example
// and hooked layer four neuron scores, each normalised as |s| / max|s| and thresholded (strictly
// above `threshold`, nothing when the max is 0); the reported number is the size of the union
// over the four scores and over all examples.
//
// Input per example: one attribution tensor [P_k, width] per target token k (integrated_gradients.hpp:
// target k sees the prompt followed by targets 0..k−1, so P_k = T + k); only the first T rows, the
// prompt's positions, are used (T = P_0). The per-position vectors are summed (signed, float64)
// over the target tokens. Then, over the prompt's "keys":
//   (a) best   the vector of the key whose attribution summed over neurons and targets is largest
//              (signed; the first such key);
//   (b) sum    Σ over keys of |vector|;   (c) avg  (b) divided by the number of keys;
//   (d) max    the element-wise signed maximum over keys.
// Modes:
//   "paper"     keys are the prompt's token strings, as the authors' scripts keep them: a string
//               that occurs twice keeps its last position's vector (in its first position's place),
//               and targets whose decoded strings repeat keep the last one in the vector sums;
//               the (a) ranking sums every target in float32, as their llm_attr does.
//   "positions" keys are the positions, every target counts.
//
// finalize(): examples, skipped (examples with no target: an answer that decodes to nothing),
// salient [W] bool (the union), count, frequency [W] int64 (examples in which the neuron was
// salient by any score), per score s in best/sum/avg/max: `<s>_frequency` [W] and `<s>_count`
// (the union size for that score alone), threshold.
#pragma once
#include <string>
#include <vector>

#include "qinterp/analysis/accumulator.hpp"

namespace qinterp::text {
class Tokenizer;
}

namespace qinterp::analysis {

// The target tokens IG attributes for a model's answer token `answer_id`:
//   "generated"   {answer_id} itself;
//   "retokenized" as the authors' scripts: the answer decoded (special tokens left out), stripped
//                 of surrounding whitespace and encoded again without special tokens — with a
//                 byte-level BPE (Phi-2, Qwen, SmolLM) " True" becomes "True", a different token;
//                 it may be several tokens, or none (an answer such as <|im_end|>, which the
//                 authors' script crashes on: count it with SalientNeurons::skip).
std::vector<int64_t> answer_targets(const text::Tokenizer& tok, int64_t answer_id, const std::string& mode);

class SalientNeurons : public Accumulator {
 public:
  explicit SalientNeurons(std::string mode = "paper", double threshold = 0.7);

  // attributions: per target token [P_k, W] (any float dtype and device); input_keys: the prompt's
  // token strings (paper mode; T of them), target_keys: the targets' decoded strings (paper
  // mode; empty = all distinct).
  void update(const std::vector<at::Tensor>& attributions, const std::vector<std::string>& input_keys = {},
              const std::vector<std::string>& target_keys = {});
  // An example that has nothing to attribute (empty answer): counted, nothing else.
  void skip() { ++skipped_; }

  // The four scores' salient sets of one example, without folding them in: [4, W] bool, rows in
  // the order best, sum, avg, max.
  at::Tensor example_scores(const std::vector<at::Tensor>& attributions, const std::vector<std::string>& input_keys = {},
                            const std::vector<std::string>& target_keys = {}) const;

  std::string kind() const override { return "SalientNeurons"; }
  void merge(const Accumulator& other) override;
  State state() const override;
  void restore(const State& s) override;
  Tensors finalize() const override;
  void to(const at::Device& device) override {}  // the state is small and stays on the CPU

  int64_t examples() const { return examples_; }
  int64_t skipped() const { return skipped_; }
  const std::string& mode() const { return mode_; }

 private:
  std::string mode_;
  double threshold_;
  int64_t examples_ = 0, skipped_ = 0;
  at::Tensor freq_;  // [5, W] int64: best, sum, avg, max, any
};

}  // namespace qinterp::analysis
