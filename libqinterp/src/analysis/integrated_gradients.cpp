#include "qinterp/analysis/integrated_gradients.hpp"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "qinterp/error.hpp"
#include "qinterp/model/model.hpp"

namespace qinterp::analysis {

namespace {

// Legendre P_n and its derivative at x (three-term recurrence).
void legendre(int64_t n, double x, double* p, double* dp) {
  double p0 = 1, p1 = x;
  for (int64_t k = 2; k <= n; ++k) {
    const double p2 = ((2 * k - 1) * x * p1 - (k - 1) * p0) / k;
    p0 = p1;
    p1 = p2;
  }
  *p = n == 0 ? 1 : p1;
  *dp = n == 0 ? 0 : n * (x * p1 - p0) / (x * x - 1);
}

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

}  // namespace

void ig_quadrature(const std::string& method, int64_t n, std::vector<double>* alphas, std::vector<double>* weights) {
  if (n < 1) fail("integrated gradients: n_steps must be at least 1, got ", n);
  alphas->assign(n, 0);
  weights->assign(n, 1.0 / n);
  const double dn = static_cast<double>(n);
  // Captum's Riemann points come from torch.linspace in float32; the same call gives the same bits.
  auto linspace = [&](double a, double b) {
    const at::Tensor t = at::linspace(a, b, n, at::kFloat).to(at::kDouble);
    alphas->assign(t.data_ptr<double>(), t.data_ptr<double>() + n);
  };
  const bool riemann = method.rfind("riemann_", 0) == 0;
  if (riemann && n < 2) fail("integrated gradients: ", method, " needs n_steps >= 2 (as Captum), got ", n);
  if (method == "riemann_left") {
    linspace(0, 1 - 1 / dn);
  } else if (method == "riemann_right") {
    linspace(1 / dn, 1);
  } else if (method == "riemann_middle") {
    linspace(1 / (2 * dn), 1 - 1 / (2 * dn));
  } else if (method == "riemann_trapezoid") {  // Captum's weights: 1/n, halved at both ends
    linspace(0, 1);
    weights->front() /= 2;
    weights->back() /= 2;
  } else if (method == "gausslegendre") {
    // Nodes ascending, refined by Newton to machine precision; weights 2 / ((1 − x²) P'(x)²),
    // symmetrised and scaled to sum to 2 as numpy's leggauss does; then mapped to [0, 1].
    std::vector<double> x(n), w(n);
    for (int64_t i = 0; i < n; ++i) {
      double z = -std::cos(M_PI * (i + 0.75) / (dn + 0.5)), p = 0, dp = 0;
      for (int it = 0; it < 100; ++it) {
        legendre(n, z, &p, &dp);
        const double dz = p / dp;
        z -= dz;
        if (std::abs(dz) < 1e-16) break;
      }
      legendre(n, z, &p, &dp);
      x[i] = z;
      w[i] = 2 / ((1 - z * z) * dp * dp);
    }
    double total = 0;
    for (int64_t i = 0; i < n; ++i) {
      const double xs = (x[i] - x[n - 1 - i]) / 2, ws = (w[i] + w[n - 1 - i]) / 2;
      (*alphas)[i] = xs;
      (*weights)[i] = ws;
    }
    for (double v : *weights) total += v;
    for (int64_t i = 0; i < n; ++i) {
      (*weights)[i] *= 2 / total;
      (*alphas)[i] = 0.5 * (1 + (*alphas)[i]);
      (*weights)[i] *= 0.5;
    }
  } else {
    fail("integrated gradients: unknown method '", method,
         "' (gausslegendre, riemann_left, riemann_right, riemann_middle, riemann_trapezoid)");
  }
}

IntegratedGradients::IntegratedGradients(std::shared_ptr<const model::Model> model, std::vector<std::string> hooks,
                                         IgOptions options)
    : model_(std::move(model)), hooks_(std::move(hooks)), o_(std::move(options)) {
  if (!model_) fail("IntegratedGradients: no model");
  if (hooks_.empty()) fail("IntegratedGradients: give at least one hook point");
  const int64_t L = model_->config().num_layers;
  for (const auto& h : hooks_) {
    int64_t layer = -1;
    std::string point;
    if (!model::Hooks::parse(h, &layer, &point) || layer < 0)
      fail("IntegratedGradients: '", h, "' is not a block hook point (e.g. blocks.0.mlp.hook_act)");
    if (layer >= L) fail("IntegratedGradients: hook '", h, "' names layer ", layer, " but the model has ", L, " layers");
    if (std::count(hooks_.begin(), hooks_.end(), h) > 1) fail("IntegratedGradients: hook '", h, "' given twice");
    layers_.push_back(layer);
  }
  if (o_.baseline != "token" && o_.baseline != "zeros" && o_.baseline != "tensor")
    fail("IntegratedGradients: baseline must be 'token', 'zeros' or 'tensor', got '", o_.baseline, "'");
  if (o_.baseline == "token" && (o_.baseline_id < 0 || o_.baseline_id >= model_->config().vocab_size))
    fail("IntegratedGradients: baseline_id ", o_.baseline_id, " is outside the vocabulary [0, ",
         model_->config().vocab_size, ")");
  if (o_.baseline == "tensor")
    for (const auto& h : hooks_)
      if (!o_.baseline_acts.count(h) || !o_.baseline_acts.at(h).defined())
        fail("IntegratedGradients: baseline 'tensor' but no baseline activation for '", h, "'");
  if (o_.internal_batch_size < 0) fail("IntegratedGradients: internal_batch_size must be >= 0 (0 = automatic)");
  if (o_.memory_budget <= 0) fail("IntegratedGradients: memory_budget must be positive");
  ig_quadrature(o_.method, o_.n_steps, &alphas_, &weights_);
}

int64_t IntegratedGradients::chunk_steps(const std::string& hook, int64_t T) const {
  if (o_.internal_batch_size > 0) return std::min(o_.internal_batch_size, o_.n_steps);
  const auto it = std::find(hooks_.begin(), hooks_.end(), hook);
  if (it == hooks_.end()) fail("IntegratedGradients: '", hook, "' is not one of this object's hooks");
  const auto& c = model_->config();
  const int64_t layers = c.num_layers - layers_[it - hooks_.begin()];
  // What autograd keeps per step and block, in elements: the residual stream, norms, q/k/v and
  // attention output (~12 d_model), the MLP's pre/act/up/post (~6 d_mlp), the attention weights.
  const int64_t elem = c10::elementSize(model_->dtype());
  const double per_step =
      static_cast<double>(layers) * T * (12.0 * c.hidden_size + 6.0 * c.intermediate_size + 2.0 * c.num_heads * T) *
          elem +
      4.0 * c.vocab_size;
  const int64_t fit = std::max<int64_t>(1, std::min<int64_t>(o_.n_steps, static_cast<int64_t>(o_.memory_budget / per_step)));
  // As many chunks as the budget needs, of equal size: 50 steps in chunks of 24 would leave a
  // chunk of 2 whose few-row matrix products run well below the others' speed.
  const int64_t chunks = (o_.n_steps + fit - 1) / fit;
  return (o_.n_steps + chunks - 1) / chunks;
}

IgResults IntegratedGradients::run(const at::Tensor& ids, const at::Tensor& base_ids, int64_t target) const {
  const model::Model& m = *model_;
  const auto& cfg = m.config();
  const int64_t N = cfg.num_layers, T = ids.size(1);
  if (target < 0 || target >= cfg.vocab_size)
    fail("IntegratedGradients: target token ", target, " is outside the vocabulary [0, ", cfg.vocab_size, ")");
  c10::InferenceMode not_inference(false);  // autograd must work even when the caller is in inference mode
  const bool token_baseline = o_.baseline == "token";

  // 1. The real ids (row 0) and the baseline ids (row 1) in one batch: f at both ends, every
  //    hooked activation on both, and the input of every hooked layer.
  std::map<std::string, at::Tensor> acts;
  std::map<int64_t, at::Tensor> layer_in;
  double f_in = 0, f_base = kNaN;
  {
    c10::NoGradGuard ng;
    model::Hooks cap;
    for (size_t i = 0; i < hooks_.size(); ++i) {
      const std::string& h = hooks_[i];
      cap.add(h, [&acts, h](const at::Tensor& a, const model::HookContext&) -> std::optional<at::Tensor> {
        acts[h] = a;
        return std::nullopt;
      });
    }
    for (int64_t l : layers_) {
      if (layer_in.count(l)) continue;
      layer_in[l] = at::Tensor();
      const std::string name = model::hook_name(l, model::HookPoint::ResidPre);
      cap.add(name, [&layer_in, l](const at::Tensor& x, const model::HookContext&) -> std::optional<at::Tensor> {
        if (!layer_in[l].defined()) layer_in[l] = x;  // observed before any replacement at this point
        return std::nullopt;
      });
    }
    const at::Tensor both = token_baseline ? at::cat({ids, base_ids}, 0) : ids;
    const model::Pass p = m.begin(both, {}, &cap);
    // Every position of every block (a hook in the final block needs them), so that f does not
    // depend on which hooks this call has.
    at::Tensor x = m.embed(p);
    for (int64_t l = 0; l < N; ++l) x = m.run_layer(l, x, p);
    const at::Tensor f = at::log_softmax(m.finish(x.narrow(1, T - 1, 1), p).select(1, 0), -1).select(1, target).to(at::kCPU, at::kDouble);
    f_in = f[0].item<double>();
    if (token_baseline) f_base = f[1].item<double>();
  }

  IgResults out;
  for (size_t hi = 0; hi < hooks_.size(); ++hi) {
    const std::string& name = hooks_[hi];
    const int64_t L = layers_[hi];
    const at::Tensor in = acts.at(name).narrow(0, 0, 1);  // [1, T, W]
    at::Tensor base;
    if (token_baseline) {
      base = acts.at(name).narrow(0, 1, 1);
    } else if (o_.baseline == "zeros") {
      base = at::zeros_like(in);
    } else {
      at::Tensor b = o_.baseline_acts.at(name);
      if (b.dim() == 3 && b.size(0) == 1) b = b.squeeze(0);
      if (b.dim() != 2 || b.size(0) < T || b.size(1) != in.size(2))
        fail("IntegratedGradients: the baseline activation for '", name, "' has shape ", b.sizes(), "; it needs [",
             T, " or more, ", in.size(2), "]");
      base = b.narrow(0, 0, T).unsqueeze(0).to(in.device(), in.scalar_type());
    }
    const at::Tensor diff = in - base;
    const at::Tensor x_in = layer_in.at(L).narrow(0, 0, 1);  // [1, T, D]
    const bool last_only = L == N - 1;

    // f from layer L on, with the hooked activation replaced by `rows` ([S, T, W]); the part of
    // layer L before the hook runs on one row and broadcasts.
    auto f_from = [&](const at::Tensor& rows) {
      model::Hooks rep;
      rep.set_batch_expansion(true);
      rep.add(name, [&rows, T](const at::Tensor& a, const model::HookContext&) -> std::optional<at::Tensor> {
        return a.size(1) == T ? rows : rows.narrow(1, T - a.size(1), a.size(1));
      });
      const model::Pass p = m.begin(ids, {}, &rep);
      at::Tensor x = x_in;
      for (int64_t l = L; l < N; ++l) x = m.run_layer(l, x, p, {}, l == N - 1);
      return at::log_softmax(m.finish(x, p).select(1, 0).to(at::kFloat), -1).select(1, target);
    };

    const int64_t S = chunk_steps(name, T);
    // Only the positions the target depends on get a gradient: all of them, or the last one
    // when the hook sits after the attention of the final block.
    const int64_t p0 = last_only && name.find("hook_resid_pre") == std::string::npos ? T - 1 : 0;
    const at::Tensor diff_p = diff.narrow(1, p0, T - p0), base_p = base.narrow(1, p0, T - p0);
    at::Tensor total = at::zeros({T - p0, in.size(2)}, in.options().dtype(at::kDouble));
    for (int64_t s0 = 0; s0 < o_.n_steps; s0 += S) {
      const int64_t n = std::min(S, o_.n_steps - s0);
      std::vector<at::Tensor> scaled;
      for (int64_t s = s0; s < s0 + n; ++s) scaled.push_back(base_p + diff_p * alphas_[s]);
      at::Tensor leaf = at::cat(scaled, 0).detach().requires_grad_(true);  // [n, T - p0, W]
      at::Tensor rows = leaf;
      if (p0 > 0) rows = at::cat({base.narrow(1, 0, p0).expand({n, p0, base.size(2)}), leaf}, 1);
      {
        c10::AutoGradMode grad(true);
        f_from(rows).sum().backward({}, false, false, at::TensorList(leaf));
      }
      if (!leaf.grad().defined()) fail("IntegratedGradients: hook '", name, "' did not fire in the forward pass");
      const at::Tensor w = at::tensor(std::vector<double>(weights_.begin() + s0, weights_.begin() + s0 + n),
                                      at::TensorOptions().dtype(at::kDouble))
                               .to(leaf.device())
                               .view({n, 1, 1});
      total.add_((leaf.grad().to(at::kDouble) * w).sum(0));
    }
    IgResult r;
    at::Tensor attr = at::zeros({T, in.size(2)}, in.options().dtype(at::kFloat));
    attr.narrow(0, p0, T - p0).copy_(total * diff_p.squeeze(0).to(at::kDouble));
    r.attributions = attr;
    r.sum = attr.sum(at::kDouble).item<double>();
    r.f_input = f_in;
    r.f_baseline = f_base;
    r.delta = token_baseline ? r.sum - (f_in - f_base) : kNaN;
    r.f_hook_baseline = kNaN;
    r.completeness_gap = kNaN;
    if (o_.completeness) {
      c10::NoGradGuard ng;
      r.f_hook_baseline = f_from(base).to(at::kCPU, at::kDouble)[0].item<double>();
      r.completeness_gap = r.sum - (f_in - r.f_hook_baseline);
    }
    out.emplace(name, std::move(r));
  }
  return out;
}

namespace {
at::Tensor as_row(const at::Tensor& ids, const at::Device& dev) {
  if (!ids.defined() || ids.numel() == 0) fail("IntegratedGradients: ids are empty");
  if (ids.is_floating_point() || ids.is_complex()) fail("IntegratedGradients: ids must be integer token ids");
  if (ids.dim() == 1) return ids.to(dev, at::kLong).unsqueeze(0);
  if (ids.dim() == 2 && ids.size(0) == 1) return ids.to(dev, at::kLong);
  fail("IntegratedGradients: ids must be [T] or [1, T] (one example), got shape ", ids.sizes());
}
}  // namespace

IgResults IntegratedGradients::attribute(const at::Tensor& ids, int64_t target) const {
  return attribute(ids, std::vector<int64_t>{target}).at(0);
}

std::vector<IgResults> IntegratedGradients::attribute(const at::Tensor& ids_in, const std::vector<int64_t>& targets) const {
  if (targets.empty())
    fail("IntegratedGradients: the target is empty (an answer that decodes to no tokens has nothing to attribute)");
  const at::Tensor ids = as_row(ids_in, model_->device());
  const at::Tensor base = at::full_like(ids, o_.baseline_id);
  std::vector<IgResults> out;
  for (size_t k = 0; k < targets.size(); ++k) {
    at::Tensor prev = at::tensor(std::vector<int64_t>(targets.begin(), targets.begin() + k), at::kLong)
                          .to(ids.device())
                          .unsqueeze(0);
    out.push_back(run(at::cat({ids, prev}, 1), at::cat({base, prev}, 1), targets[k]));
  }
  return out;
}

}  // namespace qinterp::analysis
