// Bindings for qinterp::analysis (the accumulators) and qinterp::io::ResultStore. The Python
// side (qinterp/analysis.py) adds result() dicts with plain numbers for scalars.
#include <torch/csrc/utils/pybind.h>

#include <pybind11/functional.h>
#include <pybind11/stl.h>

#include "qinterp/analysis/calibration.hpp"
#include "qinterp/analysis/perplexity.hpp"
#include "qinterp/device.hpp"
#include "qinterp/error.hpp"
#include "qinterp/analysis/clustering.hpp"
#include "qinterp/analysis/correlation.hpp"
#include "qinterp/analysis/drift.hpp"
#include "qinterp/analysis/integrated_gradients.hpp"
#include "qinterp/analysis/salient.hpp"
#include "qinterp/analysis/neurons.hpp"
#include "qinterp/io/result_store.hpp"
#include "qinterp/model/model.hpp"
#include "qinterp/text/tokenizer.hpp"
#include "bindings.hpp"

namespace py = pybind11;
using namespace qinterp;
using namespace qinterp::analysis;

namespace {

at::Tensor opt(const std::optional<at::Tensor>& t) { return t ? *t : at::Tensor(); }

using Release = py::call_guard<py::gil_scoped_release>;

// The methods every accumulator has.
template <class T, class C>
void common(C& c) {
  c.def("merge", [](T& self, const T& other) { self.merge(other); }, py::arg("other"), Release(),
        "Fold in another accumulator of the same kind and settings (e.g. from another shard).")
      .def("state", &T::state, "Everything needed to continue later (see restore and ResultStore.save_state).")
      .def("restore", &T::restore, py::arg("state"))
      .def("finalize", &T::finalize, Release(), "The result as a dict of tensors (0-dim for scalars).")
      .def("to", [](T& self, const std::string& d) { self.to(parse_device(d)); }, py::arg("device"))
      .def_property("label", &T::label, &T::set_label, "Name used in error messages (the hook point).")
      .def_property_readonly("kind", &T::kind);
}

io::ResultStore::Mode parse_mode(const std::string& m) {
  if (m == "w") return io::ResultStore::Mode::Create;
  if (m == "a") return io::ResultStore::Mode::Append;
  if (m == "r") return io::ResultStore::Mode::Read;
  fail("ResultStore: mode must be 'w' (create/truncate), 'a' (append, create if missing) or 'r', got '", m, "'");
}

io::Attrs to_attrs(const py::dict& d) {
  io::Attrs a;
  for (auto& [k, v] : d) {
    const std::string key = py::str(k);
    if (py::isinstance<py::bool_>(v) || py::isinstance<py::int_>(v)) {
      // beyond int64 pybind11 would raise a bare "Unable to cast"
      const py::int_ i = py::reinterpret_borrow<py::int_>(v);
      if (i < py::int_(INT64_MIN) || i > py::int_(INT64_MAX))
        fail("ResultStore: attribute '", key, "' = ", std::string(py::str(v)), " does not fit in int64; store it as a str");
      a[key] = v.cast<int64_t>();
    }
    else if (py::isinstance<py::float_>(v)) a[key] = v.cast<double>();
    else if (py::isinstance<py::str>(v)) a[key] = v.cast<std::string>();
    else fail("ResultStore: attribute '", key, "' must be int, float or str, got ", std::string(py::str(py::type::of(v).attr("__name__"))));
  }
  return a;
}

py::dict from_attrs(const io::Attrs& a) {
  py::dict d;
  for (const auto& [k, v] : a) std::visit([&](const auto& x) { d[py::str(k)] = x; }, v);
  return d;
}

}  // namespace

void bind_analysis(py::module_& m) {
  py::class_<State>(m, "State", "A saved accumulator: kind and tensors.")
      .def(py::init<std::string, Tensors>(), py::arg("kind"), py::arg("tensors"))
      .def_readwrite("kind", &State::kind)
      .def_readwrite("tensors", &State::tensors)
      .def("__repr__", [](const State& s) { return "<qinterp State " + s.kind + ", " + std::to_string(s.tensors.size()) + " tensors>"; });

  py::class_<DeadNeurons> dn(m, "DeadNeurons",
      "Dead neurons: every activation strictly inside (lo, hi). update(act [T, N] or [B, S, N], mask=None).");
  dn.def(py::init<double, double>(), py::arg("lo") = -0.1, py::arg("hi") = 0.1)
      .def_static("relu", &DeadNeurons::relu, py::arg("eps") = 1e-6, "|a| < eps (ReLU models)")
      .def("update", [](DeadNeurons& a, const at::Tensor& x, const std::optional<at::Tensor>& mask) { a.update(x, opt(mask)); },
           py::arg("act"), py::arg("mask") = py::none(), Release())
      .def_property_readonly("tokens", &DeadNeurons::tokens);
  common<DeadNeurons>(dn);

  py::class_<NeuronStats> ns(m, "NeuronStats", "Per-neuron count, mean, variance, absmax, active fraction, histogram.");
  ns.def(py::init([](double alo, double ahi, int64_t bins, double hlo, double hhi) {
           NeuronStats::Options o;
           o.active_lo = alo;
           o.active_hi = ahi;
           o.bins = bins;
           o.hist_lo = hlo;
           o.hist_hi = hhi;
           return NeuronStats(o);
         }),
         py::arg("active_lo") = -0.1, py::arg("active_hi") = 0.1, py::arg("bins") = 32, py::arg("hist_lo") = -4.0,
         py::arg("hist_hi") = 4.0)
      .def("update", [](NeuronStats& a, const at::Tensor& x, const std::optional<at::Tensor>& mask) { a.update(x, opt(mask)); },
           py::arg("act"), py::arg("mask") = py::none(), Release())
      .def_property_readonly("tokens", &NeuronStats::tokens);
  common<NeuronStats>(ns);

  py::class_<Correlation> co(m, "Correlation", "Streaming |Pearson r| histogram over neuron pairs of one hook.");
  co.def(py::init([](int64_t bins, int64_t top_k, double cluster_threshold, int64_t tile, int64_t chunk,
                      bool cpu_kernel) {
           Correlation::Options o;
           o.bins = bins;
           o.top_k = top_k;
           o.cluster_threshold = cluster_threshold;
           o.tile = tile;
           o.chunk = chunk;
           o.cpu_kernel = cpu_kernel;
           return Correlation(o);
         }),
         py::arg("bins") = 10, py::arg("top_k") = 100, py::arg("cluster_threshold") = 0.0, py::arg("tile") = 256,
         py::arg("chunk") = 2048, py::arg("cpu_kernel") = true)
      .def("update", [](Correlation& a, const at::Tensor& x, const std::optional<at::Tensor>& mask) { a.update(x, opt(mask)); },
           py::arg("act"), py::arg("mask") = py::none(), Release())
      .def("matrix", &Correlation::matrix, Release(), "The full [N, N] correlation matrix (float64; NaN for constant neurons).")
      .def_property_readonly("tokens", &Correlation::tokens)
      .def_property_readonly("neurons", &Correlation::neurons);
  common<Correlation>(co);
  m.def("average_linkage_clusters", &average_linkage_clusters, py::arg("condensed"), py::arg("n"), py::arg("threshold"),
        Release());

  py::class_<Drift> dr(m, "Drift", "Full precision vs quantized activations on the same tokens, per neuron.");
  dr.def(py::init<double, double>(), py::arg("dead_lo") = -0.1, py::arg("dead_hi") = 0.1)
      .def("update", [](Drift& a, const at::Tensor& f, const at::Tensor& q, const std::optional<at::Tensor>& mask) {
             a.update(f, q, opt(mask));
           }, py::arg("full"), py::arg("quant"), py::arg("mask") = py::none(), Release())
      .def_property_readonly("tokens", &Drift::tokens);
  common<Drift>(dr);

  py::class_<Calibration> ca(m, "Calibration", "Accuracy, confidence, ECE and ACE (the paper's equal-count bins).");
  ca.def(py::init<int64_t>(), py::arg("bins") = 10)
      .def("update", &Calibration::update, py::arg("confidence"), py::arg("correct"), Release())
      .def("update_logits", &Calibration::update_logits, py::arg("logits"), py::arg("gold"), Release())
      .def_property_readonly("examples", &Calibration::examples);
  common<Calibration>(ca);

  m.def("next_token_targets", [](const at::Tensor& ids, const std::optional<at::Tensor>& mask) {
          auto [t, k] = next_token_targets(ids, opt(mask));
          return py::make_tuple(t, k);
        }, py::arg("ids"), py::arg("mask") = py::none(),
        "(targets [B, T-1], mask [B, T-1]) of a left-padded batch: a position counts when it and the token it "
        "predicts are both real. Use with Perplexity.update(logits[:, :-1], targets, mask).");
  py::class_<Perplexity> pp(m, "Perplexity", "Mean negative log-likelihood and perplexity of predicted tokens.");
  pp.def(py::init<>())
      .def("update", [](Perplexity& a, const at::Tensor& l, const at::Tensor& t, const std::optional<at::Tensor>& mask) {
             a.update(l, t, opt(mask));
           }, py::arg("logits"), py::arg("targets"), py::arg("mask") = py::none(), Release())
      .def_property_readonly("tokens", &Perplexity::tokens);
  common<Perplexity>(pp);

  py::class_<SalientNeurons> sn(m, "SalientNeurons",
      "Salient neurons from IG attributions: four scores per example, |s|/max|s| > threshold, union over examples.");
  sn.def(py::init<std::string, double>(), py::arg("mode") = "paper", py::arg("threshold") = 0.7)
      .def("update", &SalientNeurons::update, py::arg("attributions"), py::arg("input_keys") = std::vector<std::string>{},
           py::arg("target_keys") = std::vector<std::string>{}, Release(),
           "attributions: one [positions, neurons] tensor per target token; input_keys: the prompt's token strings "
           "(paper mode); target_keys: the targets' decoded strings (paper mode, optional).")
      .def("example_scores", &SalientNeurons::example_scores, py::arg("attributions"),
           py::arg("input_keys") = std::vector<std::string>{}, py::arg("target_keys") = std::vector<std::string>{},
           Release(), "[4, neurons] bool: the salient sets of one example by best, sum, avg, max (nothing folded in).")
      .def("skip", &SalientNeurons::skip, "Count an example that has nothing to attribute (empty answer).")
      .def_property_readonly("examples", &SalientNeurons::examples)
      .def_property_readonly("skipped", &SalientNeurons::skipped)
      .def_property_readonly("mode", &SalientNeurons::mode);
  common<SalientNeurons>(sn);
  m.def("answer_targets", &answer_targets, py::arg("tokenizer"), py::arg("answer_id"), py::arg("mode") = "retokenized",
        "The tokens IG attributes for an answer token: 'generated' ([answer_id]) or 'retokenized' (decoded, stripped, "
        "encoded again without special tokens, as the authors' scripts; may be empty).");

  py::class_<io::ActivationDump>(m, "ActivationDump", "A growable [tokens, neurons] dataset with its token table.")
      .def("append", &io::ActivationDump::append, py::arg("act"), py::arg("example"), py::arg("position"))
      .def("append_masked", &io::ActivationDump::append_masked, py::arg("act"), py::arg("mask"), py::arg("first_example"))
      .def("truncate", &io::ActivationDump::truncate, py::arg("rows"))
      .def_property_readonly("rows", &io::ActivationDump::rows)
      .def_property_readonly("path", &io::ActivationDump::path);

  py::class_<io::ResultStore, std::shared_ptr<io::ResultStore>>(m, "ResultStore",
      "One HDF5 file per run (readable with h5py). mode: 'w' create/truncate, 'a' append (create if missing), 'r'.")
      .def(py::init([](const std::string& path, const std::string& mode) {
             return std::make_shared<io::ResultStore>(path, parse_mode(mode));
           }), py::arg("path"), py::arg("mode") = "a")
      .def_property_readonly("path", &io::ResultStore::path)
      .def_static("join", &io::ResultStore::join, py::arg("parts"))
      .def_static("drop_unreadable_objects", &io::ResultStore::drop_unreadable_objects, py::arg("path"),
                  "Rewrites the closed file without the unreadable save copies ('<group>.partial') that "
                  "killed runs leave; returns their paths (the file is untouched when there are none)")
      .def("exists", &io::ResultStore::exists, py::arg("object"))
      .def("list", &io::ResultStore::list, py::arg("group") = "")
      .def("set_attrs", [](io::ResultStore& s, const std::string& o, const py::dict& d) { s.set_attrs(o, to_attrs(d)); },
           py::arg("object"), py::arg("attrs"))
      .def("attrs", [](const io::ResultStore& s, const std::string& o) { return from_attrs(s.attrs(o)); }, py::arg("object") = "")
      .def("write", &io::ResultStore::write, py::arg("dataset"), py::arg("tensor"))
      .def("read", &io::ResultStore::read, py::arg("dataset"))
      .def("write_tensors", &io::ResultStore::write_tensors, py::arg("group"), py::arg("tensors"))
      .def("read_tensors", &io::ResultStore::read_tensors, py::arg("group"))
      .def("save_state", [](io::ResultStore& s, const std::string& g, const State& st, const py::dict& extra) {
             s.save_state(g, st, to_attrs(extra));
           }, py::arg("group"), py::arg("state"), py::arg("attrs") = py::dict())
      .def("load_state", &io::ResultStore::load_state, py::arg("group"))
      .def("dump", &io::ResultStore::dump, py::arg("group"), py::arg("neurons"), py::arg("fp16") = true,
           py::keep_alive<0, 1>())
      .def("flush", &io::ResultStore::flush)
      .def("close", &io::ResultStore::close);
}

// The sliding-window driver needs the model; module.cpp owns the Python model type and calls this.
py::dict perplexity_result(model::Model& model, const at::Tensor& ids, int64_t context, int64_t stride, bool progress) {
  Perplexity acc;
  std::function<void(int64_t, int64_t)> cb;
  if (progress)
    cb = [](int64_t done, int64_t total) { py::print("perplexity: window", done, "/", total, py::arg("flush") = true); };
  perplexity(model, ids, context, stride, acc, cb);  // GIL held: the model may call Python hooks
  py::dict d;
  for (auto& [k, v] : acc.finalize()) d[py::str(k)] = v;
  return d;
}

namespace {
py::dict ig_result_dict(const IgResult& r) {
  py::dict d;
  d["attributions"] = r.attributions;
  d["delta"] = r.delta;
  d["completeness_gap"] = r.completeness_gap;
  d["f_input"] = r.f_input;
  d["f_baseline"] = r.f_baseline;
  d["f_hook_baseline"] = r.f_hook_baseline;
  d["sum"] = r.sum;
  return d;
}
}  // namespace

void bind_ig(py::module_& m) {
  m.def("ig_quadrature", [](const std::string& method, int64_t n) {
          std::vector<double> a, w;
          ig_quadrature(method, n, &a, &w);
          return py::make_tuple(a, w);
        }, py::arg("method"), py::arg("n_steps"), "Captum's (alphas, step sizes) for a method and n_steps.");
  py::class_<IntegratedGradients>(m, "IntegratedGradients")
      .def(py::init([](const PyModel& pm, const std::vector<std::string>& hooks, int64_t n_steps, const std::string& method,
                       const std::string& baseline, int64_t baseline_id, const std::map<std::string, at::Tensor>& acts,
                       int64_t internal_batch_size, int64_t memory_budget, bool completeness) {
             IgOptions o;
             o.n_steps = n_steps;
             o.method = method;
             o.baseline = baseline;
             o.baseline_id = baseline_id;
             o.baseline_acts = acts;
             o.internal_batch_size = internal_batch_size;
             o.memory_budget = memory_budget;
             o.completeness = completeness;
             return IntegratedGradients(pm.m, hooks, o);
           }),
           py::arg("model"), py::arg("hooks"), py::arg("n_steps"), py::arg("method"), py::arg("baseline"),
           py::arg("baseline_id"), py::arg("baseline_acts"), py::arg("internal_batch_size"), py::arg("memory_budget"),
           py::arg("completeness"))
      .def("attribute_all", [](const IntegratedGradients& ig, const at::Tensor& ids, const std::vector<int64_t>& targets) {
             std::vector<IgResults> rs;
             {
               py::gil_scoped_release nogil;
               rs = ig.attribute(ids, targets);
             }
             py::list out;
             for (const auto& r : rs) {
               py::dict d;
               for (const auto& [h, v] : r) d[py::str(h)] = ig_result_dict(v);
               out.append(d);
             }
             return out;
           }, py::arg("ids"), py::arg("targets"))
      .def("chunk_steps", &IntegratedGradients::chunk_steps, py::arg("hook"), py::arg("positions"))
      .def_property_readonly("hooks", &IntegratedGradients::hooks);
}
