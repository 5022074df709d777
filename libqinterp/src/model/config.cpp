#include "qinterp/model/config.hpp"

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <type_traits>

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

namespace {

// Every field of ModelConfig, once: config_to_json / config_from_json read and write exactly
// these. Adding a field to ModelConfig without adding it here fails the static_assert below.
template <class C, class F>
void for_each_field(C& c, F&& f) {
  f("arch", c.arch), f("source", c.source), f("format", c.format);
  f("vocab_size", c.vocab_size), f("hidden_size", c.hidden_size), f("intermediate_size", c.intermediate_size);
  f("num_layers", c.num_layers), f("num_heads", c.num_heads), f("num_kv_heads", c.num_kv_heads);
  f("head_dim", c.head_dim), f("max_seq_len", c.max_seq_len);
  f("rms_norm_eps", c.rms_norm_eps), f("rope_theta", c.rope_theta);
  f("rope_layout", c.rope_layout), f("activation", c.activation);
  f("gated_mlp", c.gated_mlp), f("tie_embeddings", c.tie_embeddings), f("qkv_bias", c.qkv_bias);
  f("bos_id", c.bos_id), f("eos_id", c.eos_id), f("pad_id", c.pad_id);
}
#if defined(__x86_64__) && defined(__GLIBCXX__)
static_assert(sizeof(ModelConfig) == 216, "ModelConfig changed: list the new field in for_each_field, then update this size");
#endif

template <class E, size_t N>
bool enum_from(const std::string& s, const E (&all)[N], E* out) {
  for (E e : all)
    if (s == to_string(e)) return *out = e, true;
  return false;
}

}  // namespace

std::string config_to_json(const ModelConfig& c) {
  nlohmann::json j = nlohmann::json::object();
  for_each_field(c, [&](const char* k, const auto& v) {
    using T = std::decay_t<decltype(v)>;
    if constexpr (std::is_enum_v<T>) j[k] = to_string(v);
    else j[k] = v;
  });
  return j.dump();
}

ModelConfig config_from_json(const std::string& text, const std::string& where) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail(where, ": the model configuration is not valid JSON (", e.what(), ")");
  }
  if (!j.is_object()) fail(where, ": the model configuration is not a JSON object");
  ModelConfig c;
  size_t known = 0;
  for_each_field(c, [&](const char* k, auto& v) {
    using T = std::decay_t<decltype(v)>;
    if (!j.contains(k)) {
      if (std::string(k) == "source" || std::string(k) == "format") return;
      fail(where, ": the model configuration lacks \"", k, "\"");
    }
    ++known;
    const auto& x = j[k];
    bool ok = true;
    if constexpr (std::is_same_v<T, std::string>) {
      ok = x.is_string() && (v = x.get<std::string>(), true);
    } else if constexpr (std::is_same_v<T, bool>) {
      ok = x.is_boolean() && (v = x.get<bool>(), true);
    } else if constexpr (std::is_same_v<T, int64_t>) {
      ok = x.is_number_integer() && (v = x.get<int64_t>(), true);
    } else if constexpr (std::is_same_v<T, double>) {
      ok = x.is_number() && (v = x.get<double>(), true);
    } else if constexpr (std::is_same_v<T, RopeLayout>) {
      ok = x.is_string() && enum_from(x.get<std::string>(), {RopeLayout::Interleaved, RopeLayout::HalfSplit}, &v);
    } else {
      static_assert(std::is_same_v<T, Activation>);
      ok = x.is_string() && enum_from(x.get<std::string>(),
                                      {Activation::SiLU, Activation::GeluTanh, Activation::Gelu, Activation::Relu}, &v);
    }
    if (!ok) fail(where, ": the model configuration's \"", k, "\" has a bad value ", x.dump());
  });
  if (known != j.size())
    for (const auto& [k, v] : j.items()) {
      bool listed = false;
      for_each_field(c, [&](const char* name, const auto&) { listed = listed || k == name; });
      if (!listed) fail(where, ": the model configuration has an unknown field \"", k, "\" (written by a newer qinterp?)");
    }
  return c;
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
