// Hook points: named places in the forward pass where an analysis observes, or replaces, an
// activation. Names follow TransformerLens where they overlap (docs/models.md has the table):
//   blocks.{L}.hook_resid_pre   [B, T, d_model]        input of block L
//   blocks.{L}.attn.hook_q      [B, T, heads, d_head]  q_proj output before rotary embedding
//   blocks.{L}.attn.hook_k      [B, T, kv_heads, d_head]  k_proj output before rotary (new positions)
//   blocks.{L}.attn.hook_v      [B, T, kv_heads, d_head]  v_proj output (new positions)
//   blocks.{L}.attn.hook_pattern [B, heads, T, S]      attention probabilities over the S keys;
//                                                     computed explicitly only when hooked
//   blocks.{L}.attn.hook_z      [B, T, heads, d_head]  attention output per head, before o_proj
//   blocks.{L}.attn.hook_out    [B, T, d_model]        attention output (after o_proj); also
//                                                     reachable as TransformerLens's blocks.{L}.hook_attn_out
//   blocks.{L}.hook_resid_mid   [B, T, d_model]        after the attention residual add (not in parallel blocks)
//   blocks.{L}.mlp.hook_pre     [B, T, d_mlp]          gate / fc1 output before the activation
//   blocks.{L}.mlp.hook_act     [B, T, d_mlp]          activation output: the paper's "neurons"
//   blocks.{L}.mlp.hook_post    [B, T, d_mlp]          input of down_proj (act * up when gated)
//   blocks.{L}.hook_mlp_out     [B, T, d_model]        MLP output (after down_proj / fc2)
//   blocks.{L}.hook_resid_post  [B, T, d_model]        output of block L
//   hook_logits                 [B, T, vocab]
// Every hook also receives the token mask [B, T] (bool, true = real token, false = padding),
// so an analysis can skip padding.
#pragma once
#include <ATen/core/Tensor.h>

#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace qinterp::model {

// The hook points inside block L, in forward order: the table of names is hook_point_name().
enum class HookPoint : int {
  ResidPre, AttnQ, AttnK, AttnV, AttnPattern, AttnZ, AttnOut, ResidMid, MlpPre, MlpAct, MlpPost, MlpOut, ResidPost
};
constexpr int kNumHookPoints = 13;
const char* hook_point_name(HookPoint p);            // "hook_resid_pre", "attn.hook_out", ...
std::string hook_name(int64_t layer, HookPoint p);   // "blocks.{layer}.{point}"

struct HookContext {
  const std::string& name;  // the hook point's full name
  int64_t layer;            // block index, -1 for hook_logits
  const at::Tensor& mask;   // [B, T] bool
};

// Return std::nullopt to observe only, or a tensor of the same shape to replace the activation.
using HookFn = std::function<std::optional<at::Tensor>(const at::Tensor& act, const HookContext& ctx)>;

class Hooks {
 public:
  // Registers fn at a hook point; returns a handle for remove(). Throws Error for a name that is
  // not a hook point (the message lists the valid forms). An alias (blocks.{L}.hook_attn_out) is
  // registered under its point's name (blocks.{L}.attn.hook_out).
  int add(const std::string& name, HookFn fn);
  void remove(int handle);
  void clear();
  bool empty() const { return fns_.empty(); }
  bool has(const std::string& name) const { return by_name_.count(name) != 0; }
  std::vector<std::string> names() const;  // hook points with at least one function

  // Throws Error if a registered name refers to a layer the model does not have.
  void check_layers(int64_t num_layers) const;

  // Off by default: a replacement must have the activation's shape. On: a replacement for a
  // one-row activation [1, ...] may hold several rows [S, ...] — variants of one sequence — and
  // the rest of the pass runs on all of them (integrated gradients' steps use this).
  void set_batch_expansion(bool on) { batch_expansion_ = on; }

  // Runs the functions registered at `name` in registration order, each seeing the previous
  // one's replacement. Cheap when nothing is registered there.
  at::Tensor run(const std::string& name, int64_t layer, at::Tensor act, const at::Tensor& mask) const;

  // All hook point names of a model with this many layers, in forward order.
  static std::vector<std::string> all_names(int64_t num_layers);
  // Splits a hook name into layer (-1 for hook_logits) and point, resolving aliases; false if it
  // names no hook point.
  static bool parse(const std::string& name, int64_t* layer, std::string* point);

 private:
  struct Entry {
    int handle;
    std::string name;
    HookFn fn;
  };
  std::vector<Entry> fns_;
  std::map<std::string, int> by_name_;  // name -> number registered
  int next_ = 1;
  bool batch_expansion_ = false;
};

}  // namespace qinterp::model
