#include "qinterp/analysis/calibration.hpp"

#include <c10/core/GradMode.h>

#include <cmath>
#include <limits>

#include "common.hpp"
#include "qinterp/model/model.hpp"

namespace qinterp::analysis {

using namespace detail;

// ---------------------------------------------------------------------------------------------
// Calibration

Calibration::Calibration(int64_t bins) : bins_(bins) {
  if (bins < 1) fail("Calibration: bins must be >= 1, got ", bins);
}

void Calibration::update(const at::Tensor& confidence, const at::Tensor& correct) {
  if (!confidence.defined() || !correct.defined() || confidence.dim() != 1 || correct.dim() != 1 ||
      confidence.size(0) != correct.size(0))
    fail("Calibration: confidence and correct must be 1-D of the same length, got ",
         confidence.defined() ? confidence.sizes() : at::IntArrayRef{}, " and ",
         correct.defined() ? correct.sizes() : at::IntArrayRef{});
  if (!at::isFloatingType(confidence.scalar_type()))
    fail("Calibration: confidence must be floating point, got ", confidence.scalar_type());
  at::Tensor c = confidence.to(at::kCPU, at::kDouble).contiguous();
  if (c.numel() == 0) return;
  at::Tensor bad = (at::isfinite(c).logical_not() | c.lt(0) | c.gt(1)).nonzero();
  if (bad.size(0))
    fail("Calibration", label_.empty() ? "" : " on '" + label_ + "'", ": confidence ", c[bad[0][0]].item<double>(),
         " of example ", examples() + bad[0][0].item<int64_t>(), " is not a probability in [0, 1]");
  at::Tensor k = correct.to(at::kCPU);
  if (k.scalar_type() != at::kBool) {  // 0/1 numbers are accepted as well; anything else is a mistake
    const at::Tensor odd = (k.ne(0) & k.ne(1)).nonzero();
    if (odd.size(0))
      fail("Calibration", label_.empty() ? "" : " on '" + label_ + "'", ": correct must be bool or 0/1, got ",
           k[odd[0][0]].item<double>(), " for example ", examples() + odd[0][0].item<int64_t>());
    k = k.ne(0);
  } else {
    k = k.clone();
  }
  conf_.push_back(c.clone());
  correct_.push_back(k);
}

void Calibration::update_logits(const at::Tensor& logits, const at::Tensor& gold) {
  if (!logits.defined() || logits.dim() != 2 || !gold.defined() || gold.dim() != 1 || gold.size(0) != logits.size(0))
    fail("Calibration: update_logits takes logits [n, vocab] and gold ids [n], got ",
         logits.defined() ? logits.sizes() : at::IntArrayRef{}, " and ", gold.defined() ? gold.sizes() : at::IntArrayRef{});
  if (gold.is_floating_point() || gold.is_complex() || gold.scalar_type() == at::kBool)
    fail("Calibration: update_logits takes integer gold ids, got ", gold.scalar_type());
  if (gold.numel()) {
    const at::Tensor bad = at::logical_or(gold.lt(0), gold.ge(logits.size(1))).nonzero();
    if (bad.size(0)) {
      const int64_t i = bad[0][0].item<int64_t>();
      fail("Calibration: gold id ", gold[i].item<int64_t>(), " (example ", i, " of this update) is outside the vocabulary [0, ",
           logits.size(1), ")");
    }
  }
  at::Tensor p = logits.to(logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat).softmax(-1);
  auto [conf, arg] = p.max(-1);
  update(conf, arg.eq(gold.to(arg.device()).to(at::kLong)));
}

int64_t Calibration::examples() const {
  int64_t n = 0;
  for (const auto& c : conf_) n += c.size(0);
  return n;
}

void Calibration::merge(const Accumulator& other) {
  auto* o = dynamic_cast<const Calibration*>(&other);
  if (!o) fail("Calibration: cannot merge a ", other.kind());
  same_setting("Calibration", "bins", static_cast<double>(bins_), static_cast<double>(o->bins_));
  for (size_t i = 0; i < o->conf_.size(); ++i) {
    conf_.push_back(o->conf_[i].clone());
    correct_.push_back(o->correct_[i].clone());
  }
}

State Calibration::state() const {
  State s{kind(), {{"bins", scalar(bins_)}}};
  s.tensors["confidence"] = conf_.empty() ? at::empty({0}, at::kDouble) : at::cat(conf_);
  s.tensors["correct"] = correct_.empty() ? at::empty({0}, at::kBool) : at::cat(correct_);
  return s;
}

void Calibration::restore(const State& s) {
  check_kind(s, kind());
  same_setting("Calibration", "bins", static_cast<double>(bins_), need_number(s, kind(), "bins"));
  at::Tensor c = need_array(s, kind(), "confidence", {-1}, at::kDouble);
  at::Tensor k = need_array(s, kind(), "correct", {c.size(0)}, at::kBool);
  if (c.numel() && !(c.ge(0.0).logical_and(c.le(1.0))).all().item<bool>())
    fail("saved Calibration state: a confidence lies outside [0, 1]");
  conf_ = {c};
  correct_ = {k};
}

void Calibration::to(const at::Device&) {}  // kept on the host: it is a few bytes per example

Tensors Calibration::finalize() const {
  const int64_t n = examples();
  const double nan = std::numeric_limits<double>::quiet_NaN();
  Tensors r{{"examples", scalar(n)}, {"bins", scalar(bins_)}};
  at::Tensor conf = n ? at::cat(conf_) : at::empty({0}, at::kDouble);
  at::Tensor ok = n ? at::cat(correct_).to(at::kDouble) : at::empty({0}, at::kDouble);
  r["accuracy"] = scalar(n ? ok.mean().item<double>() : nan);
  r["confidence"] = scalar(n ? conf.mean().item<double>() : nan);

  // ECE: bin b = (b/bins, (b+1)/bins], confidence 0 in the first bin.
  at::Tensor edges = at::arange(bins_ + 1, at::kDouble) / static_cast<double>(bins_);
  at::Tensor idx = (at::bucketize(conf, edges, false, /*right=*/false) - 1).clamp_(0, bins_ - 1);
  at::Tensor cnt = at::bincount(idx, {}, bins_);
  at::Tensor acc_sum = at::bincount(idx, ok, bins_), conf_sum = at::bincount(idx, conf, bins_);
  at::Tensor cntd = cnt.to(at::kDouble);
  at::Tensor acc_b = at::where(cnt.gt(0), acc_sum / cntd, at::full_like(cntd, nan));
  at::Tensor conf_b = at::where(cnt.gt(0), conf_sum / cntd, at::full_like(cntd, nan));
  double ece = 0;
  for (int64_t b = 0; b < bins_; ++b)
    if (cnt[b].item<int64_t>() > 0)
      ece += cntd[b].item<double>() / static_cast<double>(n) * std::abs(acc_b[b].item<double>() - conf_b[b].item<double>());
  r["ece"] = scalar(n ? ece : nan);
  r["ece_lo"] = edges.narrow(0, 0, bins_).clone();
  r["ece_hi"] = edges.narrow(0, 1, bins_).clone();
  r["ece_count"] = cnt;
  r["ece_accuracy"] = acc_b;
  r["ece_confidence"] = conf_b;

  // ACE: sort by (confidence, correct), equal-count bins as numpy.array_split.
  at::Tensor order = std::get<1>(ok.sort(/*stable=*/true, 0, false));
  at::Tensor c1 = conf.index_select(0, order), o1 = ok.index_select(0, order);
  at::Tensor order2 = std::get<1>(c1.sort(/*stable=*/true, 0, false));
  at::Tensor cs = c1.index_select(0, order2), os = o1.index_select(0, order2);
  const int64_t base = n / bins_, extra = n % bins_;
  at::Tensor a_lo = at::full({bins_}, nan, at::kDouble), a_hi = a_lo.clone(), a_acc = a_lo.clone(), a_conf = a_lo.clone();
  at::Tensor a_cnt = at::zeros({bins_}, at::kLong);
  double ace = 0;
  int64_t used = 0, start = 0;
  for (int64_t b = 0; b < bins_; ++b) {
    const int64_t len = base + (b < extra ? 1 : 0);
    a_cnt[b] = len;
    if (len) {
      at::Tensor cb = cs.narrow(0, start, len), ob = os.narrow(0, start, len);
      const double acc = ob.mean().item<double>(), cf = cb.mean().item<double>();
      a_acc[b] = acc;
      a_conf[b] = cf;
      a_lo[b] = cb[0].item<double>();
      a_hi[b] = cb[len - 1].item<double>();
      ace += std::abs(acc - cf);
      ++used;
    }
    start += len;
  }
  r["ace"] = scalar(used ? ace / static_cast<double>(used) : nan);
  r["ace_lo"] = a_lo;
  r["ace_hi"] = a_hi;
  r["ace_count"] = a_cnt;
  r["ace_accuracy"] = a_acc;
  r["ace_confidence"] = a_conf;
  return r;
}

}  // namespace qinterp::analysis
