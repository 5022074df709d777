#include "qinterp/analysis/salient.hpp"

#include <ATen/ATen.h>

#include <cmath>
#include <map>

#include "common.hpp"
#include "qinterp/text/tokenizer.hpp"

namespace qinterp::analysis {

using namespace detail;

namespace {
const char* const kScores[] = {"best", "sum", "avg", "max"};

// The distinct values of `keys` in order of first occurrence, each as the index of its last
// occurrence: what a Python dict built by assignment keeps.
std::vector<int64_t> last_of_each(const std::vector<std::string>& keys) {
  std::vector<int64_t> out;
  std::map<std::string, size_t> index;
  for (size_t i = 0; i < keys.size(); ++i) {
    auto [it, fresh] = index.emplace(keys[i], out.size());
    if (fresh) out.push_back(static_cast<int64_t>(i));
    else out[it->second] = static_cast<int64_t>(i);
  }
  return out;
}

// |s| / max|s| > threshold, none when the max is 0 (the authors' imp_neurons_after_threshold).
at::Tensor above(const at::Tensor& s, double threshold) {
  at::Tensor a = s.abs();
  const double mx = a.max().item<double>();
  if (mx > 0) a = a / mx;
  if (!(a.sum().item<double>() > 0)) return at::zeros(s.sizes(), at::kBool);
  return a.gt(threshold);
}
}  // namespace

std::vector<int64_t> answer_targets(const text::Tokenizer& tok, int64_t answer_id, const std::string& mode) {
  if (answer_id < 0 || answer_id >= tok.vocab_size())
    fail("answer_targets: token ", answer_id, " is outside the vocabulary of ", tok.source(), " [0, ", tok.vocab_size(), ")");
  if (mode == "generated") return {answer_id};
  if (mode != "retokenized") fail("answer_targets: mode must be 'generated' or 'retokenized', got '", mode, "'");
  std::string s = tok.decode({answer_id});
  // Python's str.strip(): ASCII whitespace and the other Unicode spaces a token may decode to.
  static const char* const kSpaces[] = {" ", "\t", "\n", "\r", "\v", "\f", "\xC2\xA0", "\xE3\x80\x80",
                                        "\xE2\x80\x80", "\xE2\x80\x81", "\xE2\x80\x82", "\xE2\x80\x83",
                                        "\xE2\x80\x84", "\xE2\x80\x85", "\xE2\x80\x86", "\xE2\x80\x87",
                                        "\xE2\x80\x88", "\xE2\x80\x89", "\xE2\x80\x8A", "\xE2\x80\xA8",
                                        "\xE2\x80\xA9", "\xE2\x80\xAF", "\xE2\x81\x9F", "\xC2\x85"};
  for (bool changed = true; changed && !s.empty();) {
    changed = false;
    for (const char* sp : kSpaces) {
      const std::string w(sp);
      if (s.size() >= w.size() && s.compare(0, w.size(), w) == 0) {
        s.erase(0, w.size());
        changed = true;
      }
      if (s.size() >= w.size() && s.compare(s.size() - w.size(), w.size(), w) == 0) {
        s.erase(s.size() - w.size());
        changed = true;
      }
    }
  }
  return s.empty() ? std::vector<int64_t>{} : tok.tokenize(s);
}

SalientNeurons::SalientNeurons(std::string mode, double threshold) : mode_(std::move(mode)), threshold_(threshold) {
  if (mode_ != "paper" && mode_ != "positions")
    fail("SalientNeurons: mode must be 'paper' or 'positions', got '", mode_, "'");
  if (!(threshold_ >= 0 && threshold_ < 1)) fail("SalientNeurons: threshold must be in [0, 1), got ", threshold_);
}

at::Tensor SalientNeurons::example_scores(const std::vector<at::Tensor>& attrs, const std::vector<std::string>& input_keys,
                                          const std::vector<std::string>& target_keys) const {
  const std::string who = "SalientNeurons" + (label_.empty() ? "" : " on '" + label_ + "'");
  if (attrs.empty()) fail(who, ": no attributions (an example with no target is counted with skip())");
  for (const auto& a : attrs)
    if (!a.defined() || a.dim() != 2 || !a.is_floating_point())
      fail(who, ": each target's attributions must be a floating [positions, neurons] tensor");
  const int64_t T = attrs[0].size(0), W = attrs[0].size(1);
  if (T == 0 || W == 0) fail(who, ": attributions have no positions or no neurons");
  for (const auto& a : attrs)
    if (a.size(0) < T || a.size(1) != W)
      fail(who, ": target attributions of shape ", a.sizes(), " do not extend the first target's [", T, ", ", W, "]");
  if (freq_.defined() && freq_.size(1) != W) fail(who, ": got ", W, " neurons after ", freq_.size(1), " in earlier updates");
  const bool paper = mode_ == "paper";
  if (paper && static_cast<int64_t>(input_keys.size()) != T)
    fail(who, ": paper mode needs one key (token string) per prompt position: got ", input_keys.size(), " for ", T,
         " positions");
  if (paper && !target_keys.empty() && target_keys.size() != attrs.size())
    fail(who, ": ", target_keys.size(), " target keys for ", attrs.size(), " targets");

  // Keys in first-occurrence order, each with the position of its last occurrence (paper); every
  // position (positions). Targets that count in the vectors: the last of each distinct decoded
  // string (paper), all.
  std::vector<int64_t> key_pos = paper ? last_of_each(input_keys) : std::vector<int64_t>{};
  if (!paper)
    for (int64_t p = 0; p < T; ++p) key_pos.push_back(p);
  std::vector<int64_t> targets = paper && !target_keys.empty() ? last_of_each(target_keys) : std::vector<int64_t>{};
  if (targets.empty())
    for (size_t k = 0; k < attrs.size(); ++k) targets.push_back(static_cast<int64_t>(k));

  std::vector<at::Tensor> prompt;  // per target: [T, W] on the CPU
  for (const auto& a : attrs) prompt.push_back(a.narrow(0, 0, T).to(at::kCPU).contiguous());
  const at::Tensor pos = at::tensor(key_pos, at::kLong);
  const int64_t K = pos.numel();

  // (a)'s ranking: per position the attribution summed over neurons and targets.
  at::Tensor seq;
  if (paper) {  // float32 sums in the authors' order: over neurons per target, then over targets
    std::vector<at::Tensor> rows;
    for (const auto& a : prompt) rows.push_back(a.to(at::kFloat).sum(-1));
    seq = at::stack(rows).sum(0).to(at::kDouble);
  } else {
    seq = at::zeros({T}, at::kDouble);
    for (const auto& a : prompt) seq.add_(a.to(at::kDouble).sum(-1));
  }
  const at::Tensor key_seq = seq.index_select(0, pos);
  const auto ks = key_seq.accessor<double, 1>();
  int64_t best = -1;
  for (int64_t i = 0; i < K; ++i)
    if (!std::isnan(ks[i]) && (best < 0 || ks[i] > ks[best])) best = i;
  if (best < 0) fail(who, ": the attributions are NaN");

  at::Tensor vec = at::zeros({K, W}, at::kDouble);  // per key, summed over the counted targets in order
  for (int64_t k : targets) vec.add_(prompt[static_cast<size_t>(k)].to(at::kDouble).index_select(0, pos));
  at::Tensor sum = at::zeros({W}, at::kDouble);
  for (int64_t i = 0; i < K; ++i) sum.add_(vec[i].abs());  // sequential, as numpy's += over keys
  const at::Tensor avg = sum / static_cast<double>(K);
  const at::Tensor mx = std::get<0>(vec.max(0));
  return at::stack({above(vec[best], threshold_), above(sum, threshold_), above(avg, threshold_), above(mx, threshold_)});
}

void SalientNeurons::update(const std::vector<at::Tensor>& attrs, const std::vector<std::string>& input_keys,
                            const std::vector<std::string>& target_keys) {
  const at::Tensor s = example_scores(attrs, input_keys, target_keys);  // [4, W]
  const at::Tensor add = at::cat({s, s.any(0, true)}, 0).to(at::kLong);
  if (!freq_.defined()) freq_ = at::zeros(add.sizes(), at::kLong);
  freq_.add_(add);
  ++examples_;
}

void SalientNeurons::merge(const Accumulator& other) {
  auto* o = dynamic_cast<const SalientNeurons*>(&other);
  if (!o) fail("SalientNeurons: cannot merge a ", other.kind());
  if (o->mode_ != mode_) fail("SalientNeurons: cannot merge mode '", o->mode_, "' into mode '", mode_, "'");
  same_setting("SalientNeurons", "threshold", threshold_, o->threshold_);
  if (o->freq_.defined()) {
    if (freq_.defined() && freq_.size(1) != o->freq_.size(1))
      fail("SalientNeurons: cannot merge ", o->freq_.size(1), " neurons into ", freq_.size(1));
    if (freq_.defined()) freq_.add_(o->freq_);
    else freq_ = o->freq_.clone();
  }
  examples_ += o->examples_;
  skipped_ += o->skipped_;
}

State SalientNeurons::state() const {
  State s{kind(),
          {{"mode", scalar(int64_t{mode_ == "paper" ? 0 : 1})},
           {"threshold", scalar(threshold_)},
           {"examples", scalar(examples_)},
           {"skipped", scalar(skipped_)}}};
  if (freq_.defined()) s.tensors["frequency"] = freq_.clone();
  return s;
}

void SalientNeurons::restore(const State& s) {
  check_kind(s, kind());
  const std::string k = kind();
  const int64_t mode = need_count(s, k, "mode");
  if (mode > 1) fail("saved SalientNeurons state: unknown mode ", mode);
  if ((mode == 0) != (mode_ == "paper"))
    fail("SalientNeurons: cannot restore a '", mode == 0 ? "paper" : "positions", "' state into mode '", mode_, "'");
  same_setting("SalientNeurons", "threshold", threshold_, need_number(s, k, "threshold"));
  const int64_t examples = need_count(s, k, "examples"), skipped = need_count(s, k, "skipped");
  at::Tensor f;
  if (has_any(s, {"frequency"})) {
    f = need_array(s, k, "frequency", {5, -1}, at::kLong);
    if (f.numel() && f.max().item<int64_t>() > examples)
      fail("saved SalientNeurons state: a neuron is salient in more examples than the ", examples, " seen");
  }
  examples_ = examples;
  skipped_ = skipped;
  freq_ = f;
}

Tensors SalientNeurons::finalize() const {
  Tensors r{{"examples", scalar(examples_)}, {"skipped", scalar(skipped_)}, {"threshold", scalar(threshold_)}};
  const at::Tensor f = freq_.defined() ? freq_ : at::zeros({5, 0}, at::kLong);
  r["frequency"] = f[4].clone();
  r["salient"] = f[4].gt(0);
  r["count"] = scalar(f[4].gt(0).sum().item<int64_t>());
  for (int i = 0; i < 4; ++i) {
    r[std::string(kScores[i]) + "_frequency"] = f[i].clone();
    r[std::string(kScores[i]) + "_count"] = scalar(f[i].gt(0).sum().item<int64_t>());
  }
  return r;
}

}  // namespace qinterp::analysis
