#include "qinterp/analysis/drift.hpp"

#include "common.hpp"
#include "qinterp/device.hpp"

namespace qinterp::analysis {

using namespace detail;

Drift::Drift(double dead_lo, double dead_hi) : dead_a_(dead_lo, dead_hi), dead_b_(dead_lo, dead_hi) {}

namespace {
const char* const kDriftSums[] = {"mean_full", "mean_quant", "m2_full", "m2_quant", "c",
                                  "sq_diff",   "dot",        "sq_full", "sq_quant"};
}

void Drift::fold(int64_t nb, const Tensors& b) {
  if (sums_.empty()) {
    for (const char* k : kDriftSums) sums_[k] = b.at(k).clone();
    n_ = nb;
    return;
  }
  const double n = static_cast<double>(n_ + nb), f = static_cast<double>(n_) * static_cast<double>(nb) / n;
  at::Tensor da = b.at("mean_full") - sums_["mean_full"], db = b.at("mean_quant") - sums_["mean_quant"];
  sums_["c"].add_(b.at("c")).add_(da * db * f);
  sums_["m2_full"].add_(b.at("m2_full")).add_(da.square() * f);
  sums_["m2_quant"].add_(b.at("m2_quant")).add_(db.square() * f);
  sums_["mean_full"].add_(da * (static_cast<double>(nb) / n));
  sums_["mean_quant"].add_(db * (static_cast<double>(nb) / n));
  for (const char* k : {"sq_diff", "dot", "sq_full", "sq_quant"}) sums_[k].add_(b.at(k));
  n_ += nb;
}

void Drift::update(const at::Tensor& full, const at::Tensor& quant, const at::Tensor& mask) {
  if (!full.defined() || !quant.defined() || full.sizes() != quant.sizes())
    fail("Drift", label_.empty() ? "" : " on '" + label_ + "'", ": full-precision and quantized activations must have "
         "the same shape (same tokens), got ", full.defined() ? full.sizes() : at::IntArrayRef{}, " and ",
         quant.defined() ? quant.sizes() : at::IntArrayRef{});
  // Real tokens in the activations' precision (the dead sets compare there), then float64.
  at::Tensor a_act = widen(real_tokens(full, mask, "Drift"), "Drift");
  at::Tensor b_act = widen(real_tokens(quant.to(full.device()), mask, "Drift"), "Drift");
  const int64_t nb = a_act.size(0);
  if (nb == 0) return;
  if (!sums_.empty() && a_act.size(1) != sums_["mean_full"].size(0))
    fail("Drift", label_.empty() ? "" : " on '" + label_ + "'", ": got ", a_act.size(1), " neurons after ",
         sums_["mean_full"].size(0));
  if (!sums_.empty() && sums_["mean_full"].device() != a_act.device()) to(a_act.device());
  at::Tensor a = a_act.to(at::kDouble), b = b_act.to(at::kDouble);
  at::Tensor sa = a.sum(0), sb = b.sum(0);
  check_finite(sa, a, "Drift (full precision)", label_, n_);
  check_finite(sb, b, "Drift (quantized)", label_, n_);
  at::Tensor ma = sa / static_cast<double>(nb), mb = sb / static_cast<double>(nb);
  at::Tensor ca = a - ma, cb = b - mb;
  const Tensors batch{{"mean_full", ma},
                      {"mean_quant", mb},
                      {"m2_full", ca.square().sum(0)},
                      {"m2_quant", cb.square().sum(0)},
                      {"c", (ca * cb).sum(0)},
                      {"sq_diff", (a - b).square().sum(0)},
                      {"dot", (a * b).sum(0)},
                      {"sq_full", a.square().sum(0)},
                      {"sq_quant", b.square().sum(0)}};
  dead_a_.update(a_act);  // cannot fail now: shapes and finiteness are checked
  dead_b_.update(b_act);
  fold(nb, batch);
}

void Drift::merge(const Accumulator& other) {
  auto* o = dynamic_cast<const Drift*>(&other);
  if (!o) fail("Drift: cannot merge a ", other.kind());
  dead_a_.merge(o->dead_a_);  // also checks the bands agree
  dead_b_.merge(o->dead_b_);
  if (o->sums_.empty()) return;
  if (!sums_.empty() && o->sums_.at("mean_full").size(0) != sums_["mean_full"].size(0))
    fail("Drift: cannot merge ", o->sums_.at("mean_full").size(0), " neurons into ", sums_["mean_full"].size(0));
  const auto dev = sums_.empty() ? o->sums_.at("mean_full").device() : sums_["mean_full"].device();
  Tensors b;
  for (const auto& [k, t] : o->sums_) b[k] = t.to(dev);
  fold(o->n_, b);
}

State Drift::state() const {
  State s{kind(), {{"tokens", scalar(n_)}}};
  for (auto& [k, v] : dead_a_.state().tensors) s.tensors["dead_full." + k] = v;
  for (auto& [k, v] : dead_b_.state().tensors) s.tensors["dead_quant." + k] = v;
  for (const auto& [k, t] : sums_) s.tensors[k] = t.cpu();
  return s;
}

void Drift::restore(const State& s) {
  check_kind(s, kind());
  State da{"DeadNeurons", {}}, db{"DeadNeurons", {}};
  for (auto& [k, v] : s.tensors) {
    if (k.rfind("dead_full.", 0) == 0) da.tensors[k.substr(10)] = v;
    if (k.rfind("dead_quant.", 0) == 0) db.tensors[k.substr(11)] = v;
  }
  const int64_t tokens = need_count(s, kind(), "tokens");
  Tensors sums;
  bool some = false;
  for (const char* k : kDriftSums) some = some || s.tensors.count(k);
  if (some) {  // everything is checked before anything is replaced
    const int64_t n = need_array(s, kind(), "mean_full", {-1}, at::kDouble).size(0);
    for (const char* k : kDriftSums) sums[k] = need_array(s, kind(), k, {n}, at::kDouble);
  }
  DeadNeurons a = dead_a_, b = dead_b_;
  for (auto [d, part, from] : {std::make_tuple(&a, "dead_full", &da), std::make_tuple(&b, "dead_quant", &db)}) {
    try {
      d->restore(*from);
    } catch (const Error& e) {
      fail("saved Drift state, its '", part, ".' entries: ", e.what());
    }
  }
  const int64_t n = sums.empty() ? 0 : sums["mean_full"].size(0);
  for (const DeadNeurons* d : {&a, &b})
    if (d->dead().size(0) != n)
      fail("saved Drift state: its dead-neuron parts count ", d->dead().size(0), " neurons, its sums ", n);
  dead_a_ = a;
  dead_b_ = b;
  n_ = tokens;
  sums_ = std::move(sums);
}

Tensors Drift::finalize() const {
  Tensors r{{"tokens", scalar(n_)}};
  if (sums_.empty()) return r;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  auto g = [&](const char* k) { return sums_.at(k); };
  r["mse"] = (g("sq_diff") / static_cast<double>(n_)).cpu();
  at::Tensor den = (g("sq_full") * g("sq_quant")).sqrt();
  r["cosine"] = at::where(den.gt(0), g("dot") / den, at::full_like(den, nan)).cpu();
  at::Tensor dv = (g("m2_full") * g("m2_quant")).sqrt();
  r["correlation"] = at::where(dv.gt(0), g("c") / dv, at::full_like(dv, nan)).cpu();
  at::Tensor fa = dead_a_.dead().cpu(), fb = dead_b_.dead().cpu();
  r["dead_full"] = fa;
  r["dead_quant"] = fb;
  const int64_t both = (fa & fb).sum().item<int64_t>(), either = (fa | fb).sum().item<int64_t>();
  r["dead_both"] = scalar(both);
  r["dead_only_full"] = scalar((fa & fb.logical_not()).sum().item<int64_t>());
  r["dead_only_quant"] = scalar((fb & fa.logical_not()).sum().item<int64_t>());
  r["dead_agreement"] = scalar(fa.eq(fb).to(at::kDouble).mean().item<double>());
  r["dead_jaccard"] = scalar(either ? static_cast<double>(both) / static_cast<double>(either) : 1.0);
  return r;
}

void Drift::to(const at::Device& device) {
  check_device(device);
  for (auto& [k, t] : sums_) t = t.to(device);
  dead_a_.to(device);
  dead_b_.to(device);
}

}  // namespace qinterp::analysis
