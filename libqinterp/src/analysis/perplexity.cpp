#include "qinterp/analysis/perplexity.hpp"

#include <c10/core/GradMode.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "common.hpp"
#include "qinterp/io/paths.hpp"
#include "qinterp/model/model.hpp"
#include "qinterp/text/tokenizer.hpp"

namespace qinterp::analysis {

using namespace detail;

void Perplexity::update(const at::Tensor& logits, const at::Tensor& targets, const at::Tensor& mask) {
  if (!logits.defined() || logits.dim() != 3 || !targets.defined() || targets.dim() != 2 ||
      targets.size(0) != logits.size(0) || targets.size(1) != logits.size(1))
    fail("Perplexity: update takes logits [B, S, V] and targets [B, S], got ",
         logits.defined() ? logits.sizes() : at::IntArrayRef{}, " and ",
         targets.defined() ? targets.sizes() : at::IntArrayRef{});
  if (mask.defined() && mask.sizes() != targets.sizes())
    fail("Perplexity: mask ", mask.sizes(), " does not match targets ", targets.sizes());
  const int64_t v = logits.size(2);
  if (at::isFloatingType(targets.scalar_type()) || at::isComplexType(targets.scalar_type()) ||
      targets.scalar_type() == at::kBool)
    fail("Perplexity: targets must be integer token ids, got ", targets.scalar_type());
  at::Tensor t = targets.to(logits.device()).to(at::kLong);
  at::Tensor m = mask.defined() ? mask.to(logits.device()).ne(0) : at::ones_like(t, t.options().dtype(at::kBool));
  at::Tensor tt = t.masked_select(m);
  if (tt.numel() == 0) return;
  if (tt.min().item<int64_t>() < 0 || tt.max().item<int64_t>() >= v)
    fail("Perplexity: a target id is outside the vocabulary [0, ", v, ")");
  at::Tensor lg = logits.masked_select(m.unsqueeze(-1)).view({-1, v});
  lg = lg.scalar_type() == at::kDouble ? lg : lg.to(at::kFloat);
  at::Tensor lp = lg.log_softmax(-1).gather(1, tt.unsqueeze(1)).squeeze(1);
  const double s = -lp.sum(0, false, at::kDouble).item<double>();
  if (!std::isfinite(s))
    fail("Perplexity", label_.empty() ? "" : " on '" + label_ + "'", ": non-finite log-likelihood (", s,
         ") in this update; nothing was counted — the logits hold NaN or Inf");
  nll_ += s;
  tokens_ += tt.numel();
}

void Perplexity::merge(const Accumulator& other) {
  auto* o = dynamic_cast<const Perplexity*>(&other);
  if (!o) fail("Perplexity: cannot merge a ", other.kind());
  nll_ += o->nll_;
  tokens_ += o->tokens_;
}

State Perplexity::state() const { return State{kind(), {{"tokens", scalar(tokens_)}, {"nll", scalar(nll_)}}}; }

void Perplexity::restore(const State& s) {
  check_kind(s, kind());
  const int64_t tokens = need_count(s, kind(), "tokens");
  const double nll = need_number(s, kind(), "nll");
  if (nll < 0) fail("saved Perplexity state: the summed negative log-likelihood is ", nll, ", below 0");
  nll_ = nll;
  tokens_ = tokens;
}

Tensors Perplexity::finalize() const {
  const double mean = tokens_ ? nll_ / static_cast<double>(tokens_) : std::numeric_limits<double>::quiet_NaN();
  return {{"tokens", scalar(tokens_)}, {"nll", scalar(nll_)}, {"mean_nll", scalar(mean)}, {"perplexity", scalar(std::exp(mean))}};
}

void perplexity(model::Model& model, const at::Tensor& ids, int64_t context, int64_t stride, Perplexity& acc,
                const std::function<void(int64_t, int64_t)>& progress) {
  if (!ids.defined() || ids.dim() != 1) fail("perplexity: ids must be a 1-D token stream");
  if (context < 2) fail("perplexity: context must be >= 2, got ", context);
  if (stride < 1 || stride > context) fail("perplexity: stride must be in [1, context], got ", stride);
  const int64_t len = ids.size(0);
  at::Tensor x = ids.to(at::kLong);
  int64_t prev_end = 0, done = 0;
  const int64_t total = len < 2 ? 0 : (std::max<int64_t>(len - context, 0) + stride - 1) / stride + 1;
  for (int64_t begin = 0; len >= 2; begin += stride) {
    const int64_t end = std::min(begin + context, len);
    at::Tensor win = x.narrow(0, begin, end - begin).unsqueeze(0);
    at::Tensor logits;
    {
      c10::NoGradGuard ng;
      logits = model.forward(win.to(model.device()));
    }
    // Position p of the window predicts token p + 1; score targets in [max(prev_end, begin + 1), end).
    const int64_t first = std::max(prev_end, begin + 1);
    const int64_t s0 = first - 1 - begin, count = end - first;
    if (count > 0)
      acc.update(logits.narrow(1, s0, count), win.narrow(1, s0 + 1, count).to(logits.device()));
    prev_end = end;
    ++done;
    if (progress) progress(done, total);
    if (end == len) break;
  }
}

std::pair<at::Tensor, at::Tensor> next_token_targets(const at::Tensor& ids, const at::Tensor& mask) {
  if (!ids.defined() || ids.dim() != 2 || ids.size(1) < 2)
    fail("next_token_targets: ids must be [batch, seq] with seq >= 2");
  if (ids.is_floating_point() || ids.is_complex()) fail("next_token_targets: ids must be integer token ids");
  const int64_t T = ids.size(1);
  const at::Tensor t = ids.narrow(1, 1, T - 1).to(at::kLong);
  if (!mask.defined()) return {t, at::ones_like(t, t.options().dtype(at::kBool))};
  if (mask.sizes() != ids.sizes())
    fail("next_token_targets: mask shape ", mask.sizes(), " differs from ids shape ", ids.sizes());
  const at::Tensor m = mask.ne(0);
  return {t, m.narrow(1, 1, T - 1).logical_and(m.narrow(1, 0, T - 1))};
}

// ---------------------------------------------------------------------------------------------
// The two protocols

PerplexityProtocol parse_perplexity_protocol(const std::string& name) {
  if (name == "gptq") return PerplexityProtocol::Gptq;
  if (name == "llamacpp" || name == "llama.cpp") return PerplexityProtocol::LlamaCpp;
  fail("unknown perplexity protocol '", name, "' (gptq: non-overlapping windows, every position scored; "
       "llamacpp: 512-token chunks, BOS first, second half scored)");
}

const char* protocol_name(PerplexityProtocol p) { return p == PerplexityProtocol::Gptq ? "gptq" : "llamacpp"; }

PerplexityResult evaluate_perplexity(model::Model& model, const at::Tensor& ids, const PerplexityOptions& o,
                                     const std::function<void(int64_t, int64_t)>& progress) {
  if (!ids.defined() || ids.dim() != 1) fail("perplexity: ids must be a 1-D token stream");
  if (ids.is_floating_point() || ids.is_complex()) fail("perplexity: ids must be integer token ids");
  if (o.seqlen < 0) fail("perplexity: seqlen must be >= 2, got ", o.seqlen);
  if (o.max_windows < 0) fail("perplexity: max_windows must be >= 0 (0 = all), got ", o.max_windows);
  if (o.batch < 1) fail("perplexity: batch must be >= 1, got ", o.batch);
  const bool gptq = o.protocol == PerplexityProtocol::Gptq;
  const int64_t ctx = model.config().max_seq_len;
  const int64_t seqlen = o.seqlen > 0 ? o.seqlen : std::min<int64_t>(gptq ? 2048 : 512, ctx);
  if (seqlen < (gptq ? 2 : 4)) fail("perplexity: seqlen must be >= ", gptq ? 2 : 4, ", got ", seqlen);
  if (seqlen > ctx) fail("perplexity: seqlen ", seqlen, " is longer than the model's context of ", ctx, " tokens");
  const int64_t vocab = model.config().vocab_size;
  if (!gptq && o.bos_id >= vocab) fail("perplexity: BOS id ", o.bos_id, " is outside the vocabulary of ", vocab);
  const int64_t len = ids.size(0);
  int64_t windows = len / seqlen;
  if (windows == 0)
    fail("perplexity: the text is ", len, " tokens, shorter than one window of ", seqlen,
         " (give a longer text or a smaller seqlen)");
  if (o.max_windows > 0) windows = std::min(windows, o.max_windows);
  at::Tensor all = ids.to(at::kCPU, at::kLong).narrow(0, 0, windows * seqlen).view({windows, seqlen}).clone();
  const int64_t lo = all.min().item<int64_t>(), hi = all.max().item<int64_t>();
  if (lo < 0 || hi >= vocab)
    fail("perplexity: token id ", lo < 0 ? lo : hi, " is outside the model's vocabulary [0, ", vocab, ")");
  if (!gptq && o.bos_id >= 0) all.select(1, 0).fill_(o.bos_id);
  // Position p predicts token p + 1; gptq scores p in [0, seqlen - 1), llamacpp p in [seqlen/2, seqlen - 1).
  const int64_t first = gptq ? 0 : seqlen / 2, count = seqlen - 1 - first;
  Perplexity acc;
  c10::NoGradGuard ng;
  for (int64_t w = 0; w < windows; w += o.batch) {
    const int64_t b = std::min(o.batch, windows - w);
    at::Tensor x = all.narrow(0, w, b).to(model.device());
    at::Tensor logits = model.forward(x);
    acc.update(logits.narrow(1, first, count), x.narrow(1, first + 1, count));
    if (progress) progress(w + b, windows);
  }
  PerplexityResult r;
  r.protocol = protocol_name(o.protocol);
  r.tokens = acc.tokens();
  r.nll = acc.nll() / static_cast<double>(acc.tokens());
  r.ppl = std::exp(r.nll);
  r.windows = windows;
  r.seqlen = seqlen;
  r.stream_tokens = len;
  return r;
}

std::string wikitext_joined(const std::string& raw) {
  std::string out;
  out.reserve(raw.size() + raw.size() / 20);
  size_t pos = 0;
  bool first = true;
  while (pos < raw.size()) {
    size_t nl = raw.find('\n', pos);
    const size_t end = nl == std::string::npos ? raw.size() : nl + 1;
    std::string_view line(raw.data() + pos, end - pos);
    const std::string_view body = line.substr(0, line.size() - (nl == std::string::npos ? 0 : 1));
    const bool blank = body.find_first_not_of(' ') == std::string_view::npos;
    if (!first) out += "\n\n";
    if (!blank) out += line;
    first = false;
    pos = end;
  }
  return out;
}

std::string perplexity_text(const std::string& dataset, PerplexityProtocol protocol) {
  std::string path = dataset;
  const bool wikitext = dataset == "wikitext2";
  if (wikitext) {
    const char* env = std::getenv("QINTERP_WIKITEXT2");
    path = env && *env ? env : "../shared/datasets/wikitext2/wiki.test.raw";
    if (!io::paths::exists(path))
      fail("perplexity: WikiText-2 not found at ", path, " (set QINTERP_WIKITEXT2 to wiki.test.raw, or give a text file)");
  } else if (!io::paths::exists(path)) {
    fail("perplexity: no data set or file '", dataset, "' (wikitext2, or a path to a text file)");
  }
  if (io::paths::is_dir(path)) fail("perplexity: ", path, " is a folder, not a text file");
  std::ifstream f(path, std::ios::binary);
  std::ostringstream s;
  if (!f || !(s << f.rdbuf())) fail("perplexity: cannot read ", path);
  std::string text = s.str();
  if (text.empty()) fail("perplexity: ", path, " is empty");
  return wikitext && protocol == PerplexityProtocol::Gptq ? wikitext_joined(text) : text;
}

PerplexityResult evaluate_perplexity(model::Model& model, const text::Tokenizer& tokenizer, const std::string& text,
                                     PerplexityOptions opts, const std::function<void(int64_t, int64_t)>& progress) {
  const std::vector<int64_t> ids = tokenizer.encode(text);
  if (opts.protocol == PerplexityProtocol::LlamaCpp && opts.bos_id < 0 && tokenizer.add_bos_default())
    opts.bos_id = tokenizer.bos_id();
  return evaluate_perplexity(model, at::tensor(ids, at::kLong), opts, progress);
}

}  // namespace qinterp::analysis
