// What the binding files share: the model type Python sees, each area's bind function (called
// by module.cpp in this order), and small conversions.
#pragma once
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/utils/pybind.h>

#include <memory>
#include <optional>

#include "qinterp/model/hooks.hpp"
#include "qinterp/model/model.hpp"

// A model as Python sees it: the C++ model plus the hooks attached to it.
struct PyModel {
  std::shared_ptr<qinterp::model::Model> m;
  std::shared_ptr<qinterp::model::Hooks> hooks = std::make_shared<qinterp::model::Hooks>();
};

void bind_analysis(pybind11::module_& m);    // analysis.cpp: the accumulators
void bind_model(pybind11::module_& m);       // model.cpp: Hooks, Model, load_model, perplexity, speed
void bind_ig(pybind11::module_& m);          // analysis.cpp: IntegratedGradients (needs Model)
void bind_quant(pybind11::module_& m);       // quant.cpp: QuantizedTensor and the format functions
void bind_text(pybind11::module_& m);        // text.cpp: Tokenizer
void bind_experiment(pybind11::module_& m);  // experiment.cpp: run, report, tasks

// analysis.cpp: perplexity of ids as the dict Model.perplexity returns.
pybind11::dict perplexity_result(qinterp::model::Model& model, const at::Tensor& ids, int64_t context, int64_t stride,
                                 bool progress);

inline at::Tensor opt_tensor(const std::optional<at::Tensor>& t) { return t ? *t : at::Tensor(); }
