// Bindings: quantized tensors and the format functions (qinterp.quant wraps these).
#include <pybind11/functional.h>
#include <pybind11/stl.h>

#include "bindings.hpp"
#include "qinterp/qinterp.hpp"

namespace py = pybind11;
using namespace qinterp;

void bind_quant(py::module_& m) {
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
  m.def("gemv_dense", &quant::gemv_dense, py::arg("x"), py::arg("weight"));
  m.def("wide_linear", [](const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& bias) {
          return quant::wide_linear(x, w, opt_tensor(bias));
        }, py::arg("x"), py::arg("weight"), py::arg("bias") = py::none());
  m.def("exact_q8_blocks", [](const at::Tensor& w) -> py::object {
          const quant::Q8Blocks b = quant::exact_q8_blocks(w);
          if (!b.defined()) return py::none();
          return py::make_tuple(b.q, b.d);
        }, py::arg("weight"));
  m.def("gemv_q8_blocks", [](const at::Tensor& x, const at::Tensor& q, const at::Tensor& d) {
          quant::Q8Blocks b;
          b.q = q;
          b.d = d;
          return quant::gemv_q8_blocks(x, b);
        }, py::arg("x"), py::arg("q"), py::arg("d"));
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
  m.def("dequantize_gguf", [](const at::Tensor& raw, uint32_t type, int64_t numel) {
          return quant::dequantize_gguf(raw, static_cast<io::GgmlType>(type), numel);
        }, py::arg("raw"), py::arg("ggml_type"), py::arg("numel"),
        "Decode whole ggml blocks (uint8 tensor, CPU or CUDA) into float32.");
  m.def("cuda_built", &quant::cuda_built);
}
