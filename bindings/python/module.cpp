// qinterp._C -- the pybind11 module. Thin: argument conversion and the GIL for Python hooks;
// everything else is the C++ library. Each area binds itself in its own file (bindings.hpp).
#include "bindings.hpp"
#include "qinterp/error.hpp"
#include "qinterp/version.hpp"

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "qinterp native module";
  m.attr("__version__") = qinterp::version();
  py::register_exception<qinterp::Error>(m, "Error", PyExc_RuntimeError);
  bind_analysis(m);
  bind_model(m);
  bind_ig(m);
  bind_quant(m);
  bind_text(m);
  bind_experiment(m);
}
