// load_model: reads llama2.c, GGUF and Hugging Face safetensors checkpoints into one Model.
// Every format is mapped onto the Hugging Face tensor names the Model constructor expects.
#include <ATen/ATen.h>

#include <map>

#include "qinterp/device.hpp"
#include "qinterp/error.hpp"
#include "qinterp/io/gguf.hpp"
#include "qinterp/io/llama2c.hpp"
#include "qinterp/io/safetensors.hpp"
#include "qinterp/model/checkpoint.hpp"
#include "qinterp/model/model.hpp"
#include "qinterp/model/weights.hpp"
#include "qinterp/model/quantize.hpp"
#include "qinterp/quant/dequantize.hpp"
#include "qinterp/io/paths.hpp"
#include "../io/torch_dtype.hpp"

namespace qinterp::model {

namespace {

using io::paths::ends_with;

// Copies `shape` fp32 values starting at p into a new tensor.
at::Tensor copy_f32(const float* p, std::vector<int64_t> shape) {
  return at::from_blob(const_cast<float*>(p), shape, at::kFloat).clone();
}

std::shared_ptr<Model> from_llama2c(const std::string& path) {
  io::Llama2cFile f(path);
  const io::Llama2cConfig& c = f.config();
  ModelConfig cfg;
  cfg.arch = "llama2c";
  cfg.source = path;
  cfg.format = "llama2c";
  cfg.vocab_size = c.vocab_size;
  cfg.hidden_size = c.dim;
  cfg.intermediate_size = c.hidden_dim;
  cfg.num_layers = c.n_layers;
  cfg.num_heads = c.n_heads;
  cfg.num_kv_heads = c.n_kv_heads;
  cfg.head_dim = c.dim / c.n_heads;
  cfg.max_seq_len = c.seq_len;
  cfg.rms_norm_eps = 1e-5;  // run.c's rmsnorm
  cfg.rope_theta = 10000.0;
  cfg.rope_layout = RopeLayout::Interleaved;
  cfg.tie_embeddings = c.shared_classifier;
  cfg.bos_id = 1;
  cfg.eos_id = 2;
  const int64_t D = c.dim, I = c.hidden_dim, KVD = cfg.head_dim * c.n_kv_heads;
  std::vector<NamedTensor> w;
  w.push_back({"model.embed_tokens.weight", copy_f32(f.token_embedding(), {c.vocab_size, D})});
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    w.push_back({p + "input_layernorm.weight", copy_f32(f.rms_att() + l * D, {D})});
    w.push_back({p + "self_attn.q_proj.weight", copy_f32(f.wq() + l * D * D, {D, D})});
    w.push_back({p + "self_attn.k_proj.weight", copy_f32(f.wk() + l * KVD * D, {KVD, D})});
    w.push_back({p + "self_attn.v_proj.weight", copy_f32(f.wv() + l * KVD * D, {KVD, D})});
    w.push_back({p + "self_attn.o_proj.weight", copy_f32(f.wo() + l * D * D, {D, D})});
    w.push_back({p + "post_attention_layernorm.weight", copy_f32(f.rms_ffn() + l * D, {D})});
    w.push_back({p + "mlp.gate_proj.weight", copy_f32(f.w1() + l * I * D, {I, D})});
    w.push_back({p + "mlp.down_proj.weight", copy_f32(f.w2() + l * D * I, {D, I})});
    w.push_back({p + "mlp.up_proj.weight", copy_f32(f.w3() + l * I * D, {I, D})});
  }
  w.push_back({"model.norm.weight", copy_f32(f.rms_final(), {D})});
  if (!c.shared_classifier) w.push_back({"lm_head.weight", copy_f32(f.wcls(), {c.vocab_size, D})});
  return std::make_shared<Model>(cfg, std::move(w));
}

// Weights must be floating point: F32, F16, BF16 (F64 is read and cast).
at::ScalarType torch_dtype(io::DType t, const std::string& file, const std::string& name) {
  const at::ScalarType st = io::to_scalar_type(t);
  if (st == at::kFloat || st == at::kHalf || st == at::kBFloat16 || st == at::kDouble) return st;
  fail(file, ": tensor '", name, "' has dtype ", io::dtype_name(t), "; weights must be F32, F16 or BF16");
}

std::shared_ptr<Model> from_safetensors(const std::string& path) {
  const std::string dir = io::paths::is_dir(path) ? path : io::paths::parent(path);
  io::SafetensorsCheckpoint ck(path);
  if (ck.metadata().count("qinterp.quant")) return load_qinterp_checkpoint(path, ck);  // written by save_model
  const std::string cfg_path = io::paths::join(dir, "config.json");
  if (!io::paths::exists(cfg_path)) fail(path, ": no config.json beside the safetensors weights (looked in ", dir, ")");
  ModelConfig cfg = config_from_hf_json(cfg_path);
  cfg.source = path;
  std::vector<NamedTensor> w;
  // As transformers (5.x) does: a checkpoint's lm_head.weight is used even where the config says
  // tie_word_embeddings (some exports write the tied copy; where it differs, it is what runs); a
  // checkpoint without one uses the embedding whatever the config says.
  cfg.tie_embeddings = !ck.has("lm_head.weight");
  for (const auto& name : ck.names()) {
    if (io::paths::ends_with(name, ".rotary_emb.inv_freq")) continue;  // a buffer, recomputed from the config
    const io::TensorView& v = ck.get(name);
    const at::ScalarType st = torch_dtype(v.dtype, path, name);
    w.push_back({name, at::from_blob(const_cast<void*>(v.data), v.shape, st).clone()});
  }
  return std::make_shared<Model>(cfg, std::move(w));
}

std::shared_ptr<Model> from_gguf(const std::string& path) {
  io::GgufFile f(path);
  const std::string arch = f.has("general.architecture") ? f.get_string("general.architecture") : "";
  if (arch != "llama" && arch != "qwen2" && arch != "gemma3")
    fail(path, ": GGUF architecture '", arch, "' is not supported (llama, qwen2, gemma3)");
  const bool gemma = arch == "gemma3";
  const std::string k = arch + ".";
  ModelConfig cfg;
  cfg.arch = arch;
  cfg.source = path;
  cfg.format = "gguf";
  cfg.num_layers = f.get_int(k + "block_count");
  cfg.hidden_size = f.get_int(k + "embedding_length");
  cfg.intermediate_size = f.get_int(k + "feed_forward_length");
  cfg.num_heads = f.get_int(k + "attention.head_count");
  cfg.num_kv_heads = f.get_int(k + "attention.head_count_kv", cfg.num_heads);
  // As llama.cpp: the head size is key_length, else d_model / heads; rope.dimension_count is how
  // many of its dimensions rotate (checked below).
  cfg.head_dim = f.get_int(k + "attention.key_length", cfg.num_heads > 0 ? cfg.hidden_size / cfg.num_heads : 0);
  if (f.has(k + "attention.value_length") && f.get_int(k + "attention.value_length") != cfg.head_dim)
    fail(path, ": attention.value_length differs from key_length; qinterp's heads have one size");
  // Settings llama.cpp honours that qinterp does not implement: refused, never run as if absent.
  if (f.has(k + "rope.dimension_count") && f.get_int(k + "rope.dimension_count") != cfg.head_dim)
    fail(path, ": rope.dimension_count ", f.get_int(k + "rope.dimension_count"), " differs from the head size ",
         cfg.head_dim, "; partial rotary embeddings are not supported in GGUF files");
  if (f.has(k + "expert_count") && f.get_int(k + "expert_count") > 0)
    fail(path, ": a mixture-of-experts model (", k, "expert_count ", f.get_int(k + "expert_count"), ") is not supported");
  for (const char* cap : {"attn_logit_softcapping", "final_logit_softcapping"})
    if (f.has(k + cap)) fail(path, ": ", k, cap, " (Gemma 2's soft-capping) is not supported in GGUF files");
  cfg.max_seq_len = f.get_int(k + "context_length", 2048);
  cfg.rope_theta = f.get_float(k + "rope.freq_base", 10000.0);
  cfg.rms_norm_eps = f.get_float(k + "attention.layer_norm_rms_epsilon", 1e-5);
  if (f.has(k + "rope.scaling.type")) {
    const std::string type = f.get_string(k + "rope.scaling.type");
    if (type == "linear") {
      cfg.rope_scaling = RopeScaling::Linear;
      cfg.rope_factor = f.get_float(k + "rope.scaling.factor", 0.0);  // validate() refuses 0
    } else if (type != "none") {
      fail(path, ": rope scaling type '", type, "' is not supported in GGUF files (linear)");
    }
  }
  if (gemma) {
    // What llama.cpp assumes for Gemma 3 where the file says nothing: every sixth layer global, the
    // others sliding with rope base 10000, and the score scale below.
    cfg.sliding_window = f.get_int(k + "attention.sliding_window");
    for (int64_t l = 0; l < cfg.num_layers; ++l) cfg.layer_types += (l + 1) % 6 == 0 ? 'f' : 's';
    cfg.rope_theta_local = 10000.0;
    cfg.norm = NormKind::RMSOnePlus;
    cfg.sandwich_norms = cfg.qk_norm = cfg.scale_embeddings = true;
    // Gemma 3 27B (62 layers) scales by d_model / heads (168), not its head size (128), as its
    // config.json says and llama.cpp hard-codes; every other size by the head size.
    cfg.query_pre_attn_scalar = cfg.num_layers == 62 ? static_cast<double>(cfg.hidden_size / cfg.num_heads)
                                                     : static_cast<double>(cfg.head_dim);
    cfg.activation = Activation::GeluTanh;
  }
  // llama.cpp's converter permutes llama q/k rows so that RoPE rotates adjacent pairs ("normal"
  // rope); qwen2 keeps the Hugging Face order and uses the half-split ("neox") rope.
  cfg.rope_layout = arch == "llama" ? RopeLayout::Interleaved : RopeLayout::HalfSplit;  // gemma3: neox too
  cfg.qkv_bias = arch == "qwen2";
  cfg.bos_id = f.get_int("tokenizer.ggml.bos_token_id", 1);
  cfg.eos_id = f.get_int("tokenizer.ggml.eos_token_id", 2);
  cfg.pad_id = f.get_int("tokenizer.ggml.padding_token_id", -1);
  const io::GgufTensorInfo* emb = f.find_tensor("token_embd.weight");
  if (!emb) fail(path, ": missing tensor 'token_embd.weight'");
  cfg.vocab_size = f.get_int(k + "vocab_size", emb->ne.size() == 2 ? emb->ne[1] : 0);
  cfg.tie_embeddings = f.find_tensor("output.weight") == nullptr;
  cfg.validate();

  std::map<std::string, std::string> to_hf;  // llama.cpp's names -> Hugging Face's (model/weights.hpp)
  for (int64_t l = 0; l < cfg.num_layers; ++l)
    for (const WeightRole& r : weight_roles(cfg))
      if (r.per_layer || l == 0) to_hf[gguf_name(r, l)] = hf_name(r, l);
  std::vector<NamedTensor> w;
  for (const auto& t : f.tensors()) {
    auto hit = to_hf.find(t.name);
    const std::string name = hit == to_hf.end() ? std::string() : hit->second;
    if (t.name == "rope_freqs.weight")
      fail(path, ": tensor 'rope_freqs.weight' (llama.cpp's rope scaling factors, as in Llama 3.1) is not supported; "
           "load the Hugging Face checkpoint, whose config.json states the scaling");
    if (name.empty()) fail(path, ": tensor '", t.name, "' has no place in a ", arch, " model; qinterp does not know it");
    const at::Tensor raw = at::from_blob(const_cast<uint8_t*>(t.data), {static_cast<int64_t>(t.nbytes)}, at::kByte);
    at::Tensor v = quant::dequantize_gguf(raw, t.type, t.numel()).view(t.torch_shape());
    // llama.cpp stores Gemma's norm weights as 1 + w; the model adds the 1 itself (as transformers).
    if (gemma && ends_with(t.name, "norm.weight")) v = v - 1.0f;
    w.push_back({name, std::move(v)});
  }
  return std::make_shared<Model>(cfg, std::move(w));
}

}  // namespace

std::shared_ptr<Model> load_model(const std::string& path, const LoadOptions& opts) {
  quant::QuantSpec spec;
  if (!opts.quant.empty() && opts.quant != "none") spec = quant::parse_quant_spec(opts.quant);
  // A dtype spec ("fp16") is the dtype; a quantized spec keeps the rest of the model in opts.dtype.
  const at::ScalarType dtype = parse_dtype(!spec.quantized() && !opts.quant.empty() && opts.quant != "none" &&
                                                   opts.dtype.empty()
                                               ? spec.dtype
                                               : opts.dtype);
  const at::Device device = parse_device(opts.device);
  if (!io::paths::exists(path)) fail(path, ": no such file or directory");
  std::shared_ptr<Model> m;
  if (io::paths::is_dir(path) || ends_with(path, ".safetensors") || ends_with(path, ".index.json")) {
    m = from_safetensors(path);
  } else if (ends_with(path, ".gguf")) {
    m = from_gguf(path);
  } else {
    // Sniff: GGUF magic, safetensors' JSON header, else llama2.c.
    io::MappedFile mf(path);
    if (mf.size() >= 4 && std::memcmp(mf.data(), "GGUF", 4) == 0) m = from_gguf(path);
    else if (mf.size() >= 9 && mf.data()[8] == '{') m = from_safetensors(path);
    else m = from_llama2c(path);
  }
  if (m->device() != device || m->dtype() != dtype) m->to(device, dtype);
  if (spec.quantized()) {
    if (m->quant_spec().quantized()) {
      quant::QuantSpec asked = spec;  // the calibration a saved GPTQ model records is not part of the ask
      asked.calib = m->quant_spec().calib;
      asked.seqlen = m->quant_spec().seqlen;
      if (!(m->quant_spec() == asked))
        fail("load_model: ", path, " is already quantized as ", m->quant_spec().str(), "; asked for ", spec.str());
    } else {
      quantize_model(*m, spec, opts.calibration);
    }
  }
  return m;
}

}  // namespace qinterp::model
