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

const char* to_string(NormKind n) {
  switch (n) {
    case NormKind::RMS: return "rms";
    case NormKind::LayerNorm: return "layernorm";
    case NormKind::RMSOnePlus: return "rms_one_plus";
  }
  return "?";
}

const char* to_string(RopeScaling r) {
  switch (r) {
    case RopeScaling::None: return "none";
    case RopeScaling::Linear: return "linear";
    case RopeScaling::Llama3: return "llama3";
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
  if (rotary_dim < 0 || rotary_dim > head_dim || rotary_dim % 2 != 0)
    bad("rotary_dim must be even and within [0, head_dim]");
  if (sliding_window < 0) bad("sliding_window must be >= 0 (0: none)");
  if (!layer_types.empty()) {
    if (static_cast<int64_t>(layer_types.size()) != num_layers) bad("layer_types must have one letter per layer");
    if (layer_types.find_first_not_of("sf") != std::string::npos) bad("layer_types letters must be 's' or 'f'");
    if (layer_types.find('s') != std::string::npos && sliding_window <= 0) bad("sliding layers need a sliding_window");
  }
  if (rope_theta_local < 0 || query_pre_attn_scalar < 0 || final_logit_softcap < 0)
    bad("rope_theta_local, query_pre_attn_scalar and final_logit_softcap must be >= 0 (0: not used)");
  if (rope_scaling != RopeScaling::None && !(rope_factor > 0)) bad("the rope scaling factor must be positive");
  if (rope_scaling == RopeScaling::Llama3 &&
      (rope_original_context <= 0 || !(rope_low_freq_factor > 0) || !(rope_high_freq_factor > rope_low_freq_factor)))
    bad("llama3 rope scaling needs original_max_position_embeddings > 0 and high_freq_factor > low_freq_factor > 0");
}

std::vector<std::string> non_llama_settings(const ModelConfig& c) {
  const ModelConfig d;  // a plain Llama decoder
  std::vector<std::string> out;
  auto num = [](double v) {
    std::ostringstream os;
    os << v;
    return os.str();
  };
  if (c.rope_layout != d.rope_layout) out.push_back(std::string("rope_layout=") + to_string(c.rope_layout));
  if (c.rotary_dim != 0 && c.rotary_dim != c.head_dim)
    out.push_back("rotary_dim=" + std::to_string(c.rotary_dim) + " of " + std::to_string(c.head_dim));
  if (c.rope_scaling != d.rope_scaling) {
    std::string s = std::string("rope_scaling=") + to_string(c.rope_scaling) + "(factor=" + num(c.rope_factor);
    if (c.rope_scaling == RopeScaling::Llama3)
      s += ", low_freq_factor=" + num(c.rope_low_freq_factor) + ", high_freq_factor=" + num(c.rope_high_freq_factor) +
           ", original_context=" + std::to_string(c.rope_original_context);
    out.push_back(s + ")");
  }
  if (c.sliding_window) out.push_back("sliding_window=" + std::to_string(c.sliding_window));
  if (!c.layer_types.empty()) out.push_back("layer_types=" + c.layer_types);
  if (c.rope_theta_local > 0) out.push_back("rope_theta_local=" + num(c.rope_theta_local));
  if (c.norm != d.norm) out.push_back(std::string("norm=") + to_string(c.norm));
  if (c.parallel_block) out.push_back("parallel_block=true");
  if (c.sandwich_norms) out.push_back("sandwich_norms=true");
  if (c.qk_norm) out.push_back("qk_norm=true");
  if (c.scale_embeddings) out.push_back("scale_embeddings=true");
  if (c.query_pre_attn_scalar > 0) out.push_back("query_pre_attn_scalar=" + num(c.query_pre_attn_scalar));
  if (c.final_logit_softcap > 0) out.push_back("final_logit_softcap=" + num(c.final_logit_softcap));
  if (c.activation != d.activation) out.push_back(std::string("activation=") + to_string(c.activation));
  if (c.gated_mlp != d.gated_mlp) out.push_back("gated_mlp=false");
  if (c.qkv_bias) out.push_back("qkv_bias=true");
  if (c.attn_out_bias) out.push_back("attn_out_bias=true");
  if (c.mlp_bias) out.push_back("mlp_bias=true");
  if (c.lm_head_bias) out.push_back("lm_head_bias=true");
  if (c.tie_embeddings) out.push_back("tie_embeddings=true");
  return out;
}

std::string ModelConfig::summary() const {
  std::ostringstream os;
  os << arch << ": layers=" << num_layers << " d_model=" << hidden_size << " d_mlp=" << intermediate_size
     << " heads=" << num_heads << " kv_heads=" << num_kv_heads << " head_dim=" << head_dim
     << " vocab=" << vocab_size << " ctx=" << max_seq_len << " theta=" << rope_theta << " eps=" << rms_norm_eps;
  for (const std::string& s : non_llama_settings(*this)) os << " " << s;
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
  // Added after the first checkpoints were written: may be absent (config_from_json).
  f("rotary_dim", c.rotary_dim), f("rope_scaling", c.rope_scaling), f("rope_factor", c.rope_factor);
  f("rope_low_freq_factor", c.rope_low_freq_factor), f("rope_high_freq_factor", c.rope_high_freq_factor);
  f("rope_original_context", c.rope_original_context), f("sliding_window", c.sliding_window);
  f("norm", c.norm), f("parallel_block", c.parallel_block), f("attn_out_bias", c.attn_out_bias);
  f("mlp_bias", c.mlp_bias), f("lm_head_bias", c.lm_head_bias);
  f("layer_types", c.layer_types), f("rope_theta_local", c.rope_theta_local), f("sandwich_norms", c.sandwich_norms);
  f("qk_norm", c.qk_norm), f("scale_embeddings", c.scale_embeddings);
  f("query_pre_attn_scalar", c.query_pre_attn_scalar), f("final_logit_softcap", c.final_logit_softcap);
}
bool optional_field(const std::string& k) {
  static const char* opt[] = {"source", "format", "rotary_dim", "rope_scaling", "rope_factor", "rope_low_freq_factor",
                              "rope_high_freq_factor", "rope_original_context", "sliding_window", "norm",
                              "parallel_block", "attn_out_bias", "mlp_bias", "lm_head_bias", "layer_types",
                              "rope_theta_local", "sandwich_norms", "qk_norm", "scale_embeddings",
                              "query_pre_attn_scalar", "final_logit_softcap"};
  for (const char* o : opt)
    if (k == o) return true;
  return false;
}
#if defined(__x86_64__) && defined(__GLIBCXX__)
static_assert(sizeof(ModelConfig) == 344, "ModelConfig changed: list the new field in for_each_field, then update this size");
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
      if (optional_field(k)) return;
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
    } else if constexpr (std::is_same_v<T, NormKind>) {
      ok = x.is_string() && enum_from(x.get<std::string>(), {NormKind::RMS, NormKind::LayerNorm, NormKind::RMSOnePlus}, &v);
    } else if constexpr (std::is_same_v<T, RopeScaling>) {
      ok = x.is_string() &&
           enum_from(x.get<std::string>(), {RopeScaling::None, RopeScaling::Linear, RopeScaling::Llama3}, &v);
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

namespace {

ModelConfig hf_config(const std::string& path) {
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
  auto get_b = [&](const char* k, bool dflt) -> bool {
    if (!j.contains(k) || j[k].is_null()) return dflt;
    if (!j[k].is_boolean()) fail(path, ": \"", k, "\" must be true or false, not ", j[k].dump());
    return j[k].get<bool>();
  };
  auto get_s = [&](const char* k, const std::string& dflt) -> std::string {
    if (!j.contains(k) || j[k].is_null()) return dflt;
    if (!j[k].is_string()) fail(path, ": \"", k, "\" must be a string, not ", j[k].dump());
    return j[k].get<std::string>();
  };
  // One letter per layer ('s' sliding, 'f' full) from "layer_types", or "" when absent.
  auto layer_letters = [&]() {
    std::string out;
    if (!j.contains("layer_types") || j["layer_types"].is_null()) return out;
    if (!j["layer_types"].is_array()) fail(path, ": \"layer_types\" must be a list");
    for (const auto& t : j["layer_types"]) {
      const std::string k = t.is_string() ? t.get<std::string>() : "";
      if (k == "sliding_attention") out += 's';
      else if (k == "full_attention") out += 'f';
      else fail(path, ": layer type ", t.dump(), " is not supported (sliding_attention, full_attention)");
    }
    return out;
  };
  ModelConfig c;
  c.source = path;
  c.format = "safetensors";
  // Required, as in transformers: a Mistral file without it read as Llama would lose its window.
  c.arch = get_s("model_type", "");
  if (c.arch.empty()) fail(path, ": missing \"model_type\" (llama, mistral, qwen2, phi, gemma3_text)");
  if (c.arch == "gemma3")
    fail(path, ": model_type \"gemma3\" is Gemma 3's image-text model; qinterp reads the text model (gemma3_text, "
         "Gemma3ForCausalLM)");
  if (c.arch == "gemma3_text") c.arch = "gemma3";
  if (c.arch != "llama" && c.arch != "mistral" && c.arch != "qwen2" && c.arch != "phi" && c.arch != "gemma3")
    fail(path, ": model_type \"", c.arch, "\" is not supported (llama, mistral, qwen2, phi, gemma3_text)");
  const bool phi = c.arch == "phi", gemma = c.arch == "gemma3";
  c.vocab_size = get_i("vocab_size", 0, true);
  c.hidden_size = get_i("hidden_size", 0, true);
  c.intermediate_size = get_i("intermediate_size", 0, true);
  c.num_layers = get_i("num_hidden_layers", 0, true);
  c.num_heads = get_i("num_attention_heads", 0, true);
  c.num_kv_heads = get_i("num_key_value_heads", c.num_heads, false);
  c.head_dim = get_i("head_dim", c.num_heads > 0 ? c.hidden_size / c.num_heads : 0, false);
  c.max_seq_len = get_i("max_position_embeddings", 2048, false);
  c.rms_norm_eps = phi ? get_f("layer_norm_eps", 1e-5) : get_f("rms_norm_eps", 1e-6);
  c.rope_theta = get_f("rope_theta", 10000.0);
  double partial_rotary = phi ? get_f("partial_rotary_factor", 0.5) : 1.0;
  // transformers >= 5 writes the rope settings as "rope_parameters" (rope_theta, rope_type, scaling,
  // partial_rotary_factor); older files have top-level keys and an optional rope_scaling. A rope
  // type qinterp does not implement is refused by name, never silently ignored.
  // Gemma 3 keeps one set per layer type: "full_attention" (the rope above) and
  // "sliding_attention" (plain rope with its own base); older files say rope_local_base_freq.
  nlohmann::json rope_sets = nlohmann::json::object();
  for (const char* key : {"rope_parameters", "rope_scaling"})
    if (j.contains(key) && !j[key].is_null()) rope_sets[key] = j[key];
  if (gemma) {
    c.rope_theta_local = get_f("rope_local_base_freq", 10000.0);
    if (rope_sets.contains("rope_parameters") && rope_sets["rope_parameters"].is_object() &&
        rope_sets["rope_parameters"].contains("full_attention")) {
      const nlohmann::json both = rope_sets["rope_parameters"];
      rope_sets["rope_parameters"] = both["full_attention"];
      if (both.contains("sliding_attention") && both["sliding_attention"].is_object()) {
        const auto& sl = both["sliding_attention"];
        const nlohmann::json type = sl.contains("rope_type") ? sl["rope_type"] : nlohmann::json("default");
        if (type != "default") fail(path, ": rope type ", type.dump(), " on sliding layers is not supported");
        if (sl.contains("rope_theta") && sl["rope_theta"].is_number()) c.rope_theta_local = sl["rope_theta"].get<double>();
      }
    }
  }
  for (const char* key : {"rope_parameters", "rope_scaling"}) {
    if (!rope_sets.contains(key)) continue;
    const auto& r = rope_sets[key];
    if (!r.is_object()) fail(path, ": \"", key, "\" must be an object");
    auto num = [&](const char* k, bool required, double dflt) -> double {
      if (!r.contains(k) || r[k].is_null()) {
        if (required) fail(path, ": \"", key, "\" lacks \"", k, "\"");
        return dflt;
      }
      if (!r[k].is_number()) fail(path, ": \"", key, ".", k, "\" must be a number");
      return r[k].get<double>();
    };
    c.rope_theta = num("rope_theta", false, c.rope_theta);
    partial_rotary = num("partial_rotary_factor", false, partial_rotary);
    const std::string type = r.contains("rope_type") && r["rope_type"].is_string() ? r["rope_type"].get<std::string>()
                             : r.contains("type") && r["type"].is_string()        ? r["type"].get<std::string>()
                                                                                    : "default";
    if (type == "default") continue;
    if (type == "linear") {
      c.rope_scaling = RopeScaling::Linear;
      c.rope_factor = num("factor", true, 1.0);
    } else if (type == "llama3") {
      c.rope_scaling = RopeScaling::Llama3;
      c.rope_factor = num("factor", true, 1.0);
      c.rope_low_freq_factor = num("low_freq_factor", true, 1.0);
      c.rope_high_freq_factor = num("high_freq_factor", true, 4.0);
      c.rope_original_context = static_cast<int64_t>(num("original_max_position_embeddings", true, 0.0));
    } else {
      fail(path, ": rope type \"", type, "\" (", key, ") is not supported; qinterp implements default, linear and llama3");
    }
  }
  // As transformers: int(head_dim * factor) dims rotate, in Phi only; the Llama-family models there
  // rotate every dimension whatever the file says.
  if (phi) {
    if (!(partial_rotary > 0 && partial_rotary <= 1)) fail(path, ": partial_rotary_factor must be in (0, 1]");
    c.rotary_dim = static_cast<int64_t>(static_cast<double>(c.head_dim) * partial_rotary);
    if (c.rotary_dim == c.head_dim) c.rotary_dim = 0;
  }
  if (c.arch == "mistral") {
    // With "layer_types" transformers runs a Mistral checkpoint as Ministral: the window on the
    // sliding layers only.
    if (j.contains("sliding_window") && !j["sliding_window"].is_null()) c.sliding_window = get_i("sliding_window", 0, false);
    c.layer_types = layer_letters();
  }
  if (gemma) {
    // One letter per layer from layer_types, or from the older sliding_window_pattern (every
    // pattern-th layer global).
    c.sliding_window = get_i("sliding_window", 4096, false);
    c.layer_types = layer_letters();
    if (c.layer_types.empty()) {
      const int64_t pattern = get_i("sliding_window_pattern", 6, false);
      for (int64_t l = 0; l < c.num_layers; ++l) c.layer_types += (pattern > 0 && (l + 1) % pattern == 0) ? 'f' : 's';
    }
    if (c.layer_types.find('s') == std::string::npos) c.rope_theta_local = 0;
    if (j.contains("attn_logit_softcapping") && !j["attn_logit_softcapping"].is_null())
      fail(path, ": attn_logit_softcapping is not supported");
    if (get_b("use_bidirectional_attention", false)) fail(path, ": use_bidirectional_attention is not supported");
    c.norm = NormKind::RMSOnePlus;
    c.sandwich_norms = c.qk_norm = c.scale_embeddings = true;
    c.query_pre_attn_scalar = get_f("query_pre_attn_scalar", static_cast<double>(c.head_dim));
    c.final_logit_softcap = get_f("final_logit_softcapping", 0.0);
  }
  if (c.arch == "qwen2" && (get_b("use_sliding_window", false) || layer_letters().find('s') != std::string::npos))
    fail(path, ": use_sliding_window and sliding layer_types (Qwen2's windowed layers) are not supported");
  c.tie_embeddings = get_b("tie_word_embeddings", gemma);
  if (phi) {
    if (get_b("qk_layernorm", false)) fail(path, ": qk_layernorm (Phi's q/k norms) is not supported");
    c.norm = NormKind::LayerNorm;
    c.parallel_block = true;
    c.gated_mlp = false;
    c.qkv_bias = c.attn_out_bias = c.mlp_bias = c.lm_head_bias = true;
  } else {
    // Llama's attention_bias puts a bias on o_proj too; Qwen2 has q/k/v biases only.
    const bool attention_bias = get_b("attention_bias", false);
    c.qkv_bias = c.arch == "qwen2" || attention_bias;
    c.attn_out_bias = attention_bias;
    c.mlp_bias = get_b("mlp_bias", false);
  }
  // Gemma names its activation hidden_activation, the others hidden_act; transformers reads only
  // the one its model names.
  const std::string act = gemma ? get_s("hidden_activation", "gelu_pytorch_tanh") : get_s("hidden_act", phi ? "gelu_new" : "silu");
  if (act == "silu" || act == "swish") c.activation = Activation::SiLU;
  else if (act == "gelu_new" || act == "gelu_pytorch_tanh") c.activation = Activation::GeluTanh;
  else if (act == "gelu") c.activation = Activation::Gelu;
  else if (act == "relu") c.activation = Activation::Relu;
  else fail(path, ": hidden_act \"", act, "\" is not supported");
  c.rope_layout = RopeLayout::HalfSplit;
  if (j.contains("bos_token_id") && j["bos_token_id"].is_number_integer()) c.bos_id = j["bos_token_id"].get<int64_t>();
  if (j.contains("eos_token_id") && j["eos_token_id"].is_number_integer()) c.eos_id = j["eos_token_id"].get<int64_t>();
  if (j.contains("eos_token_id") && j["eos_token_id"].is_array() && !j["eos_token_id"].empty()) {
    if (!j["eos_token_id"][0].is_number_integer()) fail(path, ": \"eos_token_id\" must hold token ids");
    c.eos_id = j["eos_token_id"][0].get<int64_t>();
  }
  if (j.contains("pad_token_id") && j["pad_token_id"].is_number_integer()) c.pad_id = j["pad_token_id"].get<int64_t>();
  c.validate();
  return c;
}

}  // namespace

ModelConfig config_from_hf_json(const std::string& path) {
  try {
    return hf_config(path);
  } catch (const nlohmann::json::exception& e) {  // a value of a type the checks above did not expect
    fail(path, ": a value of the wrong type (", e.what(), ")");
  }
}

}  // namespace qinterp::model
