// Perplexity of a token stream: the accumulator, the field's two protocols (PROTOCOLS.md §2.1),
// and the WikiText-2 text as the GPTQ loaders join it.
#pragma once
#include <functional>
#include <string>
#include <utility>

#include "qinterp/analysis/accumulator.hpp"

namespace qinterp::model {
class Model;
}
namespace qinterp::text {
class Tokenizer;
}

namespace qinterp::analysis {

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

// The two ways the field measures perplexity; they give different numbers, so every figure is
// reported with its protocol's name.
//   Gptq:     the IST-DASLab loaders. Non-overlapping windows of `seqlen` tokens from the start of
//             the stream, the tail that does not fill a window dropped; each window scores its
//             seqlen − 1 next-token predictions; PPL = exp(mean over windows of the window mean),
//             which is exp(mean over all scored tokens) since every window scores as many.
//   LlamaCpp: llama.cpp's `perplexity` tool. Non-overlapping chunks of `seqlen` (512) tokens, tail
//             dropped; the chunk's first token is replaced by BOS when the tokenizer adds one; only
//             the second half is scored: positions seqlen/2 .. seqlen−2 predict the next token
//             (seqlen − seqlen/2 − 1 tokens per chunk). PPL = exp(mean over scored tokens).
enum class PerplexityProtocol { Gptq, LlamaCpp };

// "gptq" or "llamacpp" (also "llama.cpp"); anything else is an Error listing both.
PerplexityProtocol parse_perplexity_protocol(const std::string& name);
const char* protocol_name(PerplexityProtocol p);  // "gptq" / "llamacpp"

struct PerplexityOptions {
  PerplexityProtocol protocol = PerplexityProtocol::Gptq;
  int64_t seqlen = 0;       // 0: gptq min(2048, the model's context); llamacpp 512 (capped the same way)
  int64_t max_windows = 0;  // 0: every full window
  int64_t batch = 1;        // windows per forward pass
  int64_t bos_id = -1;      // llamacpp: the chunk's first token becomes this id when >= 0
};

struct PerplexityResult {
  std::string protocol;
  double ppl = 0, nll = 0;    // nll: mean over scored tokens, nats
  int64_t tokens = 0;         // scored tokens
  int64_t windows = 0;        // windows evaluated
  int64_t seqlen = 0;         // window length used
  int64_t stream_tokens = 0;  // length of the whole token stream
};

// ids: the whole text tokenized once, [T] int64. progress(done, total) after each batch of windows.
PerplexityResult evaluate_perplexity(model::Model& model, const at::Tensor& ids, const PerplexityOptions& opts,
                                     const std::function<void(int64_t, int64_t)>& progress = {});

// WikiText-2 as the GPTQ loaders see it: the data set's rows are the lines of wiki.test.raw (a line
// of only spaces is the empty row; any other line keeps its leading space and its "\n"), joined
// with "\n\n". The llama.cpp protocol reads the raw file as it is.
std::string wikitext_joined(const std::string& raw);

// The text a protocol scores: "wikitext2" is WikiText-2's test split ($QINTERP_WIKITEXT2, else
// ../shared/datasets/wikitext2/wiki.test.raw), joined as the GPTQ loaders do for Gptq and as the
// raw file for LlamaCpp; anything else is a path to a UTF-8 text file, read as it is.
std::string perplexity_text(const std::string& dataset, PerplexityProtocol protocol);

// Tokenizes `text` once with the tokenizer's default special tokens (one BOS at the start where
// the model's files ask for it) and evaluates it; for LlamaCpp, opts.bos_id < 0 takes the
// tokenizer's BOS when it adds one by default (as llama.cpp does).
PerplexityResult evaluate_perplexity(model::Model& model, const text::Tokenizer& tokenizer, const std::string& text,
                                     PerplexityOptions opts, const std::function<void(int64_t, int64_t)>& progress = {});

}  // namespace qinterp::analysis
