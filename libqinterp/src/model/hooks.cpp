#include "qinterp/model/hooks.hpp"

#include <algorithm>
#include <cctype>
#include <cstdlib>

#include "qinterp/error.hpp"

namespace qinterp::model {

namespace {
// Indexed by HookPoint.
const char* const kPoints[kNumHookPoints] = {
    "hook_resid_pre", "attn.hook_q",  "attn.hook_k",  "attn.hook_v",   "attn.hook_pattern", "attn.hook_z",
    "attn.hook_out",  "hook_resid_mid", "mlp.hook_pre", "mlp.hook_act", "mlp.hook_post",     "hook_mlp_out",
    "hook_resid_post"};
// TransformerLens's names for points qinterp names otherwise.
const std::pair<const char*, const char*> kAliases[] = {{"hook_attn_out", "attn.hook_out"}};
}  // namespace

const char* hook_point_name(HookPoint p) { return kPoints[static_cast<int>(p)]; }

std::string hook_name(int64_t layer, HookPoint p) { return "blocks." + std::to_string(layer) + "." + hook_point_name(p); }

bool Hooks::parse(const std::string& name, int64_t* layer, std::string* point) {
  if (name == "hook_logits") {
    *layer = -1;
    *point = name;
    return true;
  }
  const std::string pre = "blocks.";
  if (name.compare(0, pre.size(), pre) != 0) return false;
  size_t i = pre.size(), j = i;
  while (j < name.size() && std::isdigit(static_cast<unsigned char>(name[j]))) ++j;
  if (j == i || j - i > 6 || j >= name.size() || name[j] != '.') return false;
  if (name[i] == '0' && j - i > 1) return false;  // "blocks.01...": no model point is named so; it would never fire
  std::string rest = name.substr(j + 1);
  for (const auto& [alias, point] : kAliases)
    if (rest == alias) rest = point;
  for (const char* p : kPoints)
    if (rest == p) {
      *layer = std::atoll(name.substr(i, j - i).c_str());
      *point = rest;
      return true;
    }
  return false;
}

std::vector<std::string> Hooks::all_names(int64_t num_layers) {
  std::vector<std::string> out;
  for (int64_t l = 0; l < num_layers; ++l)
    for (int k = 0; k < kNumHookPoints; ++k) out.push_back(hook_name(l, static_cast<HookPoint>(k)));
  out.push_back("hook_logits");
  return out;
}

int Hooks::add(const std::string& name, HookFn fn) {
  int64_t layer;
  std::string point;
  if (!parse(name, &layer, &point)) {
    std::string valid;
    for (const char* p : kPoints) valid += std::string("blocks.{L}.") + p + ", ";
    fail("unknown hook point '", name, "'; valid: ", valid, "hook_logits");
  }
  if (!fn) fail("hook at '", name, "': empty function");
  const std::string canonical = layer < 0 ? name : "blocks." + std::to_string(layer) + "." + point;
  const int h = next_++;
  fns_.push_back({h, canonical, std::move(fn)});
  ++by_name_[canonical];
  return h;
}

void Hooks::remove(int handle) {
  auto it = std::find_if(fns_.begin(), fns_.end(), [&](const Entry& e) { return e.handle == handle; });
  if (it == fns_.end()) fail("no hook with handle ", handle);
  if (--by_name_[it->name] == 0) by_name_.erase(it->name);
  fns_.erase(it);
}

void Hooks::clear() {
  fns_.clear();
  by_name_.clear();
}

std::vector<std::string> Hooks::names() const {
  std::vector<std::string> out;
  for (const auto& kv : by_name_) out.push_back(kv.first);
  return out;
}

void Hooks::check_layers(int64_t num_layers) const {
  for (const auto& kv : by_name_) {
    int64_t layer;
    std::string point;
    parse(kv.first, &layer, &point);
    if (layer >= num_layers)
      fail("hook point '", kv.first, "' names layer ", layer, " but the model has ", num_layers,
           " layers (0..", num_layers - 1, ")");
  }
}

at::Tensor Hooks::run(const std::string& name, int64_t layer, at::Tensor act, const at::Tensor& mask) const {
  if (by_name_.find(name) == by_name_.end()) return act;
  const HookContext ctx{name, layer, mask};
  // A snapshot of this point's functions: one may add or remove hooks (itself included) while it
  // runs, which must neither skip nor repeat another; a function removed meanwhile does not run.
  std::vector<std::pair<int, HookFn>> pending;
  for (const auto& e : fns_)
    if (e.name == name) pending.emplace_back(e.handle, e.fn);
  for (const auto& [handle, fn] : pending) {
    if (std::none_of(fns_.begin(), fns_.end(), [h = handle](const Entry& e) { return e.handle == h; })) continue;
    std::optional<at::Tensor> r = fn(act, ctx);
    if (r && r->defined()) {
      const bool expands = batch_expansion_ && act.dim() > 0 && act.size(0) == 1 && r->dim() == act.dim() &&
                           r->sizes().slice(1) == act.sizes().slice(1);
      if (r->sizes() != act.sizes() && !expands)
        fail("hook at '", name, "' returned shape ", r->sizes(), " but the activation has shape ", act.sizes());
      act = r->to(act.device(), act.scalar_type());
    }
  }
  return act;
}

}  // namespace qinterp::model
