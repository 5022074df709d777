// qinterp._C — the pybind11 module. Thin: argument conversion and the GIL for Python hooks;
// everything else is the C++ library.
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/utils/pybind.h>

#include <pybind11/functional.h>
#include <pybind11/stl.h>

#include "qinterp/qinterp.hpp"
#include "py_model.hpp"

namespace py = pybind11;
using namespace qinterp;

void bind_analysis(py::module_& m);  // analysis.cpp
void bind_ig(py::module_& m);        // analysis.cpp (needs Model)
void bind_experiment(py::module_& m);  // experiment.cpp
py::dict perplexity_result(model::Model& model, const at::Tensor& ids, int64_t context, int64_t stride, bool progress);

namespace {

py::dict config_dict(const model::ModelConfig& c) {
  py::dict d;
  d["arch"] = c.arch;
  d["source"] = c.source;
  d["format"] = c.format;
  d["vocab_size"] = c.vocab_size;
  d["hidden_size"] = c.hidden_size;
  d["intermediate_size"] = c.intermediate_size;
  d["num_layers"] = c.num_layers;
  d["num_heads"] = c.num_heads;
  d["num_kv_heads"] = c.num_kv_heads;
  d["head_dim"] = c.head_dim;
  d["max_seq_len"] = c.max_seq_len;
  d["rms_norm_eps"] = c.rms_norm_eps;
  d["rope_theta"] = c.rope_theta;
  d["rope_layout"] = model::to_string(c.rope_layout);
  d["activation"] = model::to_string(c.activation);
  d["gated_mlp"] = c.gated_mlp;
  d["tie_embeddings"] = c.tie_embeddings;
  d["qkv_bias"] = c.qkv_bias;
  d["bos_id"] = c.bos_id;
  d["eos_id"] = c.eos_id;
  d["pad_id"] = c.pad_id;
  return d;
}

at::Tensor opt_tensor(const std::optional<at::Tensor>& t) { return t ? *t : at::Tensor(); }

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "qinterp native module";
  m.attr("__version__") = version();
  py::register_exception<Error>(m, "Error", PyExc_RuntimeError);
  bind_analysis(m);

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
      .def_property_readonly("hook_points", [](const PyModel& p) { return model::Hooks::all_names(p.m->config().num_layers); })
      .def_property_readonly("device", [](const PyModel& p) { return p.m->device().str(); })
      .def_property_readonly("dtype", [](const PyModel& p) { return std::string(c10::toString(p.m->dtype())); })
      .def("to", [](PyModel& p, const std::string& device, const std::string& dtype) {
             p.m->to(parse_device(device), dtype.empty() ? p.m->dtype() : model::parse_dtype(dtype));
           }, py::arg("device"), py::arg("dtype") = "")
      .def("named_parameters", [](const PyModel& p) {
             py::dict d;
             for (const auto& nt : p.m->named_parameters()) d[py::str(nt.name)] = nt.tensor;
             return d;
           })
      .def("num_parameters", [](const PyModel& p) { return p.m->num_parameters(); })
      .def("parameter_bytes", [](const PyModel& p) { return p.m->parameter_bytes(); })
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
             for (int k = 0; k < model::kNumLinear; ++k)
               if (name == model::linear_name(k)) return p.m->linear_weight(layer, k);
             throw Error("linear_weight: no linear '" + name + "' (self_attn.q_proj ... mlp.down_proj)");
           }, py::arg("layer"), py::arg("name"), "Dense (dequantized) weight of a block's linear layer.");

  bind_ig(m);
  bind_experiment(m);

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

  // ---- quantization (qinterp.quant wraps these)
  py::class_<quant::QuantizedTensor>(m, "QuantizedTensor")
      .def_property_readonly("spec", [](const quant::QuantizedTensor& q) { return q.spec.str(); })
      .def_property_readonly("shape", [](const quant::QuantizedTensor& q) { return q.shape; })
      .def_property_readonly("dtype", [](const quant::QuantizedTensor& q) { return q.dtype; })
      .def_property_readonly("nbytes", &quant::QuantizedTensor::nbytes)
      .def("parts", [](const quant::QuantizedTensor& q) {
             py::dict d;
             for (const auto& p : q.parts()) d[py::str(p.first)] = p.second;
             return d;
           }, "Storage tensors by name: qdata, absmax, absmax2, offset, code2, scale, zero, g_idx.")
      .def("to", [](const quant::QuantizedTensor& q, const std::string& dev) { return q.to(parse_device(dev)); })
      .def("__repr__", [](const quant::QuantizedTensor& q) {
             std::string s = "QuantizedTensor(" + q.spec.str() + ", shape=[";
             for (size_t i = 0; i < q.shape.size(); ++i) s += (i ? ", " : "") + std::to_string(q.shape[i]);
             return s + "], " + std::to_string(q.nbytes()) + " bytes)";
           });
  m.def("quantize", [](const at::Tensor& x, const std::string& spec) { return quant::quantize(x, quant::parse_quant_spec(spec)); },
        py::arg("tensor"), py::arg("spec"));
  m.def("dequantize", [](const quant::QuantizedTensor& q) { return quant::dequantize(q); }, py::arg("qt"));
  m.def("parse_spec", [](const std::string& s) { return quant::parse_quant_spec(s).str(); }, py::arg("spec"));
  m.def("quantize_4bit", [](const at::Tensor& x, const std::string& type, int64_t block) {
          return quant::quantize_4bit(x, type == "nf4" ? quant::Method::NF4 : type == "fp4" ? quant::Method::FP4
                                          : throw Error("quant_type must be nf4 or fp4"), block);
        }, py::arg("x"), py::arg("quant_type"), py::arg("block"));
  m.def("dequantize_4bit", [](const at::Tensor& packed, const at::Tensor& absmax, const std::string& type, int64_t block,
                              std::vector<int64_t> shape, at::ScalarType st) {
          return quant::dequantize_4bit(packed, absmax, type == "nf4" ? quant::Method::NF4 : quant::Method::FP4, block,
                                        shape, st);
        }, py::arg("packed"), py::arg("absmax"), py::arg("quant_type"), py::arg("block"), py::arg("shape"), py::arg("dtype"));
  m.def("dynamic_map", &quant::dynamic_map);
  m.def("int8_vectorwise_quant", [](const at::Tensor& x, double threshold) {
          auto r = quant::int8_vectorwise_quant(x, threshold);
          return py::make_tuple(r.q, r.absmax, r.outlier_cols);
        }, py::arg("x"), py::arg("threshold") = 0.0);
  m.def("linear", [](const at::Tensor& x, const quant::QuantizedTensor& w, const std::optional<at::Tensor>& bias) {
          return quant::QLinear(w, opt_tensor(bias)).forward(x);
        }, py::arg("x"), py::arg("weight"), py::arg("bias") = py::none());
  m.def("gemv_4bit", &quant::gemv_4bit, py::arg("x"), py::arg("weight"));
  m.def("gemv_grouped", &quant::gemv_grouped, py::arg("x"), py::arg("weight"));
  m.def("gptq_quantize", [](const at::Tensor& w, const at::Tensor& h, const std::string& spec) {
          double loss = 0;
          auto q = quant::gptq_quantize(w, h, quant::parse_quant_spec(spec), &loss);
          return py::make_tuple(q, loss);
        }, py::arg("weight"), py::arg("hessian"), py::arg("spec"));
  py::class_<quant::GptqHessian>(m, "GptqHessian")
      .def(py::init<int64_t>(), py::arg("in_features"))
      .def("add", &quant::GptqHessian::add, py::arg("x"))
      .def_property_readonly("matrix", &quant::GptqHessian::matrix)
      .def_property_readonly("samples", &quant::GptqHessian::samples);

  py::class_<text::Tokenizer, std::shared_ptr<text::Tokenizer>>(m, "Tokenizer")
      .def("encode", [](const text::Tokenizer& t, const std::string& s, std::optional<bool> bos, std::optional<bool> eos) {
             py::gil_scoped_release nogil;
             return t.encode(s, bos.value_or(t.add_bos_default()), eos.value_or(t.add_eos_default()));
           }, py::arg("text"), py::arg("bos") = py::none(), py::arg("eos") = py::none(),
           "Token ids of text (str, or bytes taken as UTF-8). bos/eos default to the model's convention.")
      .def("tokenize", [](const text::Tokenizer& t, const std::string& s) {
             py::gil_scoped_release nogil;
             return t.tokenize(s);
           }, py::arg("text"), "Token ids with no BOS/EOS.")
      .def("encode_many", [](const text::Tokenizer& t, const std::vector<std::string>& texts, std::optional<bool> bos,
                             std::optional<bool> eos) {
             py::gil_scoped_release nogil;
             std::vector<std::vector<int64_t>> out;
             out.reserve(texts.size());
             for (const auto& s : texts) out.push_back(t.encode(s, bos.value_or(t.add_bos_default()), eos.value_or(t.add_eos_default())));
             return out;
           }, py::arg("texts"), py::arg("bos") = py::none(), py::arg("eos") = py::none(),
           "encode() over a list, one call (no padding).")
      .def("encode_batch", [](const text::Tokenizer& t, const std::vector<std::string>& texts, std::optional<bool> bos,
                              std::optional<bool> eos, std::optional<int64_t> pad_id) {
             text::EncodedBatch b;
             {
               py::gil_scoped_release nogil;
               b = text::encode_batch(t, texts, bos, eos, pad_id);
             }
             return py::make_tuple(b.ids, b.mask);
           }, py::arg("texts"), py::arg("bos") = py::none(), py::arg("eos") = py::none(), py::arg("pad_id") = py::none(),
           "(ids [batch, max_len] int64, mask [batch, max_len] bool), rows padded on the left.")
      .def("decode", [](const text::Tokenizer& t, const std::vector<int64_t>& ids) {
             const std::string s = t.decode(ids);
             return py::reinterpret_steal<py::str>(PyUnicode_DecodeUTF8(s.data(), static_cast<Py_ssize_t>(s.size()), "replace"));
           }, py::arg("ids"), "Text of the ids, special tokens left out; bytes that are not UTF-8 become U+FFFD.")
      .def("decode_bytes", [](const text::Tokenizer& t, const std::vector<int64_t>& ids) { return py::bytes(t.decode(ids)); })
      .def("decode_piece", [](const text::Tokenizer& t, int64_t prev, int64_t id) { return py::bytes(t.decode_piece(prev, id)); })
      .def("piece", [](const text::Tokenizer& t, int64_t id) { return py::bytes(t.piece(id)); })
      .def_property_readonly("kind", &text::Tokenizer::kind)
      .def_property_readonly("source", &text::Tokenizer::source)
      .def_property_readonly("vocab_size", &text::Tokenizer::vocab_size)
      .def_property_readonly("bos_id", &text::Tokenizer::bos_id)
      .def_property_readonly("eos_id", &text::Tokenizer::eos_id)
      .def_property_readonly("pad_id", &text::Tokenizer::pad_id)
      .def_property_readonly("unk_id", &text::Tokenizer::unk_id)
      .def_property_readonly("add_bos_default", &text::Tokenizer::add_bos_default)
      .def_property_readonly("add_eos_default", &text::Tokenizer::add_eos_default)
      .def("__len__", &text::Tokenizer::vocab_size)
      .def("__repr__", [](const text::Tokenizer& t) {
        return "<qinterp.Tokenizer " + std::string(t.kind()) + " vocab=" + std::to_string(t.vocab_size()) + " from " + t.source() + ">";
      });
  m.def("load_tokenizer", [](const std::string& path) { return std::shared_ptr<text::Tokenizer>(load_tokenizer(path)); },
        py::arg("path"));

  m.def("dequantize_gguf", [](const at::Tensor& raw, uint32_t type, int64_t numel) {
          return quant::dequantize_gguf(raw, static_cast<io::GgmlType>(type), numel);
        }, py::arg("raw"), py::arg("ggml_type"), py::arg("numel"),
        "Decode whole ggml blocks (uint8 tensor, CPU or CUDA) into float32.");
  m.def("cuda_built", &quant::cuda_built);
}
