#include "qinterp/analysis/neurons.hpp"

#include <cmath>

#include "common.hpp"
#include "qinterp/device.hpp"

namespace qinterp::analysis {

// ---------------------------------------------------------------------------------------------
// shared helpers

at::Tensor real_tokens(const at::Tensor& act, const at::Tensor& mask, const std::string& who) {
  if (!act.defined()) fail(who, ": activation tensor is undefined");
  if (act.dim() != 2 && act.dim() != 3)
    fail(who, ": activations must be [tokens, neurons] or [batch, seq, neurons], got ", act.sizes());
  const int64_t n = act.size(-1);
  if (n == 0) fail(who, ": activations have no neurons (last dimension 0), shape ", act.sizes());
  at::Tensor x = act.reshape({-1, n});
  if (!mask.defined()) return x;
  const auto lead = act.sizes().slice(0, act.dim() - 1);
  if (mask.sizes() != lead)
    fail(who, ": mask shape ", mask.sizes(), " does not match the activation's leading dims ", lead);
  at::Tensor m = mask.to(act.device()).reshape({-1});
  if (m.scalar_type() != at::kBool) m = m.ne(0);
  return x.index({m});
}

namespace detail {

at::Tensor widen(const at::Tensor& x, const std::string& who) {
  switch (x.scalar_type()) {
    case at::kHalf:
    case at::kBFloat16:
      return x.to(at::kFloat);
    case at::kFloat:
    case at::kDouble:
      return x;
    default:
      fail(who, ": activations must be floating point (fp16, bf16, fp32, fp64), got ", x.scalar_type());
  }
}

void check_finite(const at::Tensor& summary, const at::Tensor& x, const std::string& who, const std::string& label,
                  int64_t first_token) {
  if (at::isfinite(summary).all().item<bool>()) return;
  at::Tensor bad = at::isfinite(x).logical_not().nonzero();
  if (bad.size(0) == 0) return;  // the summary overflowed, the data did not
  bad = bad[0].cpu();
  const int64_t t = bad[0].item<int64_t>(), j = bad[1].item<int64_t>();
  const double v = x[t][j].item<double>();
  fail(who, label.empty() ? "" : " on '" + label + "'", ": activation ", (std::isnan(v) ? "NaN" : v > 0 ? "+Inf" : "-Inf"),
       " at token ", first_token + t, " (row ", t, " of this update), neuron ", j,
       "; non-finite activations are refused (nothing from this update was counted) — check the model and its "
       "quantization, or drop such tokens with the mask");
}

at::Tensor colsum64(const at::Tensor& x) {
  if (x.scalar_type() == at::kDouble) return x.sum(0);
  const int64_t t = x.size(0), n = x.size(1), full = t / 64 * 64;
  at::Tensor s = at::zeros({n}, x.options().dtype(at::kDouble));
  if (full) s.add_(x.narrow(0, 0, full).reshape({full / 64, 64, n}).sum(1).sum(0, false, at::kDouble));
  if (t > full) s.add_(x.narrow(0, full, t - full).sum(0, false, at::kDouble));
  return s;
}

at::Tensor scalar(double v) { return at::scalar_tensor(v, at::kDouble); }
at::Tensor scalar(int64_t v) { return at::scalar_tensor(v, at::kLong); }

void check_kind(const State& s, const std::string& kind) {
  if (s.kind != kind) fail("cannot restore a ", kind, " from a saved '", s.kind, "' state");
}

const at::Tensor& need(const State& s, const std::string& kind, const std::string& name) {
  auto it = s.tensors.find(name);
  if (it == s.tensors.end() || !it->second.defined())
    fail("saved ", kind, " state lacks '", name, "'; it was not written by this version of qinterp's ", kind);
  return it->second;
}

bool has_any(const State& s, std::initializer_list<const char*> names) {
  for (const char* n : names)
    if (s.tensors.count(n)) return true;
  return false;
}

int64_t need_count(const State& s, const std::string& kind, const std::string& name) {
  const at::Tensor& t = need(s, kind, name);
  if (t.numel() != 1 || !at::isIntegralType(t.scalar_type(), /*includeBool=*/false))
    fail("saved ", kind, " state: '", name, "' must be one integer, got ", t.scalar_type(), " of shape ",
         t.sizes());
  const int64_t v = t.item<int64_t>();
  if (v < 0) fail("saved ", kind, " state: '", name, "' is ", v, ", a count cannot be negative");
  return v;
}

double need_number(const State& s, const std::string& kind, const std::string& name) {
  const at::Tensor& t = need(s, kind, name);
  if (t.numel() != 1 || t.scalar_type() == at::kBool || t.is_complex())
    fail("saved ", kind, " state: '", name, "' must be one number, got ", t.scalar_type(), " of shape ",
         t.sizes());
  return t.item<double>();
}

at::Tensor need_array(const State& s, const std::string& kind, const std::string& name,
                      const std::vector<int64_t>& dims, at::ScalarType as) {
  const at::Tensor& t = need(s, kind, name);
  bool ok = t.dim() == static_cast<int64_t>(dims.size());
  for (size_t i = 0; ok && i < dims.size(); ++i) ok = dims[i] < 0 || t.size(static_cast<int64_t>(i)) == dims[i];
  if (!ok) {
    std::string want = "[";
    for (size_t i = 0; i < dims.size(); ++i) want += (i ? ", " : "") + (dims[i] < 0 ? std::string("*") : std::to_string(dims[i]));
    fail("saved ", kind, " state: '", name, "' has shape ", t.sizes(), ", expected ", want, "]");
  }
  const bool integral = at::isIntegralType(as, /*includeBool=*/true);
  const bool fits = integral ? at::isIntegralType(t.scalar_type(), /*includeBool=*/as == at::kBool)
                             : at::isFloatingType(t.scalar_type());
  if (!fits)
    fail("saved ", kind, " state: '", name, "' is ", t.scalar_type(), ", expected ",
         integral ? "an integer type" : "a floating-point type");
  at::Tensor r = t.to(at::kCPU, as).contiguous().clone();
  if (integral && as != at::kBool && r.numel() && r.min().item<int64_t>() < 0)
    fail("saved ", kind, " state: '", name, "' holds negative counts");
  return r;
}

void same_setting(const char* kind, const char* what, double mine, double theirs) {
  if (mine != theirs && !(std::isnan(mine) && std::isnan(theirs)))
    fail(kind, ": cannot combine with a state whose ", what, " is ", theirs, " (this one has ", mine, ")");
}

at::Tensor on(const at::Tensor& t, const at::Device& device) { return t.defined() ? t.to(device) : t; }

void chan_merge(int64_t na, at::Tensor& mean_a, at::Tensor& m2_a, int64_t nb, const at::Tensor& mean_b,
                const at::Tensor& m2_b) {
  if (nb == 0) return;
  if (na == 0) {
    mean_a = mean_b.clone();
    m2_a = m2_b.clone();
    return;
  }
  const double n = static_cast<double>(na + nb);
  at::Tensor delta = mean_b - mean_a;
  m2_a.add_(m2_b).add_(delta.square() * (static_cast<double>(na) * static_cast<double>(nb) / n));
  mean_a.add_(delta * (static_cast<double>(nb) / n));
}

}  // namespace detail

using namespace detail;

// ---------------------------------------------------------------------------------------------
// DeadNeurons

DeadNeurons::DeadNeurons(double lo, double hi) : lo_(lo), hi_(hi) {
  if (!(lo < hi)) fail("DeadNeurons: the band (", lo, ", ", hi, ") is empty; lo must be below hi");
}

void DeadNeurons::update(const at::Tensor& act, const at::Tensor& mask) {
  const at::Tensor own = real_tokens(act, mask, "DeadNeurons");
  at::Tensor x = widen(own, "DeadNeurons");
  if (x.size(0) == 0) return;
  if (min_.defined() && min_.device() != x.device()) to(x.device());
  if (min_.defined() && x.size(1) != min_.size(0))
    fail("DeadNeurons", label_.empty() ? "" : " on '" + label_ + "'", ": got ", x.size(1), " neurons after ",
         min_.size(0), " in earlier updates");
  at::Tensor mn = x.amin(0), mx = x.amax(0);  // NaN propagates into both, ±Inf into one
  check_finite(at::stack({mn, mx}), x, "DeadNeurons", label_, tokens_);
  // Compared in the activation's own dtype (the band edges rounded to it), as numpy compares an
  // array with a Python float: fp16 activations against fp16(0.1) = 0.0999755859375.
  at::Tensor out = at::logical_or(own <= lo_, own >= hi_).sum(0);
  if (!min_.defined()) {
    min_ = mn.to(at::kDouble);
    max_ = mx.to(at::kDouble);
    outside_ = out;
  } else {
    min_ = at::minimum(min_, mn.to(at::kDouble));
    max_ = at::maximum(max_, mx.to(at::kDouble));
    outside_.add_(out);
  }
  tokens_ += x.size(0);
}

void DeadNeurons::merge(const Accumulator& other) {
  auto* o = dynamic_cast<const DeadNeurons*>(&other);
  if (!o) fail("DeadNeurons: cannot merge a ", other.kind());
  same_setting("DeadNeurons", "band lo", lo_, o->lo_);
  same_setting("DeadNeurons", "band hi", hi_, o->hi_);
  if (!o->min_.defined()) return;
  if (!min_.defined()) {
    min_ = o->min_.clone();
    max_ = o->max_.clone();
    outside_ = o->outside_.clone();
  } else {
    if (o->min_.size(0) != min_.size(0))
      fail("DeadNeurons: cannot merge ", o->min_.size(0), " neurons into ", min_.size(0));
    const auto dev = min_.device();
    min_ = at::minimum(min_, o->min_.to(dev));
    max_ = at::maximum(max_, o->max_.to(dev));
    outside_.add_(o->outside_.to(dev));
  }
  tokens_ += o->tokens_;
}

State DeadNeurons::state() const {
  State s{kind(), {{"lo", scalar(lo_)}, {"hi", scalar(hi_)}, {"tokens", scalar(tokens_)}}};
  if (min_.defined()) {
    s.tensors["min"] = min_.cpu();
    s.tensors["max"] = max_.cpu();
    s.tensors["outside"] = outside_.cpu();
  }
  return s;
}

void DeadNeurons::restore(const State& s) {
  check_kind(s, kind());
  const std::string k = kind();
  same_setting("DeadNeurons", "band lo", lo_, need_number(s, k, "lo"));
  same_setting("DeadNeurons", "band hi", hi_, need_number(s, k, "hi"));
  const int64_t tokens = need_count(s, k, "tokens");
  at::Tensor mn, mx, out;
  if (has_any(s, {"min", "max", "outside"})) {  // everything is checked before anything is replaced
    mn = need_array(s, k, "min", {-1}, at::kDouble);
    mx = need_array(s, k, "max", {mn.size(0)}, at::kDouble);
    out = need_array(s, k, "outside", {mn.size(0)}, at::kLong);
    if (out.numel() && out.max().item<int64_t>() > tokens)
      fail("saved DeadNeurons state: a neuron counts more tokens outside the band than the ", tokens, " seen");
  }
  tokens_ = tokens;
  min_ = mn;
  max_ = mx;
  outside_ = out;
}

at::Tensor DeadNeurons::dead() const {
  if (!outside_.defined()) return at::empty({0}, at::kBool);
  return outside_.eq(0);
}

Tensors DeadNeurons::finalize() const {
  Tensors r{{"lo", scalar(lo_)}, {"hi", scalar(hi_)}, {"tokens", scalar(tokens_)}};
  at::Tensor d = dead().cpu();
  r["dead"] = d;
  r["count"] = d.sum();
  r["neurons"] = scalar(static_cast<int64_t>(d.size(0)));
  if (min_.defined()) {
    r["min"] = min_.cpu();
    r["max"] = max_.cpu();
    r["outside"] = outside_.cpu();
  }
  return r;
}

void DeadNeurons::to(const at::Device& device) {
  check_device(device);
  min_ = on(min_, device);
  max_ = on(max_, device);
  outside_ = on(outside_, device);
}

// ---------------------------------------------------------------------------------------------
// NeuronStats

NeuronStats::NeuronStats(Options o) : o_(o) {
  if (!(o.active_lo < o.active_hi)) fail("NeuronStats: the active band (", o.active_lo, ", ", o.active_hi, ") is empty");
  if (o.bins < 0) fail("NeuronStats: bins must be >= 0, got ", o.bins);
  if (o.bins > 0 && !(o.hist_lo < o.hist_hi))
    fail("NeuronStats: histogram range [", o.hist_lo, ", ", o.hist_hi, ") is empty");
}

void NeuronStats::update(const at::Tensor& act, const at::Tensor& mask) {
  at::Tensor x = widen(real_tokens(act, mask, "NeuronStats"), "NeuronStats");
  const int64_t nb = x.size(0);
  if (nb == 0) return;
  const int64_t n = x.size(1);
  if (mean_.defined() && mean_.device() != x.device()) to(x.device());
  if (mean_.defined() && n != mean_.size(0))
    fail("NeuronStats", label_.empty() ? "" : " on '" + label_ + "'", ": got ", n, " neurons after ", mean_.size(0),
         " in earlier updates");
  at::Tensor xd = x.to(at::kDouble);
  at::Tensor sum = xd.sum(0);
  check_finite(sum, x, "NeuronStats", label_, tokens_);
  at::Tensor mb = sum / static_cast<double>(nb);
  at::Tensor m2b = (xd - mb).square().sum(0);
  at::Tensor absmax = x.abs().amax(0).to(at::kDouble);
  at::Tensor active = at::logical_or(x <= o_.active_lo, x >= o_.active_hi).sum(0);
  at::Tensor hist;
  if (o_.bins > 0) {
    const double width = (o_.hist_hi - o_.hist_lo) / static_cast<double>(o_.bins);
    // column 0 = underflow, 1..bins = the bins, bins + 1 = overflow
    at::Tensor idx = ((xd - o_.hist_lo) / width).floor().clamp(-1, static_cast<double>(o_.bins)).to(at::kLong) + 1;
    idx = idx + at::arange(n, idx.options()) * (o_.bins + 2);
    hist = at::bincount(idx.reshape({-1}), {}, n * (o_.bins + 2)).reshape({n, o_.bins + 2});
  }
  if (!mean_.defined()) {
    mean_ = at::zeros({n}, xd.options());
    m2_ = at::zeros({n}, xd.options());
    absmax_ = absmax;
    active_ = active;
    hist_ = hist;
  } else {
    absmax_ = at::maximum(absmax_, absmax);
    active_.add_(active);
    if (hist.defined()) hist_.add_(hist);
  }
  chan_merge(tokens_, mean_, m2_, nb, mb, m2b);
  tokens_ += nb;
}

void NeuronStats::merge(const Accumulator& other) {
  auto* o = dynamic_cast<const NeuronStats*>(&other);
  if (!o) fail("NeuronStats: cannot merge a ", other.kind());
  same_setting("NeuronStats", "active_lo", o_.active_lo, o->o_.active_lo);
  same_setting("NeuronStats", "active_hi", o_.active_hi, o->o_.active_hi);
  same_setting("NeuronStats", "bins", static_cast<double>(o_.bins), static_cast<double>(o->o_.bins));
  same_setting("NeuronStats", "hist_lo", o_.hist_lo, o->o_.hist_lo);
  same_setting("NeuronStats", "hist_hi", o_.hist_hi, o->o_.hist_hi);
  if (!o->mean_.defined()) return;
  if (!mean_.defined()) {
    mean_ = o->mean_.clone();
    m2_ = o->m2_.clone();
    absmax_ = o->absmax_.clone();
    active_ = o->active_.clone();
    hist_ = o->hist_.defined() ? o->hist_.clone() : at::Tensor();
    tokens_ = o->tokens_;
    return;
  }
  if (o->mean_.size(0) != mean_.size(0)) fail("NeuronStats: cannot merge ", o->mean_.size(0), " neurons into ", mean_.size(0));
  const auto dev = mean_.device();
  chan_merge(tokens_, mean_, m2_, o->tokens_, o->mean_.to(dev), o->m2_.to(dev));
  absmax_ = at::maximum(absmax_, o->absmax_.to(dev));
  active_.add_(o->active_.to(dev));
  if (hist_.defined()) hist_.add_(o->hist_.to(dev));
  tokens_ += o->tokens_;
}

State NeuronStats::state() const {
  State s{kind(),
          {{"active_lo", scalar(o_.active_lo)},
           {"active_hi", scalar(o_.active_hi)},
           {"bins", scalar(o_.bins)},
           {"hist_lo", scalar(o_.hist_lo)},
           {"hist_hi", scalar(o_.hist_hi)},
           {"tokens", scalar(tokens_)}}};
  if (mean_.defined()) {
    s.tensors["mean"] = mean_.cpu();
    s.tensors["m2"] = m2_.cpu();
    s.tensors["absmax"] = absmax_.cpu();
    s.tensors["active"] = active_.cpu();
    if (hist_.defined()) s.tensors["hist"] = hist_.cpu();
  }
  return s;
}

void NeuronStats::restore(const State& s) {
  check_kind(s, kind());
  const std::string k = kind();
  same_setting("NeuronStats", "active_lo", o_.active_lo, need_number(s, k, "active_lo"));
  same_setting("NeuronStats", "active_hi", o_.active_hi, need_number(s, k, "active_hi"));
  same_setting("NeuronStats", "bins", static_cast<double>(o_.bins), need_number(s, k, "bins"));
  same_setting("NeuronStats", "hist_lo", o_.hist_lo, need_number(s, k, "hist_lo"));
  same_setting("NeuronStats", "hist_hi", o_.hist_hi, need_number(s, k, "hist_hi"));
  const int64_t tokens = need_count(s, k, "tokens");
  at::Tensor mean, m2, absmax, active, hist;
  if (has_any(s, {"mean", "m2", "absmax", "active", "hist"})) {  // all checked before anything is replaced
    mean = need_array(s, k, "mean", {-1}, at::kDouble);
    const int64_t n = mean.size(0);
    m2 = need_array(s, k, "m2", {n}, at::kDouble);
    absmax = need_array(s, k, "absmax", {n}, at::kDouble);
    active = need_array(s, k, "active", {n}, at::kLong);
    if (o_.bins > 0) hist = need_array(s, k, "hist", {n, o_.bins + 2}, at::kLong);
  }
  tokens_ = tokens;
  mean_ = mean;
  m2_ = m2;
  absmax_ = absmax;
  active_ = active;
  hist_ = hist;
}

Tensors NeuronStats::finalize() const {
  Tensors r{{"tokens", scalar(tokens_)}};
  if (!mean_.defined()) return r;
  r["mean"] = mean_.cpu();
  at::Tensor var = (m2_ / static_cast<double>(tokens_)).cpu();
  r["variance"] = var;
  r["std"] = var.sqrt();
  r["absmax"] = absmax_.cpu();
  r["active_fraction"] = active_.cpu().to(at::kDouble) / static_cast<double>(tokens_);
  if (hist_.defined()) {
    at::Tensor h = hist_.cpu();
    r["underflow"] = h.select(1, 0).clone();
    r["overflow"] = h.select(1, o_.bins + 1).clone();
    r["histogram"] = h.narrow(1, 1, o_.bins).clone();
    r["bin_edges"] = at::arange(o_.bins + 1, at::kDouble) * ((o_.hist_hi - o_.hist_lo) / static_cast<double>(o_.bins)) +
                     o_.hist_lo;
  }
  return r;
}

void NeuronStats::to(const at::Device& device) {
  check_device(device);
  mean_ = on(mean_, device);
  m2_ = on(m2_, device);
  absmax_ = on(absmax_, device);
  active_ = on(active_, device);
  hist_ = on(hist_, device);
}

}  // namespace qinterp::analysis
