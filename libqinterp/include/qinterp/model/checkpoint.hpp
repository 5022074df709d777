// Saving a (quantized) model and reading it back.
#pragma once
#include <memory>
#include <string>

#include "qinterp/io/safetensors.hpp"
#include "qinterp/model/model.hpp"

namespace qinterp::model {

// Writes dir/model.safetensors: the dense tensors, each quantized weight as its parts
// ("<weight>.qdata", ...), and metadata (qinterp.quant = the spec, qinterp.config = the model's
// configuration, qinterp.shape.<weight> / qinterp.dtype.<weight>). load_model(dir) reads it back.
void save_model(const Model& model, const std::string& dir);

// Reads a checkpoint written by save_model; load_model calls it for a safetensors file whose
// metadata holds qinterp.quant. Refuses parts that do not fit the saved spec and shape.
std::shared_ptr<Model> load_qinterp_checkpoint(const std::string& path, const io::SafetensorsCheckpoint& ck);

}  // namespace qinterp::model
