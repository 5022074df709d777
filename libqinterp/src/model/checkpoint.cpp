// Checkpoints of quantized models: one safetensors file with each quantized weight as its parts
// and the spec and configuration in the metadata (layout in qinterp/model/checkpoint.hpp).
#include "qinterp/model/checkpoint.hpp"

#include <ATen/ATen.h>

#include <map>
#include <memory>

#include "../io/torch_dtype.hpp"
#include "qinterp/error.hpp"
#include "qinterp/io/paths.hpp"
#include "qinterp/io/safetensors.hpp"

namespace qinterp::model {


void save_model(const Model& model, const std::string& dir) {
  if (!io::paths::exists(dir)) io::paths::make_dirs(dir);
  if (!io::paths::is_dir(dir)) fail("save_model: ", dir, " exists and is not a directory");
  std::map<std::string, std::string> meta;
  meta["format"] = "pt";
  meta["qinterp.quant"] = model.quant_spec().str();
  ModelConfig saved = model.config();
  saved.source.clear();  // where it was loaded from: the loader sets it on reading
  meta["qinterp.config"] = config_to_json(saved);
  std::vector<at::Tensor> keep;  // host copies stay alive until written
  std::vector<io::TensorView> views;
  for (const auto& p : model.named_parameters()) {
    at::Tensor t = p.tensor.to(at::kCPU).contiguous();
    keep.push_back(t);
    io::TensorView v;
    v.name = p.name;
    if (!io::to_io_dtype(t.scalar_type(), &v.dtype))
      fail("save_model: cannot store '", p.name, "' of dtype ", c10::toString(t.scalar_type()));
    v.shape = std::vector<int64_t>(t.sizes().begin(), t.sizes().end());
    v.data = t.data_ptr();
    v.nbytes = static_cast<size_t>(t.numel()) * t.element_size();
    views.push_back(v);
  }
  for (int64_t l = 0; l < model.config().num_layers; ++l)
    for (int k = 0; k < kNumLinear; ++k)
      if (auto q = model.qlinear(l, k)) {
        const std::string name = hf_name(*linear_role(model.config(), k), l);
        std::string shape;
        for (int64_t d : q->weight().shape) shape += (shape.empty() ? "" : ",") + std::to_string(d);
        meta["qinterp.shape." + name] = shape;
        meta["qinterp.dtype." + name] = c10::toString(q->weight().dtype);
      }
  io::write_safetensors(io::paths::join(dir, "model.safetensors"), views, meta);
}

// Used by the loader: a safetensors checkpoint written by save_model.
std::shared_ptr<Model> load_qinterp_checkpoint(const std::string& path, const io::SafetensorsCheckpoint& ck) {
  const auto meta = ck.metadata();
  auto entry = [&](const std::string& key) -> const std::string& {
    auto it = meta.find(key);
    if (it == meta.end()) fail(path, ": a qinterp checkpoint's metadata lacks '", key, "'; the file is damaged");
    return it->second;
  };
  const quant::QuantSpec spec = quant::parse_quant_spec(entry("qinterp.quant"));
  ModelConfig cfg = config_from_json(entry("qinterp.config"), path + ": metadata 'qinterp.config'");
  cfg.source = path;
  cfg.format = "qinterp";
  std::vector<NamedTensor> dense;
  std::map<std::string, std::vector<std::pair<std::string, at::Tensor>>> parts;
  for (const auto& name : ck.names()) {
    const io::TensorView& v = ck.get(name);
    const at::ScalarType st = io::to_scalar_type(v.dtype);
    if (st == at::ScalarType::Undefined)
      fail(path, ": tensor '", name, "' has unsupported dtype ", io::dtype_name(v.dtype));
    at::Tensor t = at::from_blob(const_cast<void*>(v.data), v.shape, st).clone();
    const size_t w = name.find(".weight.");
    if (w != std::string::npos) parts[name.substr(0, w + 7)].emplace_back(name.substr(w + 8), t);
    else dense.push_back({name, t});
  }
  std::map<std::string, quant::QuantizedTensor> qmap;
  for (auto& [name, pv] : parts) {
    auto sh = meta.find("qinterp.shape." + name);
    auto dt = meta.find("qinterp.dtype." + name);
    if (sh == meta.end() || dt == meta.end()) fail(path, ": quantized weight '", name, "' lacks its shape/dtype metadata");
    std::vector<int64_t> shape;
    size_t pos = 0;
    const std::string& s = sh->second;
    while (pos <= s.size()) {
      const size_t c = s.find(',', pos);
      const std::string tok = s.substr(pos, c == std::string::npos ? std::string::npos : c - pos);
      char* end = nullptr;
      const long long d = std::strtoll(tok.c_str(), &end, 10);
      if (tok.empty() || *end || d < 0) fail(path, ": bad shape metadata '", s, "' for ", name);
      shape.push_back(d);
      if (c == std::string::npos) break;
      pos = c + 1;
    }
    const at::ScalarType odt = dt->second == "Half" ? at::kHalf : dt->second == "BFloat16" ? at::kBFloat16 : at::kFloat;
    qmap.emplace(name, quant::QuantizedTensor::from_parts(spec, shape, odt, pv, path + ": " + name));
  }
  return std::make_shared<Model>(cfg, std::move(dense), std::move(qmap));
}

}  // namespace qinterp::model
