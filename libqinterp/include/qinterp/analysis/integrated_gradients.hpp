// Integrated gradients on hooked activations (Captum's LayerIntegratedGradients, PROTOCOLS.md
// §1.3/§1.5), computed layer-aware:
//   - one forward of the real ids and the baseline ids together gives, at every hooked point,
//     the activation on each, the target's value f at both ends, and each hooked layer's input;
//     the layers below the lowest hooked layer therefore run once per call, not once per step;
//   - each hook's interpolated steps start at its own layer (nothing below it is recomputed, and
//     the part of that layer before the hook point runs on one row, not one per step);
//   - only the last position of the final block and of the LM head is computed (the target is
//     the log-probability of one token at the last position);
//   - no parameter receives a gradient; steps run in chunks (internal_batch_size, or a size
//     derived from memory_budget), so memory does not grow with n_steps.
// Several hooks in one call give exactly what separate calls give.
//
// Layout: ids [T] or [1, T] int64. Attributions [T, width] float32 on the model's device, for a
// hook point [B, T, width]; position p, unit j: (Σ_s w_s ∂f/∂a_pj at a_s) · (input − baseline)_pj
// with a_s = baseline + α_s (input − baseline) at that hook only, everything else from the real
// ids; f = log_softmax(logits[last])[target].
#pragma once
#include <ATen/core/Tensor.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

namespace qinterp::model {
class Model;
}

namespace qinterp::analysis {

// Captum's quadrature: points α in [0, 1] and weights for n steps, bit for bit.
//   gausslegendre     numpy's leggauss nodes mapped to [0, 1], weights halved (n >= 1)
//   riemann_left      α = linspace(0, 1 − 1/n), riemann_right α = linspace(1/n, 1),
//   riemann_middle    α = linspace(1/2n, 1 − 1/2n); weights 1/n (n >= 2)
//   riemann_trapezoid α = linspace(0, 1), weights 1/n with both ends halved (Captum's: they sum
//                     to (n − 1)/n, not 1)
// (linspace: torch's, in float32, as Captum builds them.)
void ig_quadrature(const std::string& method, int64_t n_steps, std::vector<double>* alphas,
                   std::vector<double>* weights);

struct IgOptions {
  int64_t n_steps = 50;
  std::string method = "gausslegendre";
  // Where each hook's path starts:
  //   "token"  the hooked activation on the same ids with every token replaced by baseline_id
  //            (Captum's layer IG with a baseline input of that id: the default, id 0);
  //   "zeros"  a zero activation;
  //   "tensor" baseline_acts[hook], [P, width] or [1, P, width] with P >= the positions attributed
  //            (the first ones are used).
  std::string baseline = "token";
  int64_t baseline_id = 0;
  std::map<std::string, at::Tensor> baseline_acts;
  int64_t internal_batch_size = 0;       // steps per forward/backward; 0 = derive from memory_budget
  int64_t memory_budget = int64_t{1} << 30;  // bytes the saved activations of one chunk may take
  bool completeness = true;              // also run f with only the hooked activation at its baseline
};

struct IgResult {
  at::Tensor attributions;  // [T, width] float32, model device
  // Captum's convergence delta: Σ attributions − (f(ids) − f(baseline ids)). For a layer it does
  // not vanish: the baseline ids also change everything below the hooked layer. NaN unless the
  // baseline is "token".
  double delta = 0;
  // Σ attributions − (f(ids) − f(ids with only this activation at its baseline)): the quadrature
  // error of this path, which vanishes as n_steps grows where the integrand is smooth.
  double completeness_gap = 0;
  double f_input = 0, f_baseline = 0, f_hook_baseline = 0;  // the three values of f above
  double sum = 0;                                           // Σ attributions (float64)
};
using IgResults = std::map<std::string, IgResult>;  // by hook name

class IntegratedGradients {
 public:
  // hooks: hook point names (model/hooks.hpp), each of a block (not hook_logits).
  IntegratedGradients(std::shared_ptr<const model::Model> model, std::vector<std::string> hooks,
                      IgOptions options = {});

  // One target token at the last position of ids.
  IgResults attribute(const at::Tensor& ids, int64_t target) const;
  // Several: target k is attributed on ids followed by targets[0..k) (with the "token" baseline
  // those appended tokens stay real, as in the authors' llm_attr). Throws Error for an empty list.
  std::vector<IgResults> attribute(const at::Tensor& ids, const std::vector<int64_t>& targets) const;

  const std::vector<std::string>& hooks() const { return hooks_; }
  const IgOptions& options() const { return o_; }
  // Steps per chunk for T positions of the given hook (internal_batch_size or the budget's).
  int64_t chunk_steps(const std::string& hook, int64_t positions) const;

 private:
  std::shared_ptr<const model::Model> model_;
  std::vector<std::string> hooks_;
  std::vector<int64_t> layers_;  // per hook
  IgOptions o_;
  std::vector<double> alphas_, weights_;
  IgResults run(const at::Tensor& ids, const at::Tensor& baseline_ids, int64_t target) const;
};

}  // namespace qinterp::analysis
