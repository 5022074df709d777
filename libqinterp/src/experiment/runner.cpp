#include "qinterp/experiment/runner.hpp"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <sstream>

#include "qinterp/io/paths.hpp"
#include "qinterp/analysis/calibration.hpp"
#include "qinterp/analysis/correlation.hpp"
#include "qinterp/analysis/drift.hpp"
#include "qinterp/analysis/integrated_gradients.hpp"
#include "qinterp/analysis/neurons.hpp"
#include "qinterp/analysis/salient.hpp"
#include "qinterp/error.hpp"
#include "qinterp/experiment/task.hpp"
#include "qinterp/io/result_store.hpp"
#include "qinterp/model/model.hpp"
#include "qinterp/model/quantize.hpp"
#include "qinterp/quant/spec.hpp"
#include "qinterp/text/batch.hpp"
#include "qinterp/text/tokenizer.hpp"
#include "qinterp/version.hpp"

namespace qinterp::experiment {

namespace paths = io::paths;
using analysis::State;
using analysis::Tensors;

std::vector<int64_t> default_layers(int64_t n) {
  const int64_t mid = n > 15 ? 14 : n / 2;
  std::vector<int64_t> v{0};
  for (int64_t l : {mid, n - 1})
    if (std::find(v.begin(), v.end(), l) == v.end()) v.push_back(l);
  return v;
}

namespace {

const std::vector<std::string> kAnalyses = {"predictions", "calibration", "dead", "stats", "correlation", "drift", "salient"};

std::set<std::string> analyses_of(const RunOptions& o) {
  std::set<std::string> a;
  for (const auto& x : o.analyses) {
    if (x == "all") {
      a.insert(kAnalyses.begin(), kAnalyses.end());
    } else if (std::find(kAnalyses.begin(), kAnalyses.end(), x) != kAnalyses.end()) {
      a.insert(x);
    } else {
      std::string names = "all";
      for (const auto& n : kAnalyses) names += ", " + n;
      fail("unknown analysis '", x, "' (", names, ")");
    }
  }
  if (a.count("calibration")) a.insert("predictions");
  if (a.count("predictions")) a.insert("calibration");
  return a;
}

std::string join_list(const std::vector<std::string>& v, const char* sep = ",") {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : sep) + x;
  return s;
}

// A stable 63-bit hash (FNV-1a) of a settings string: stored in checkpoints so that a resume with
// other settings is refused instead of mixing two runs.
int64_t fingerprint(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return static_cast<int64_t>(h >> 1);
}

// One precision of the model, and its accumulators for the current task.
struct Prec {
  std::string name;  // the spec as given: the group name
  quant::QuantSpec spec;
  std::shared_ptr<model::Model> model;
  bool quantized = false;
  std::vector<analysis::DeadNeurons> dead;
  std::vector<analysis::NeuronStats> stats;
  std::vector<analysis::Correlation> corr;
  std::vector<analysis::Drift> drift;
  analysis::Calibration calib;
  std::vector<int64_t> pred, gold;
  std::vector<double> conf;
  std::vector<uint8_t> correct;
  int64_t empty_answers = 0;
};

struct Ctx {
  const RunOptions& o;
  std::set<std::string> an;
  std::shared_ptr<text::Tokenizer> tok;
  std::string chat;  // template text ("" = none)
  std::vector<int64_t> layers;
  std::vector<std::string> hooks;
  std::string model_name;
  int64_t batch = 32;
  bool paper = false;
  int ref = -1;  // index of the reference (unquantized) precision for drift
  std::vector<Prec> precs;
  const ProgressFn& progress;
  const Parallel& par;
  io::ResultStore* store = nullptr;       // rank 0's results
  io::ResultStore* ckpt = nullptr;        // this rank's checkpoints
  RunSummary summary;
  std::set<std::pair<std::string, std::string>> finished;  // (group, flag) of stages found done before the run wrote
};

// ---- checkpoints: every accumulator of a stage flattened into one State, saved in one write.

void put_state(Tensors& out, const std::string& prefix, const State& s) {
  for (const auto& [k, v] : s.tensors) out[prefix + "|" + k] = v;
}

State get_state(const Tensors& in, const std::string& prefix, const std::string& kind) {
  State s{kind, {}};
  const std::string p = prefix + "|";
  for (auto it = in.lower_bound(p); it != in.end() && it->first.compare(0, p.size(), p) == 0; ++it)
    s.tensors[it->first.substr(p.size())] = it->second;
  return s;
}

template <class T>
at::Tensor vec_tensor(const std::vector<T>& v, at::ScalarType st) {
  return at::tensor(std::vector<T>(v.begin(), v.end()), at::TensorOptions().dtype(st)).clone();
}

template <class T>
std::vector<T> tensor_vec(const Tensors& t, const std::string& name) {
  auto it = t.find(name);
  if (it == t.end()) fail("checkpoint lacks '", name, "'; the file is damaged (start again with --restart)");
  const at::Tensor c = it->second.to(at::kCPU).contiguous();
  std::vector<T> v(static_cast<size_t>(c.numel()));
  if constexpr (std::is_same_v<T, double>) {
    const at::Tensor d = c.to(at::kDouble);
    std::copy(d.data_ptr<double>(), d.data_ptr<double>() + d.numel(), v.begin());
  } else {
    const at::Tensor d = c.to(at::kLong);
    for (int64_t i = 0; i < d.numel(); ++i) v[static_cast<size_t>(i)] = static_cast<T>(d.data_ptr<int64_t>()[i]);
  }
  return v;
}

// One count from a checkpoint, inside [lo, hi]; anything else is a damaged file, never a start.
int64_t checkpoint_count(const Tensors& t, const std::string& name, int64_t lo, int64_t hi) {
  const std::vector<int64_t> v = tensor_vec<int64_t>(t, name);
  if (v.size() != 1 || v[0] < lo || v[0] > hi)
    fail("checkpoint's '", name, "' is not one count in [", lo, ", ", hi, "]; the file is damaged (start again with --restart)");
  return v[0];
}

std::string group(const Ctx& c, const std::string& prec, const std::string& task) {
  return io::ResultStore::join({c.model_name, prec, task});
}

// This rank's examples: whole batches, so that each shard holds exactly the batches a single
// process would see (the activations of a batch depend on its padding width, and Correlation's
// merge equals one pass when the update batches are the same).
std::pair<int64_t, int64_t> shard(const Ctx& c, int64_t n) {
  const int64_t r = c.par.rank, w = std::max(1, c.par.world), nb = (n + c.batch - 1) / c.batch;
  return {std::min(n, r * nb / w * c.batch), std::min(n, (r + 1) * nb / w * c.batch)};
}

// ---- prompts and batches

std::vector<int64_t> encode_prompt(const Ctx& c, const std::string& text, bool special) {
  // A chat-templated prompt carries its own special tokens (transformers encodes it without adding any).
  if (!c.chat.empty()) return c.tok->encode(apply_chat_template(c.chat, text), false, false);
  return c.tok->encode(text, special ? c.tok->add_bos_default() : false, special ? c.tok->add_eos_default() : false);
}

struct Batch {
  at::Tensor ids, mask;
};

Batch make_batch(const Ctx& c, const std::vector<std::vector<int64_t>>& rows, int64_t ctx_len) {
  int64_t width = 0;
  for (const auto& r : rows) width = std::max<int64_t>(width, std::min<int64_t>(static_cast<int64_t>(r.size()), ctx_len));
  if (width == 0) fail("a prompt encodes to no tokens");
  const int64_t pad = c.tok->eos_id() >= 0 ? c.tok->eos_id() : 0;  // pad = eos, as the authors
  const int64_t B = static_cast<int64_t>(rows.size());
  Batch b{at::full({B, width}, pad, at::kLong), at::zeros({B, width}, at::kBool)};
  for (int64_t i = 0; i < B; ++i) {
    const auto& r = rows[static_cast<size_t>(i)];
    const int64_t n = std::min<int64_t>(static_cast<int64_t>(r.size()), ctx_len);  // truncation keeps the first tokens
    if (n == 0) fail("a prompt encodes to no tokens");
    b.ids[i].narrow(0, width - n, n).copy_(at::tensor(std::vector<int64_t>(r.begin(), r.begin() + n), at::kLong));
    b.mask[i].narrow(0, width - n, n).fill_(true);
  }
  return b;
}

// Label words -> the first token of "L" and of " L" (either spelling of the answer), skipping a
// token that is only a space (a tokenizer may split " L" into " " and "L").
std::vector<std::vector<int64_t>> label_tokens(const Ctx& c, const Task& t) {
  std::vector<std::vector<int64_t>> out;
  std::map<int64_t, std::string> owner;
  for (const auto& l : t.labels) {
    std::set<int64_t> ids;
    for (const std::string& s : {l, " " + l}) {
      for (int64_t id : c.tok->tokenize(s))  // the first token that is not only a space
        if (!strip(token_text(*c.tok, id)).empty()) {
          ids.insert(id);
          break;
        }
    }
    if (ids.empty()) fail("task '", t.name, "': label '", l, "' encodes to no tokens");
    for (int64_t id : ids) {
      auto [it, fresh] = owner.emplace(id, l);
      if (!fresh && it->second != l)
        fail("task '", t.name, "': labels '", it->second, "' and '", l, "' begin with the same token (", id,
             "); label scoring cannot tell them apart");
    }
    out.emplace_back(ids.begin(), ids.end());
  }
  return out;
}

// The last position's logits of a batch (every block; the final one only at the last position).
at::Tensor last_logits(const model::Model& m, const Batch& b, const model::Hooks* hooks, int64_t stop_after = -1) {
  const model::Pass p = m.begin(b.ids, b.mask, hooks);
  const int64_t N = m.config().num_layers;
  at::Tensor x = m.embed(p);
  const int64_t last = stop_after >= 0 ? stop_after : N - 1;
  for (int64_t l = 0; l <= last; ++l) {
    const bool hooked_here = hooks && hooks->has(model::hook_name(l, model::HookPoint::MlpAct));
    x = m.run_layer(l, x, p, {}, l == N - 1 && !hooked_here);
  }
  if (stop_after >= 0) return {};
  return m.finish(x.narrow(1, x.size(1) - 1, 1), p).select(1, 0);
}

// ---- the forward stage

std::string forward_settings(const Ctx& c, const Task& t, int64_t n) {
  std::ostringstream os;
  os << "forward|" << c.o.model << "|" << join_list(c.o.precisions) << "|" << t.source << "|" << t.prompt_template << "|"
     << join_list(t.labels) << "|" << n << "|" << c.batch << "|" << c.o.mode << "|" << c.o.scoring << "|" << c.chat << "|";
  for (int64_t l : c.layers) os << l << ",";
  for (const auto& a : c.an) os << a << ",";
  return os.str();
}

Tensors forward_state(const Ctx& c, int64_t done, int64_t fp) {
  Tensors t{{"examples_done", at::scalar_tensor(done, at::kLong)}, {"fingerprint", at::scalar_tensor(fp, at::kLong)}};
  for (size_t pi = 0; pi < c.precs.size(); ++pi) {
    const Prec& p = c.precs[pi];
    const std::string k = std::to_string(pi);
    for (size_t h = 0; h < c.hooks.size(); ++h) {
      const std::string kh = k + "|" + std::to_string(h);
      if (c.an.count("dead")) put_state(t, kh + "|dead", p.dead[h].state());
      if (c.an.count("stats")) put_state(t, kh + "|stats", p.stats[h].state());
      if (c.an.count("correlation")) put_state(t, kh + "|corr", p.corr[h].state());
      if (!p.drift.empty()) put_state(t, kh + "|drift", p.drift[h].state());
    }
    if (c.an.count("predictions")) {
      put_state(t, k + "|calib", p.calib.state());
      t[k + "|pred"] = vec_tensor(p.pred, at::kLong);
      t[k + "|gold"] = vec_tensor(p.gold, at::kLong);
      t[k + "|conf"] = vec_tensor(p.conf, at::kDouble);
      t[k + "|correct"] = vec_tensor(std::vector<int64_t>(p.correct.begin(), p.correct.end()), at::kLong);
      t[k + "|empty"] = at::scalar_tensor(p.empty_answers, at::kLong);
    }
  }
  return t;
}

// Restores (merge = false) or folds in (merge = true: another rank's shard, appended in order).
void load_forward_state(Ctx& c, const Tensors& t, bool merge) {
  for (size_t pi = 0; pi < c.precs.size(); ++pi) {
    Prec& p = c.precs[pi];
    const std::string k = std::to_string(pi);
    for (size_t h = 0; h < c.hooks.size(); ++h) {
      const std::string kh = k + "|" + std::to_string(h);
      auto fold = [&](auto& acc, const std::string& name, const char* kind) {
        const State s = get_state(t, kh + "|" + name, kind);
        if (!merge) {
          acc.restore(s);
        } else {
          auto other = acc;
          other.restore(s);
          acc.merge(other);
        }
      };
      if (c.an.count("dead")) fold(p.dead[h], "dead", "DeadNeurons");
      if (c.an.count("stats")) fold(p.stats[h], "stats", "NeuronStats");
      if (c.an.count("correlation")) fold(p.corr[h], "corr", "Correlation");
      if (!p.drift.empty()) fold(p.drift[h], "drift", "Drift");
    }
    if (c.an.count("predictions")) {
      const State cs = get_state(t, k + "|calib", "Calibration");
      if (!merge) {
        p.calib.restore(cs);
      } else {
        analysis::Calibration other;
        other.restore(cs);
        p.calib.merge(other);
      }
      auto append = [](auto& dst, const auto& src) { dst.insert(dst.end(), src.begin(), src.end()); };
      const auto pred = tensor_vec<int64_t>(t, k + "|pred"), gold = tensor_vec<int64_t>(t, k + "|gold");
      const auto conf = tensor_vec<double>(t, k + "|conf");
      const auto correct = tensor_vec<uint8_t>(t, k + "|correct");
      if (gold.size() != pred.size() || conf.size() != pred.size() || correct.size() != pred.size())
        fail("checkpoint's predictions of precision ", k, " are of different lengths (", pred.size(), ", ", gold.size(),
             ", ", conf.size(), ", ", correct.size(), "); the file is damaged (start again with --restart)");
      const int64_t empty = checkpoint_count(t, k + "|empty", 0, static_cast<int64_t>(pred.size()));
      if (!merge) p.pred.clear(), p.gold.clear(), p.conf.clear(), p.correct.clear(), p.empty_answers = 0;
      append(p.pred, pred);
      append(p.gold, gold);
      append(p.conf, conf);
      append(p.correct, correct);
      p.empty_answers += empty;
    }
  }
}

void reset_accumulators(Ctx& c) {
  for (auto& p : c.precs) {
    p.dead.assign(c.hooks.size(), analysis::DeadNeurons());
    p.stats.assign(c.hooks.size(), analysis::NeuronStats());
    analysis::Correlation::Options co;
    co.top_k = c.o.correlation_top_k;
    p.corr.assign(c.hooks.size(), analysis::Correlation(co));
    p.drift.clear();
    if (c.an.count("drift") && p.quantized && c.ref >= 0) p.drift.assign(c.hooks.size(), analysis::Drift());
    for (size_t h = 0; h < c.hooks.size(); ++h) {
      const std::string label = p.name + " " + c.hooks[h];
      p.dead[h].set_label(label);
      p.stats[h].set_label(label);
      p.corr[h].set_label(label);
      if (!p.drift.empty()) p.drift[h].set_label(label);
    }
    p.calib = analysis::Calibration();
    p.pred.clear(), p.gold.clear(), p.conf.clear(), p.correct.clear();
    p.empty_answers = 0;
  }
}

// What marks a stage finished: the flag (with the settings' fingerprint) on every group, set on
// groups.front() last, and the objects the stage writes.
struct StageMark {
  std::vector<std::string> groups, required;
  std::string flag;
  int64_t fp = 0;
};

// Whether rank 0's file already holds this stage's results (every rank gets rank 0's answer). A
// stage marked finished must also have the flag on every group and every required object, else the
// file was damaged or edited and a resume would leave a hole that only the report would find.
bool stage_done(Ctx& c, const StageMark& m) {
  int64_t done = 0;  // 0 no, 1 yes, 2 other settings, 3 incomplete
  std::string missing;
  auto marked = [&](const std::string& g) {
    const auto a = c.store->attrs(g);
    const auto it = a.find(m.flag);
    if (it == a.end()) return 0;
    const int64_t* v = std::get_if<int64_t>(&it->second);
    return v && *v == m.fp ? 1 : 2;
  };
  if (c.store && !c.o.restart && c.store->exists(m.groups.front())) {
    done = marked(m.groups.front());
    for (size_t i = 0; done == 1 && i < m.groups.size() + m.required.size(); ++i) {
      const std::string& o = i < m.groups.size() ? m.groups[i] : m.required[i - m.groups.size()];
      if (!c.store->exists(o))
        missing = o + " is missing";
      else if (i < m.groups.size() && marked(o) != 1)
        missing = o + " lacks the '" + m.flag + "' mark of " + m.groups.front();
      if (!missing.empty()) done = 3;
    }
  }
  if (c.par.world > 1) done = c.par.broadcast(done);
  if (done == 2)
    fail(c.o.out, ": ", m.groups.front(), " holds results of a run with other settings; use another --out, or --restart to replace them");
  if (done == 3)
    fail(c.o.out, ": ", missing.empty() ? m.groups.front() + " is incomplete" : missing, " although its stage is marked finished ('",
         m.flag, "'); the file is damaged or was edited (use another --out, or --restart to replace it)");
  return done == 1;
}

// A stage already in the file (as run() found it, before writing) is skipped; a checkpoint left by
// a run killed after writing the results, before the clean-up, goes with it.
bool skip_finished_stage(Ctx& c, const StageMark& m, const std::string& ck) {
  if (!c.finished.count({m.groups.front(), m.flag})) return false;
  if (c.ckpt->exists(ck)) c.ckpt->remove(ck);
  ++c.summary.stages_skipped;
  return true;
}

// The stage's checkpoint when it was written with these settings (fingerprint `ck_fp`); else none.
std::optional<State> resumable_checkpoint(Ctx& c, const std::string& ck, int64_t ck_fp) {
  if (c.o.restart || !c.ckpt->exists(ck)) return std::nullopt;
  State s = c.ckpt->load_state(ck);
  if (!s.tensors.count("fingerprint")) return std::nullopt;
  const std::vector<int64_t> f = tensor_vec<int64_t>(s.tensors, "fingerprint");
  if (f.size() != 1) fail("checkpoint '", ck, "' has ", f.size(), " fingerprints; the file is damaged (start again with --restart)");
  if (f[0] != ck_fp) return std::nullopt;
  return s;
}

void write_forward_results(Ctx& c, const Task& t, int64_t fp) {
  for (size_t pi = 0; pi < c.precs.size(); ++pi) {
    Prec& p = c.precs[pi];
    const std::string g = group(c, p.name, t.name);
    if (c.an.count("predictions")) {
      c.store->write_tensors(g + "/predictions", {{"predicted_id", vec_tensor(p.pred, at::kLong)},
                                                  {"gold", vec_tensor(p.gold, at::kLong)},
                                                  {"confidence", vec_tensor(p.conf, at::kDouble)},
                                                  {"correct", vec_tensor(std::vector<int64_t>(p.correct.begin(), p.correct.end()), at::kLong).to(at::kBool)}});
      std::string labels = "[";
      for (size_t i = 0; i < t.labels.size(); ++i) {
        std::string e;
        for (char ch : t.labels[i]) e += (ch == '"' || ch == '\\') ? std::string("\\") + ch : std::string(1, ch);
        labels += (i ? ", \"" : "\"") + e + "\"";
      }
      c.store->set_attrs(g + "/predictions", {{"labels", labels + "]"}, {"empty_answers", p.empty_answers}});
      const Tensors r = p.calib.finalize();
      c.store->write_tensors(g + "/calibration", r);
      io::Attrs a;
      for (const char* k : {"accuracy", "confidence", "ece", "ace"}) a[k] = r.at(k).item<double>();
      a["examples"] = r.at("examples").item<int64_t>();
      c.store->set_attrs(g + "/calibration", a);
    }
    for (size_t h = 0; h < c.hooks.size(); ++h) {
      const std::string gh = g + "/" + c.hooks[h];
      if (c.an.count("dead")) c.store->write_tensors(gh + "/dead", p.dead[h].finalize());
      if (c.an.count("stats")) c.store->write_tensors(gh + "/stats", p.stats[h].finalize());
      if (c.an.count("correlation")) c.store->write_tensors(gh + "/correlation", p.corr[h].finalize());
      if (!p.drift.empty()) {
        c.store->write_tensors(g + "/drift/" + c.hooks[h], p.drift[h].finalize());
        c.store->set_attrs(g + "/drift", {{"reference", c.precs[static_cast<size_t>(c.ref)].name}});
      }
    }
    io::Attrs a{{"model_file", c.o.model},
                {"precision", p.name},
                {"spec", p.spec.str()},
                {"task", t.name},
                {"task_source", t.source},
                {"prompt_template", t.prompt_template},
                {"mode", c.o.mode},
                {"scoring", c.o.scoring},
                {"chat", c.chat.empty() ? std::string("none") : std::string("model template")},
                {"seed", static_cast<int64_t>(c.o.seed)},
                {"batch", c.batch},
                {"examples", static_cast<int64_t>(p.pred.empty() ? 0 : p.pred.size())},
                {"hooks", join_list(c.hooks)},
                {"qinterp_version", std::string(version())}};
    c.store->set_attrs(g, a);
  }
  // The done flag goes last, on the first precision last of all (stage_done reads that one): a run
  // killed while the results above were being written finds the stage not done and redoes it.
  for (size_t pi = c.precs.size(); pi-- > 0;) c.store->set_attrs(group(c, c.precs[pi].name, t.name), {{"forward_done", fp}});
  c.store->flush();
}

std::string ig_settings(const Ctx& c, const Task& t, const Prec& p, int64_t n) {
  std::ostringstream os;
  os << "ig|" << forward_settings(c, t, n) << "|" << p.name << "|" << c.o.ig_steps << "|" << c.o.ig_method << "|"
     << c.o.ig_target;
  return os.str();
}

StageMark forward_mark(const Ctx& c, const Task& t, int64_t n) {
  StageMark m{{}, {}, "forward_done", fingerprint(forward_settings(c, t, n))};
  for (const Prec& p : c.precs) {
    const std::string g = group(c, p.name, t.name);
    m.groups.push_back(g);
    if (c.an.count("predictions")) m.required.insert(m.required.end(), {g + "/predictions", g + "/calibration"});
    const bool drift = c.an.count("drift") && p.quantized && c.ref >= 0;  // as reset_accumulators
    for (const auto& h : c.hooks) {
      for (const char* a : {"dead", "stats", "correlation"})
        if (c.an.count(a)) m.required.push_back(g + "/" + h + "/" + a);
      if (drift) m.required.push_back(g + "/drift/" + h);
    }
  }
  return m;
}

StageMark ig_mark(const Ctx& c, const Task& t, size_t pi, int64_t n) {
  const std::string g = group(c, c.precs[pi].name, t.name);
  StageMark m{{g}, {}, "ig_done", fingerprint(ig_settings(c, t, c.precs[pi], n))};
  for (const auto& h : c.hooks) m.required.push_back(g + "/" + h + "/salient");
  return m;
}

void forward_stage(Ctx& c, const Task& t, int64_t n) {
  const int64_t fp = fingerprint(forward_settings(c, t, n));
  const int64_t ck_fp = fingerprint(forward_settings(c, t, n) + "|world " + std::to_string(c.par.world));
  const std::string ck = io::ResultStore::join({c.model_name, "_checkpoints", t.name, "forward"});
  if (skip_finished_stage(c, forward_mark(c, t, n), ck)) return;
  reset_accumulators(c);
  const auto [lo, hi] = shard(c, n);
  int64_t start = lo;
  if (const auto s = resumable_checkpoint(c, ck, ck_fp)) {
    load_forward_state(c, s->tensors, false);
    start = checkpoint_count(s->tensors, "examples_done", lo, hi);
    for (const Prec& p : c.precs)
      if (c.an.count("predictions") && static_cast<int64_t>(p.pred.size()) != start - lo)
        fail("checkpoint '", ck, "' holds ", p.pred.size(), " predictions of ", p.name, " for ", start - lo,
             " examples done; the file is damaged (start again with --restart)");
  }
  if (c.progress) c.progress({"forward " + t.name, start - lo, hi - lo, "examples", false});
  const bool separate_act_pass = c.paper && t.prompt_template != "{}";  // the authors' raw CSV prompts
  const bool need_acts = c.an.count("dead") || c.an.count("stats") || c.an.count("correlation") || c.an.count("drift");
  const std::vector<std::vector<int64_t>> label_ids =
      c.o.scoring == "labels" ? label_tokens(c, t) : std::vector<std::vector<int64_t>>{};
  const int64_t ctx_len = c.precs.front().model->config().max_seq_len;
  c10::InferenceMode im;
  auto last_save = std::chrono::steady_clock::now();
  for (int64_t b0 = start; b0 < hi; b0 += c.batch) {
    const int64_t b1 = std::min(hi, b0 + c.batch);
    std::vector<std::vector<int64_t>> pred_rows, act_rows;
    for (int64_t i = b0; i < b1; ++i) {
      pred_rows.push_back(encode_prompt(c, t.prompt(static_cast<size_t>(i)), true));
      if (separate_act_pass) act_rows.push_back(c.tok->encode(t.examples[static_cast<size_t>(i)].prompt));
    }
    const Batch pb = make_batch(c, pred_rows, ctx_len);
    const Batch ab = separate_act_pass ? make_batch(c, act_rows, ctx_len) : pb;
    std::vector<at::Tensor> ref_acts(c.hooks.size());
    for (size_t pi = 0; pi < c.precs.size(); ++pi) {
      Prec& p = c.precs[pi];
      const model::Model& m = *p.model;
      model::Hooks hooks;
      if (need_acts)
        for (size_t h = 0; h < c.hooks.size(); ++h)
          hooks.add(c.hooks[h], [&c, &p, &ref_acts, h, pi](const at::Tensor& a, const model::HookContext& hc)
                                    -> std::optional<at::Tensor> {
            if (c.an.count("dead")) p.dead[h].update(a, hc.mask);
            if (c.an.count("stats")) p.stats[h].update(a, hc.mask);
            if (c.an.count("correlation")) p.corr[h].update(a, hc.mask);
            if (static_cast<int>(pi) == c.ref) ref_acts[h] = a;
            if (!p.drift.empty()) p.drift[h].update(ref_acts[h], a, hc.mask);
            return std::nullopt;
          });
      at::Tensor logits;
      if (c.an.count("predictions")) {
        logits = last_logits(m, pb, separate_act_pass ? nullptr : &hooks);
        if (separate_act_pass && need_acts) last_logits(m, ab, &hooks, c.layers.back());
      } else if (need_acts) {
        last_logits(m, ab, &hooks, c.layers.back());
      }
      if (!logits.defined()) continue;
      const at::Tensor probs = at::softmax(logits.to(at::kCPU, at::kFloat), -1);
      for (int64_t r = 0; r < b1 - b0; ++r) {
        const size_t i = static_cast<size_t>(b0 + r);
        const int64_t gi = t.gold_index(i);
        int64_t pred;
        double conf;
        bool ok;
        if (c.o.scoring == "labels") {
          std::vector<double> mass;
          for (const auto& ids : label_ids) {
            double s = 0;
            for (int64_t id : ids) s += probs[r][id].item<double>();
            mass.push_back(s);
          }
          double total = 0;
          for (double v : mass) total += v;
          const size_t best = static_cast<size_t>(std::max_element(mass.begin(), mass.end()) - mass.begin());
          pred = label_ids[best][0];
          conf = total > 0 ? mass[best] / total : 0.0;
          ok = static_cast<int64_t>(best) == gi;
        } else {
          auto mx = probs[r].max(0);
          pred = std::get<1>(mx).item<int64_t>();
          conf = std::get<0>(mx).item<double>();
          const std::string ans = token_text(*c.tok, pred);
          if (strip(ans).empty()) ++p.empty_answers;
          ok = paper_correct(ans, t.examples[i].gold);
        }
        p.pred.push_back(pred);
        p.gold.push_back(gi);
        p.conf.push_back(conf);
        p.correct.push_back(ok ? 1 : 0);
      }
      const int64_t nb = b1 - b0;
      p.calib.update(at::tensor(std::vector<double>(p.conf.end() - nb, p.conf.end()), at::kDouble),
                     at::tensor(std::vector<int64_t>(p.correct.end() - nb, p.correct.end()), at::kLong).to(at::kBool));
    }
    if (c.progress) c.progress({"forward " + t.name, b1 - lo, hi - lo, "examples", false});
    const double since = std::chrono::duration<double>(std::chrono::steady_clock::now() - last_save).count();
    if (b1 < hi && since >= c.o.checkpoint_seconds) {
      c.ckpt->save_state(ck, State{"RunCheckpoint", forward_state(c, b1, ck_fp)});
      last_save = std::chrono::steady_clock::now();
    }
  }
  if (c.progress) c.progress({"forward " + t.name, hi - lo, hi - lo, "examples", true});
  if (c.par.world > 1) {
    const State mine{"RunCheckpoint", forward_state(c, hi, ck_fp)};
    const std::vector<State> all = c.par.gather(mine);
    if (c.par.rank != 0) {
      c.ckpt->remove(ck);
      return;
    }
    reset_accumulators(c);
    for (const State& s : all) load_forward_state(c, s.tensors, true);
  }
  write_forward_results(c, t, fp);
  c.ckpt->remove(ck);
  ++c.summary.stages_run;
}

// ---- the IG stage

void ig_stage(Ctx& c, const Task& t, size_t pi, int64_t n) {
  Prec& p = c.precs[pi];
  const int64_t fp = fingerprint(ig_settings(c, t, p, n));
  const int64_t ck_fp = fingerprint(ig_settings(c, t, p, n) + "|world " + std::to_string(c.par.world));
  const std::string g = group(c, p.name, t.name);
  const std::string ck = io::ResultStore::join({c.model_name, "_checkpoints", t.name, "ig", p.name});
  if (skip_finished_stage(c, ig_mark(c, t, pi, n), ck)) return;
  const std::string target_mode = !c.o.ig_target.empty() ? c.o.ig_target : c.paper ? "retokenized" : "generated";
  const std::string sal_mode = c.paper ? "paper" : "positions";
  std::vector<analysis::SalientNeurons> sal(c.hooks.size(), analysis::SalientNeurons(sal_mode));
  for (size_t h = 0; h < c.hooks.size(); ++h) sal[h].set_label(p.name + " " + c.hooks[h]);
  const auto [lo, hi] = shard(c, n);
  int64_t start = lo;
  auto pack = [&](int64_t done) {
    Tensors ts{{"examples_done", at::scalar_tensor(done, at::kLong)}, {"fingerprint", at::scalar_tensor(ck_fp, at::kLong)}};
    for (size_t h = 0; h < c.hooks.size(); ++h) put_state(ts, std::to_string(h), sal[h].state());
    return ts;
  };
  auto unpack = [&](const Tensors& ts, bool merge) {
    for (size_t h = 0; h < c.hooks.size(); ++h) {
      const State s = get_state(ts, std::to_string(h), "SalientNeurons");
      if (!merge) {
        sal[h].restore(s);
      } else {
        analysis::SalientNeurons other(sal_mode);
        other.restore(s);
        sal[h].merge(other);
      }
    }
  };
  if (const auto s = resumable_checkpoint(c, ck, ck_fp)) {
    unpack(s->tensors, false);
    start = checkpoint_count(s->tensors, "examples_done", lo, hi);
  }
  if (c.progress) c.progress({"ig " + t.name + " " + p.name, start - lo, hi - lo, "examples", false});
  analysis::IgOptions io;
  io.n_steps = c.o.ig_steps;
  io.method = c.o.ig_method;
  analysis::IntegratedGradients ig(p.model, c.hooks, io);
  const int64_t ctx_len = p.model->config().max_seq_len;
  auto last_save = std::chrono::steady_clock::now();
  // The answer token: the greedy token of the prompt as the forward stage encodes it, or, for the
  // authors' target, of the prompt encoded without special tokens (their script 1).
  const bool no_special = target_mode == "retokenized" && c.paper && c.chat.empty();
  for (int64_t i0 = start; i0 < hi; i0 += c.batch) {
    const int64_t i1 = std::min(hi, i0 + c.batch);
    std::vector<int64_t> answers;
    {
      std::vector<std::vector<int64_t>> rows;
      for (int64_t i = i0; i < i1; ++i)
        rows.push_back(no_special ? c.tok->encode(t.prompt(static_cast<size_t>(i)), false, false)
                                  : encode_prompt(c, t.prompt(static_cast<size_t>(i)), true));
      c10::InferenceMode im;
      const at::Tensor l = last_logits(*p.model, make_batch(c, rows, ctx_len), nullptr).argmax(-1).to(at::kCPU);
      for (int64_t r = 0; r < i1 - i0; ++r) answers.push_back(l[r].item<int64_t>());
    }
    for (int64_t i = i0; i < i1; ++i) {
      const std::vector<int64_t> targets = analysis::answer_targets(*c.tok, answers[static_cast<size_t>(i - i0)], target_mode);
      if (targets.empty()) {
        for (auto& s : sal) s.skip();
      } else {
        std::vector<int64_t> ids = encode_prompt(c, t.prompt(static_cast<size_t>(i)), true);
        if (static_cast<int64_t>(ids.size() + targets.size()) > ctx_len) ids.resize(ctx_len - targets.size());
        const auto res = ig.attribute(at::tensor(ids, at::kLong), targets);
        std::vector<std::string> in_keys, tgt_keys;
        for (int64_t id : ids) in_keys.push_back(std::to_string(id));  // one key per distinct token, as its string
        for (int64_t id : targets) tgt_keys.push_back(token_text(*c.tok, id));
        for (size_t h = 0; h < c.hooks.size(); ++h) {
          std::vector<at::Tensor> attrs;
          for (const auto& r : res) attrs.push_back(r.at(c.hooks[h]).attributions);
          sal[h].update(attrs, in_keys, tgt_keys);
        }
      }
      if (c.progress) c.progress({"ig " + t.name + " " + p.name, i + 1 - lo, hi - lo, "examples", false});
      const double since = std::chrono::duration<double>(std::chrono::steady_clock::now() - last_save).count();
      if (i + 1 < hi && since >= c.o.checkpoint_seconds) {
        c.ckpt->save_state(ck, State{"RunCheckpoint", pack(i + 1)});
        last_save = std::chrono::steady_clock::now();
      }
    }
  }
  if (c.progress) c.progress({"ig " + t.name + " " + p.name, hi - lo, hi - lo, "examples", true});
  if (c.par.world > 1) {
    const std::vector<State> all = c.par.gather(State{"RunCheckpoint", pack(hi)});
    if (c.par.rank != 0) {
      c.ckpt->remove(ck);
      return;
    }
    for (auto& s : sal) s = analysis::SalientNeurons(sal_mode);
    for (const State& s : all) unpack(s.tensors, true);
  }
  for (size_t h = 0; h < c.hooks.size(); ++h) {
    c.store->write_tensors(g + "/" + c.hooks[h] + "/salient", sal[h].finalize());
    c.store->set_attrs(g + "/" + c.hooks[h] + "/salient",
                       {{"mode", sal_mode}, {"target", target_mode}, {"steps", c.o.ig_steps}, {"method", c.o.ig_method}});
  }
  c.store->set_attrs(g, {{"ig_done", fp}, {"ig_examples", n}});
  c.ckpt->remove(ck);
  ++c.summary.stages_run;
}

// Every attribute and dataset under `group` (checkpoints aside) read back from the file as it is
// on disk. A finished stage is skipped without reading its results: a run reads them before it
// starts, and everything again once it has closed the file.
void read_back(const io::ResultStore& s, const std::string& group) {
  s.attrs(group);
  const Tensors ds = s.read_tensors(group);
  for (const auto& name : s.list(group)) {
    if (name == "_checkpoints") continue;
    const std::string p = group + "/" + name;
    if (ds.count(name))
      s.attrs(p);
    else
      read_back(s, p);
  }
}

void check_results_read_back(const std::string& path, const std::string& group, const char* when) {
  try {
    io::ResultStore s(path, io::ResultStore::Mode::Read);
    if (s.exists(group)) read_back(s, group);
  } catch (const Error& e) {
    fail(e.what(), " -- ", when, "; write to a new --out");
  }
}

}  // namespace

void validate(const RunOptions& o) {
  if (o.model.empty()) fail("run: no model (--model PATH)");
  if (!paths::exists(o.model)) fail(o.model, ": no such file or directory");
  if (o.out.empty()) fail("run: no output file (--out FILE.h5)");
  if (paths::is_dir(o.out)) fail("--out ", o.out, ": is a directory; give a file name such as ", o.out, "/run.h5");
  if (o.precisions.empty()) fail("run: no precision (--quant fp32 --quant nf4 ...)");
  std::set<std::string> seen;
  for (const auto& p : o.precisions) {
    quant::parse_quant_spec(p);  // throws for an unknown spec, naming it
    if (!seen.insert(p).second) fail("--quant ", p, " is given twice");
  }
  if (o.tasks.empty()) fail("run: no task (--task boolq ...)");
  analyses_of(o);
  if (o.mode != "clean" && o.mode != "paper") fail("--mode must be clean or paper, got '", o.mode, "'");
  if (o.scoring != "paper" && o.scoring != "labels") fail("--scoring must be paper or labels, got '", o.scoring, "'");
  if (o.chat != "none" && o.chat != "auto") fail("--chat must be none or auto, got '", o.chat, "'");
  if (!o.ig_target.empty() && o.ig_target != "generated" && o.ig_target != "retokenized")
    fail("--ig-target must be generated or retokenized, got '", o.ig_target, "'");
  if (o.limit < 0) fail("--limit must be >= 0 (0 = every example), got ", o.limit);
  if (o.batch < 0) fail("--batch must be >= 1, got ", o.batch);
  if (o.ig_steps < 1) fail("--ig-steps must be >= 1, got ", o.ig_steps);
  std::vector<double> a, w;
  analysis::ig_quadrature(o.ig_method, std::max<int64_t>(o.ig_steps, 2), &a, &w);
  if (!(o.checkpoint_seconds >= 0)) fail("--checkpoint-seconds must be >= 0");
  for (const auto& t : o.tasks) load_task(t, o.data_dir, o.task_options);  // every name and CSV before any work
  const std::string dir = paths::parent(o.out);
  if (paths::exists(dir) && !paths::is_dir(dir)) fail("--out ", o.out, ": ", dir, " is a file, not a folder");
}

RunSummary run(const RunOptions& o, const ProgressFn& progress, const Parallel& par) {
  validate(o);
  if (par.world > 1 && (!par.gather || !par.broadcast)) fail("run: a data-parallel run needs gather and broadcast functions");
  Ctx c{o, analyses_of(o), nullptr, "", {}, {}, "", 32, o.mode == "paper", -1, {}, progress, par, nullptr, nullptr, {}, {}};
  c.batch = o.batch > 0 ? o.batch : 32;
  c.model_name = o.model_name.empty() ? io::paths::stem(o.model) : o.model_name;
  c.tok = text::load_tokenizer(o.tokenizer.empty() ? text::find_tokenizer(o.model) : o.tokenizer);
  if (o.chat == "auto") {
    c.chat = chat_template_of(o.model);
    if (c.chat.empty()) fail(o.model, ": --chat auto, but the model has no chat template");
    apply_chat_template(c.chat, "x");  // refuses a family it cannot render, before any work
  }
  std::vector<Task> tasks;
  for (const auto& name : o.tasks) tasks.push_back(load_task(name, o.data_dir, o.task_options));

  // Models: every precision loaded once; quantized ones in fp16 around the quantized layers in
  // paper mode (transformers + bitsandbytes do that), fp32 otherwise.
  for (const auto& name : o.precisions) {
    Prec p;
    p.name = name;
    p.spec = quant::parse_quant_spec(name);
    p.quantized = p.spec.quantized();
    model::LoadOptions lo;
    lo.device = o.device;
    if (p.quantized) {
      // The paper's runs keep bitsandbytes' fp16 around and inside the quantized layers. A clean run
      // on the CPU computes them in fp32 unless the spec names a compute dtype: a CPU has no fast
      // fp16 matrix product, and the stored weights are the same.
      lo.quant = c.paper ? name : quant::spec_for_device(name, o.device);
      lo.dtype = c.paper ? "fp16" : "";
      if (p.spec.method == quant::Method::GPTQ) {
        // Calibration as the field draws it: random windows (seed 0) of the first task's prompts,
        // encoded one after another; windows shrink to fit a short stream (the saved spec records them).
        // The dense model is loaded once and quantized in place: its context bounds the windows.
        p.model = model::load_model(o.model, model::LoadOptions{o.device, lo.dtype, "", {}});
        std::vector<int64_t> ids;
        for (size_t i = 0; i < tasks[0].examples.size(); ++i) {
          const auto v = c.tok->encode(tasks[0].prompt(i));
          ids.insert(ids.end(), v.begin(), v.end());
        }
        const int64_t ctx = p.model->config().max_seq_len;
        const int64_t seqlen = std::min<int64_t>({p.spec.seqlen, ctx, static_cast<int64_t>(ids.size()) - 1});
        if (seqlen < 1) fail("run ", name, ": the first task's prompts are too short to calibrate GPTQ");
        model::quantize_model(*p.model, quant::parse_quant_spec(lo.quant),
                              model::random_calibration_windows(at::tensor(ids, at::kLong), p.spec.calib, seqlen, 0),
                              [&](int64_t d, int64_t t) {
                                if (progress) progress({"GPTQ " + name, d, t, "layers", d == t});
                              });
      }
    } else {
      lo.quant = name;
    }
    if (!p.model) p.model = model::load_model(o.model, lo);
    text::check_tokenizer(*c.tok, p.model->config().vocab_size, o.model);
    if (!p.quantized && c.ref < 0) c.ref = static_cast<int>(c.precs.size());
    c.precs.push_back(std::move(p));
  }
  if (c.ref < 0 && std::find(o.analyses.begin(), o.analyses.end(), "drift") != o.analyses.end())
    fail("--analyses drift needs an unquantized precision (fp32, fp16 or bf16) among --quant to compare with");
  const int64_t L = c.precs.front().model->config().num_layers;
  c.layers = o.layers.empty() ? default_layers(L) : o.layers;
  std::sort(c.layers.begin(), c.layers.end());
  c.layers.erase(std::unique(c.layers.begin(), c.layers.end()), c.layers.end());
  for (int64_t l : c.layers) {
    if (l < 0 || l >= L) fail("--layers: the model has layers 0..", L - 1, ", not ", l);
    c.hooks.push_back(model::hook_name(l, model::HookPoint::MlpAct));
  }
  if (c.ref > 0) std::rotate(c.precs.begin(), c.precs.begin() + c.ref, c.precs.begin() + c.ref + 1), c.ref = 0;

  std::unique_ptr<io::ResultStore> store, rank_ckpt;
  paths::make_dirs(paths::parent(o.out));  // after every check: a refused run leaves nothing behind
  if (par.rank == 0 && paths::exists(o.out))
    check_results_read_back(o.out, c.model_name, "the results already in the file do not read back");
  if (par.rank == 0) store = std::make_unique<io::ResultStore>(o.out, io::ResultStore::Mode::Append);
  if (par.world > 1) {
    rank_ckpt = std::make_unique<io::ResultStore>(o.out + ".rank" + std::to_string(par.rank) + ".h5",
                                                  io::ResultStore::Mode::Append);
  }
  c.store = store.get();
  c.ckpt = rank_ckpt ? rank_ckpt.get() : store.get();
  // Each task's sizes and stages; every finished stage is checked before anything is written, so
  // that a file with other settings or a hole is refused as it was.
  std::vector<std::pair<int64_t, int64_t>> sizes;
  const bool forward = c.an.size() > 1 || !c.an.count("salient");
  for (const Task& t : tasks) {
    const int64_t n = o.limit > 0 ? std::min<int64_t>(o.limit, static_cast<int64_t>(t.examples.size()))
                                  : static_cast<int64_t>(t.examples.size());
    sizes.emplace_back(n, c.an.count("salient") ? (o.ig_limit >= 0 ? std::min(o.ig_limit, n) : n) : 0);
    std::vector<StageMark> marks;
    if (forward) marks.push_back(forward_mark(c, t, n));
    for (size_t pi = 0; sizes.back().second > 0 && pi < c.precs.size(); ++pi) marks.push_back(ig_mark(c, t, pi, sizes.back().second));
    for (const StageMark& m : marks)
      if (stage_done(c, m)) c.finished.insert({m.groups.front(), m.flag});
  }
  if (c.store) c.store->set_attrs(c.model_name, {{"model_file", o.model}, {"layers", [&] {
                                                   std::string s;
                                                   for (int64_t l : c.layers) s += (s.empty() ? "" : ",") + std::to_string(l);
                                                   return s;
                                                 }()}, {"num_layers", L}, {"precisions", join_list(o.precisions)}});
  c10::NoGradGuard ng;
  for (size_t ti = 0; ti < tasks.size(); ++ti) {
    const auto [n, n_ig] = sizes[ti];
    if (forward) forward_stage(c, tasks[ti], n);
    for (size_t pi = 0; n_ig > 0 && pi < c.precs.size(); ++pi) ig_stage(c, tasks[ti], pi, n_ig);
  }
  if (rank_ckpt) {
    const std::string path = rank_ckpt->path();
    rank_ckpt->close();
    std::remove(path.c_str());
  }
  if (store) {
    store->close();
    c.summary.dropped = io::ResultStore::drop_unreadable_objects(o.out);
    check_results_read_back(o.out, c.model_name, "this run's results do not read back");
  }
  c.summary.out = o.out;
  return c.summary;
}

}  // namespace qinterp::experiment
