// Bindings: tokenizers.
#include <pybind11/functional.h>
#include <pybind11/stl.h>

#include "bindings.hpp"
#include "qinterp/qinterp.hpp"

namespace py = pybind11;
using namespace qinterp;

void bind_text(py::module_& m) {
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
}
