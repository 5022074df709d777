#include "qinterp/model/config.hpp"

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "qinterp/error.hpp"

namespace qinterp::model {

const char* to_string(RopeLayout r) { return r == RopeLayout::Interleaved ? "interleaved" : "half-split"; }

const char* to_string(Activation a) {
  switch (a) {
    case Activation::SiLU: return "silu";
    case Activation::GeluTanh: return "gelu_tanh";
    case Activation::Gelu: return "gelu";
    case Activation::Relu: return "relu";
  }
  return "?";
}

void ModelConfig::validate() const {
  auto bad = [&](const std::string& why) { fail(source, ": invalid model configuration: ", why, " (", summary(), ")"); };
  if (vocab_size <= 0 || hidden_size <= 0 || intermediate_size <= 0 || num_layers <= 0 || num_heads <= 0 ||
      num_kv_heads <= 0 || head_dim <= 0 || max_seq_len <= 0)
    bad("sizes must be positive");
  if (num_heads % num_kv_heads != 0) bad("num_heads must be a multiple of num_kv_heads");
  if (head_dim % 2 != 0) bad("head_dim must be even for rotary embeddings");
  if (rms_norm_eps <= 0 || rope_theta <= 0) bad("rms_norm_eps and rope_theta must be positive");
}

std::string ModelConfig::summary() const {
  std::ostringstream os;
  os << arch << ": layers=" << num_layers << " d_model=" << hidden_size << " d_mlp=" << intermediate_size
     << " heads=" << num_heads << " kv_heads=" << num_kv_heads << " head_dim=" << head_dim
     << " vocab=" << vocab_size << " ctx=" << max_seq_len << " rope=" << to_string(rope_layout)
     << "(theta=" << rope_theta << ") eps=" << rms_norm_eps << " act=" << to_string(activation)
     << (gated_mlp ? " gated" : "") << (tie_embeddings ? " tied" : "") << (qkv_bias ? " qkv_bias" : "");
  return os.str();
}

ModelConfig config_from_hf_json(const std::string& path) {
  std::ifstream in(path);
  if (!in) fail(path, ": cannot open config.json");
  nlohmann::json j;
  try {
    in >> j;
  } catch (const nlohmann::json::exception& e) {
    fail(path, ": not valid JSON (", e.what(), ")");
  }
  if (!j.is_object()) fail(path, ": not a JSON object");
  auto get_i = [&](const char* k, int64_t dflt, bool required) -> int64_t {
    if (!j.contains(k) || j[k].is_null()) {
      if (required) fail(path, ": missing \"", k, "\"");
      return dflt;
    }
    if (!j[k].is_number_integer()) fail(path, ": \"", k, "\" must be an integer");
    return j[k].get<int64_t>();
  };
  auto get_f = [&](const char* k, double dflt) -> double {
    if (!j.contains(k) || j[k].is_null()) return dflt;
    if (!j[k].is_number()) fail(path, ": \"", k, "\" must be a number");
    return j[k].get<double>();
  };
  ModelConfig c;
  c.source = path;
  c.format = "safetensors";
  c.arch = j.value("model_type", std::string("llama"));
  if (c.arch != "llama" && c.arch != "mistral" && c.arch != "qwen2")
    fail(path, ": model_type \"", c.arch, "\" is not supported (llama, mistral, qwen2)");
  c.vocab_size = get_i("vocab_size", 0, true);
  c.hidden_size = get_i("hidden_size", 0, true);
  c.intermediate_size = get_i("intermediate_size", 0, true);
  c.num_layers = get_i("num_hidden_layers", 0, true);
  c.num_heads = get_i("num_attention_heads", 0, true);
  c.num_kv_heads = get_i("num_key_value_heads", c.num_heads, false);
  c.head_dim = get_i("head_dim", c.num_heads > 0 ? c.hidden_size / c.num_heads : 0, false);
  c.max_seq_len = get_i("max_position_embeddings", 2048, false);
  c.rms_norm_eps = get_f("rms_norm_eps", 1e-6);
  c.rope_theta = get_f("rope_theta", 10000.0);
  // transformers >= 5 writes the rope settings as "rope_parameters" (rope_theta, rope_type, scaling);
  // older files have top-level rope_theta and an optional rope_scaling. Only plain rotary
  // embeddings are implemented: any other type is refused by name, never silently ignored.
  for (const char* key : {"rope_parameters", "rope_scaling"}) {
    if (!j.contains(key) || j[key].is_null()) continue;
    const auto& r = j[key];
    if (!r.is_object()) fail(path, ": \"", key, "\" must be an object");
    if (r.contains("rope_theta")) {
      if (!r["rope_theta"].is_number()) fail(path, ": \"", key, ".rope_theta\" must be a number");
      c.rope_theta = r["rope_theta"].get<double>();
    }
    const std::string type = r.contains("rope_type") && r["rope_type"].is_string() ? r["rope_type"].get<std::string>()
                             : r.contains("type") && r["type"].is_string()        ? r["type"].get<std::string>()
                                                                                    : "default";
    if (type != "default")
      fail(path, ": rope type \"", type, "\" (", key, ") is not supported; qinterp implements plain rotary embeddings");
  }
  c.tie_embeddings = j.value("tie_word_embeddings", false);
  c.qkv_bias = c.arch == "qwen2" || j.value("attention_bias", false);
  const std::string act = j.value("hidden_act", std::string("silu"));
  if (act == "silu" || act == "swish") c.activation = Activation::SiLU;
  else if (act == "gelu_new" || act == "gelu_pytorch_tanh") c.activation = Activation::GeluTanh;
  else if (act == "gelu") c.activation = Activation::Gelu;
  else if (act == "relu") c.activation = Activation::Relu;
  else fail(path, ": hidden_act \"", act, "\" is not supported");
  c.rope_layout = RopeLayout::HalfSplit;
  if (j.contains("bos_token_id") && j["bos_token_id"].is_number_integer()) c.bos_id = j["bos_token_id"].get<int64_t>();
  if (j.contains("eos_token_id") && j["eos_token_id"].is_number_integer()) c.eos_id = j["eos_token_id"].get<int64_t>();
  if (j.contains("eos_token_id") && j["eos_token_id"].is_array() && !j["eos_token_id"].empty())
    c.eos_id = j["eos_token_id"][0].get<int64_t>();
  if (j.contains("pad_token_id") && j["pad_token_id"].is_number_integer()) c.pad_id = j["pad_token_id"].get<int64_t>();
  c.validate();
  return c;
}

}  // namespace qinterp::model
