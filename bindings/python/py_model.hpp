// The Python-side model type, shared by the binding files.
#pragma once
#include <memory>

#include "qinterp/model/hooks.hpp"
#include "qinterp/model/model.hpp"

// A model as Python sees it: the C++ model plus the hooks attached to it.
struct PyModel {
  std::shared_ptr<qinterp::model::Model> m;
  std::shared_ptr<qinterp::model::Hooks> hooks = std::make_shared<qinterp::model::Hooks>();
};
