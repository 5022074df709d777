// Bindings: hooks, the model, loading, perplexity and speed.
#include <pybind11/functional.h>
#include <pybind11/stl.h>

#include "bindings.hpp"
#include "qinterp/qinterp.hpp"

namespace py = pybind11;
using namespace qinterp;

namespace {

// The configuration as a dict, through the one serialisation (model/config.hpp).
py::dict config_dict(const model::ModelConfig& c) {
  return py::module_::import("json").attr("loads")(model::config_to_json(c)).cast<py::dict>();
}

}  // namespace

void bind_model(py::module_& m) {
  py::class_<model::Hooks, std::shared_ptr<model::Hooks>>(m, "Hooks",
      "Functions attached to a model's hook points. fn(activation, mask) -> None or a replacement tensor.")
      .def("add", [](model::Hooks& h, const std::string& name, py::function fn) {
             // The forward pass runs with the GIL held (it is called from Python), so calling
             // back needs no re-acquisition.
             return h.add(name, [fn](const at::Tensor& act, const model::HookContext& ctx) -> std::optional<at::Tensor> {
               py::object r = fn(act, ctx.mask);
               if (r.is_none()) return std::nullopt;
               if (!THPVariable_Check(r.ptr()))
                 fail("hook at '", ctx.name, "' returned a ", std::string(py::str(py::type::of(r).attr("__name__"))),
                      "; a hook returns None (observe) or a tensor of the activation's shape (replace)");
               return THPVariable_Unpack(r.ptr());
             });
           }, py::arg("name"), py::arg("fn"), "Attach fn at a hook point; returns a handle for remove().")
      .def("_add_named", [](model::Hooks& h, const std::string& name, py::function fn) {
             return h.add(name, [fn](const at::Tensor& act, const model::HookContext& ctx) -> std::optional<at::Tensor> {
               py::object r = fn(act, ctx.mask, ctx.name);
               if (r.is_none()) return std::nullopt;
               if (!THPVariable_Check(r.ptr()))
                 fail("hook at '", ctx.name, "' returned a ", std::string(py::str(py::type::of(r).attr("__name__"))),
                      "; a hook returns None (observe) or a tensor of the activation's shape (replace)");
               return THPVariable_Unpack(r.ptr());
             });
           }, py::arg("name"), py::arg("fn"))
      .def("remove", &model::Hooks::remove, py::arg("handle"))
      .def("clear", &model::Hooks::clear)
      .def("active", &model::Hooks::names, "Hook points that have functions attached.")
      .def("__len__", [](const model::Hooks& h) { return h.names().size(); });

  py::class_<PyModel>(m, "Model")
      .def("forward", [](const PyModel& p, const at::Tensor& ids, const std::optional<at::Tensor>& mask) {
             return p.m->forward(ids, opt_tensor(mask), p.hooks.get());
           }, py::arg("ids"), py::arg("mask") = py::none(),
           "ids [batch, seq] int64 (mask [batch, seq], 1 = token, 0 = left padding) -> logits [batch, seq, vocab] float32")
      .def("generate", [](const PyModel& p, const at::Tensor& ids, int64_t max_new_tokens, double temperature,
                          double top_p, uint64_t seed, const std::optional<at::Tensor>& mask,
                          const std::optional<std::vector<int64_t>>& stop_tokens) {
             model::GenerateOptions o;
             o.max_new_tokens = max_new_tokens;
             o.temperature = temperature;
             o.top_p = top_p;
             o.seed = seed;
             if (stop_tokens) {
               o.stop_tokens = *stop_tokens;
               o.use_default_stop = false;
             }
             return p.m->generate(ids, o, opt_tensor(mask), p.hooks.get());
           }, py::arg("ids"), py::arg("max_new_tokens") = 32, py::arg("temperature") = 0.0, py::arg("top_p") = 1.0,
           py::arg("seed") = 42, py::arg("mask") = py::none(), py::arg("stop_tokens") = py::none(),
           "Returns [batch, seq + n] ids. stop_tokens defaults to the model's eos.")
      .def_property_readonly("hooks", [](const PyModel& p) { return p.hooks; })
      .def_property_readonly("config", [](const PyModel& p) { return config_dict(p.m->config()); })
      .def_property_readonly("hook_points", [](const PyModel& p) { return p.m->hook_points(); })
      .def_property_readonly("device", [](const PyModel& p) { return p.m->device().str(); })
      .def_property_readonly("dtype", [](const PyModel& p) { return std::string(c10::toString(p.m->dtype())); })
      .def("to", [](PyModel& p, const std::string& device, const std::string& dtype) {
             p.m->to(parse_device(device), dtype.empty() ? p.m->dtype() : parse_dtype(dtype));
           }, py::arg("device"), py::arg("dtype") = "")
      .def("named_parameters", [](const PyModel& p) {
             py::dict d;
             for (const auto& nt : p.m->named_parameters()) d[py::str(nt.name)] = nt.tensor;
             return d;
           })
      .def("num_parameters", [](const PyModel& p) { return p.m->num_parameters(); })
      .def("parameter_bytes", [](const PyModel& p) { return p.m->parameter_bytes(); })
      .def("set_compact_head", [](PyModel& p, bool on) { p.m->set_compact_head(on); }, py::arg("on"),
           "Whether decoding steps read the LM head from its exact Q8_0 blocks (on by default; see compact_head_bytes).")
      .def_property_readonly("compact_head_bytes", [](const PyModel& p) { return p.m->compact_head_bytes(); },
                             "Bytes of the LM head's exact Q8_0 copy that decoding reads; 0 when the head has none.")
      .def_property_readonly("quant", [](const PyModel& p) { return p.m->quant_spec().str(); })
      .def("quantize", [](PyModel& p, const std::string& spec, const std::optional<at::Tensor>& calib, bool progress) {
             py::gil_scoped_release nogil;
             std::function<void(int64_t, int64_t)> cb;
             if (progress) cb = [](int64_t d, int64_t t) { std::fprintf(stderr, "[quantize] layer %lld/%lld\n", (long long)d, (long long)t); };
             model::quantize_model(*p.m, quant::parse_quant_spec(spec), opt_tensor(calib), cb);
           }, py::arg("spec"), py::arg("calibration") = py::none(), py::arg("progress") = false,
           "Quantize the block linear layers in place (GPTQ needs calibration ids [N, T]).")
      .def("save", [](const PyModel& p, const std::string& dir) { model::save_model(*p.m, dir); }, py::arg("dir"))
      .def("linear_weight", [](const PyModel& p, int64_t layer, const std::string& name) {
             std::string known;
             for (int k = 0; k < model::kNumLinear; ++k)
               if (model::linear_role(p.m->config(), k)) {
                 const std::string m = model::linear_module(p.m->config(), k);
                 if (name == m) return p.m->linear_weight(layer, k);
                 known += (known.empty() ? "" : ", ") + m;
               }
             throw Error("linear_weight: no linear '" + name + "' in this model (" + known + ")");
           }, py::arg("layer"), py::arg("name"), "Dense (dequantized) weight of a block's linear layer.");


  m.def("perplexity", [](const PyModel& p, const at::Tensor& ids, int64_t context, int64_t stride, bool progress) {
          return perplexity_result(*p.m, ids, context, stride, progress);
        }, py::arg("model"), py::arg("ids"), py::arg("context"), py::arg("stride"), py::arg("progress") = false,
        "Sliding-window perplexity of a 1-D token stream (see qinterp.analysis.perplexity).");
  m.def("load_model", [](const std::string& path, const std::string& quant, const std::string& device,
                         const std::string& dtype, const std::optional<at::Tensor>& calib) {
          LoadOptions o;
          o.quant = quant;
          o.device = device;
          o.dtype = dtype;
          o.calibration = opt_tensor(calib);
          py::gil_scoped_release nogil;
          return PyModel{load_model(path, o)};
        }, py::arg("path"), py::arg("quant") = "", py::arg("device") = "cpu", py::arg("dtype") = "",
        py::arg("calibration") = py::none());

  m.def("evaluate_perplexity", [](const PyModel& p, const text::Tokenizer& tok, const std::string& text,
                                  const std::string& protocol, int64_t seqlen, int64_t max_windows, int64_t batch,
                                  bool progress) {
          analysis::PerplexityOptions o;
          o.protocol = analysis::parse_perplexity_protocol(protocol);
          o.seqlen = seqlen;
          o.max_windows = max_windows;
          o.batch = batch;
          std::function<void(int64_t, int64_t)> cb;
          if (progress)
            cb = [](int64_t d, int64_t t) { py::print("perplexity: window", d, "/", t, py::arg("flush") = true); };
          const auto r = analysis::evaluate_perplexity(*p.m, tok, text, o, cb);  // GIL held: Python hooks
          py::dict d;
          d["ppl"] = r.ppl;
          d["nll"] = r.nll;
          d["tokens"] = r.tokens;
          d["windows"] = r.windows;
          d["seqlen"] = r.seqlen;
          d["stream_tokens"] = r.stream_tokens;
          d["protocol"] = r.protocol;
          return d;
        }, py::arg("model"), py::arg("tokenizer"), py::arg("text"), py::arg("protocol") = "gptq", py::arg("seqlen") = 0,
        py::arg("max_windows") = 0, py::arg("batch") = 1, py::arg("progress") = false);
  m.def("wikitext_joined", &analysis::wikitext_joined, py::arg("raw"),
        "WikiText-2's rows (the lines of wiki.test.raw, blank ones empty) joined with '\\n\\n', as GPTQ's loaders do.");
  m.def("random_calibration_windows", &model::random_calibration_windows, py::arg("ids"), py::arg("n"),
        py::arg("seqlen"), py::arg("seed") = 0,
        "GPTQ's calibration: n windows of seqlen tokens at starts drawn as Python's random.seed(seed); "
        "random.randint(0, len - seqlen - 1).");
  m.def("spec_for_device", &quant::spec_for_device, py::arg("spec"), py::arg("device"));
  m.def("measure_speed", [](const PyModel& p, int64_t prompt_tokens, int64_t new_tokens, int64_t warmup, uint64_t seed) {
          experiment::SpeedOptions o{prompt_tokens, new_tokens, warmup, seed};
          experiment::SpeedResult r;
          {
            py::gil_scoped_release nogil;  // no hooks run here
            r = experiment::measure_speed(*p.m, o);
          }
          py::dict d;
          d["weight_bytes"] = r.weight_bytes;
          d["head_q8_bytes"] = r.head_q8_bytes;
          d["parameters"] = r.parameters;
          d["prompt_tokens"] = r.prompt_tokens;
          d["new_tokens"] = r.new_tokens;
          d["prefill_seconds"] = r.prefill_seconds;
          d["decode_seconds"] = r.decode_seconds;
          d["decode_tokens_per_second"] = r.decode_tokens_per_second;
          d["peak_host_bytes"] = r.peak_host_bytes;
          d["peak_device_allocated"] = r.peak_device_allocated;
          d["peak_device_reserved"] = r.peak_device_reserved;
          return d;
        }, py::arg("model"), py::arg("prompt_tokens") = 256, py::arg("new_tokens") = 512, py::arg("warmup") = 8,
        py::arg("seed") = 0);
}
