// The decoder against llama2.c's reference outputs, Hugging Face layout conversion, hooks,
// batching with left padding, and error handling.
#include <ATen/ATen.h>

#include <cmath>
#include <fstream>
#include <limits>
#include <sstream>

#include "common.hpp"
#include "qinterp/io/safetensors.hpp"
#include "qinterp/model/model.hpp"
#include "qinterp/text/tokenizer.hpp"

using namespace qinterp;

namespace {

std::shared_ptr<model::Model> stories() { return load_model(qt::stories("stories260K.bin")); }
at::Tensor ids_of(std::vector<int64_t> v) { return at::tensor(v, at::kLong).unsqueeze(0); }

// Reference logits [positions, 512] from logits_once_upon_a_time.txt.
at::Tensor reference_logits() {
  std::ifstream in(qt::stories("logits_once_upon_a_time.txt"));
  std::string line;
  std::vector<at::Tensor> rows;
  while (std::getline(in, line)) {
    if (line.rfind("logits ", 0) != 0) continue;
    std::istringstream ss(line.substr(7));
    std::vector<float> v;
    float x;
    while (ss >> x) v.push_back(x);
    rows.push_back(at::tensor(v));
  }
  return at::stack(rows);
}

}  // namespace

TEST(Stories260K, LogitsMatchLlama2c) {
  auto m = stories();
  const at::Tensor ref = reference_logits();
  ASSERT_EQ(ref.sizes(), (at::IntArrayRef{5, 512}));
  const at::Tensor got = m->forward(ids_of({1, 403, 407, 261, 378}))[0];
  const double err = (got - ref).abs().max().item<double>();
  EXPECT_LT(err, 1e-4) << "max |logit - llama2.c| = " << err;
  EXPECT_TRUE(at::equal(got.argmax(-1), at::tensor(std::vector<int64_t>{403, 407, 261, 378, 432})));
}

TEST(Stories260K, Greedy200MatchesLlama2cByteForByte) {
  auto m = stories();
  text::Llama2cTokenizer tok(qt::stories("tok512.bin"));
  model::GenerateOptions o;
  o.max_new_tokens = 200;  // run.c -n 200: 200 forward steps from BOS, each printing the next token
  o.stop_tokens = {1};     // run.c stops when the model emits BOS
  o.use_default_stop = false;
  const at::Tensor out = m->generate(ids_of({1}), o)[0];
  std::string text;
  for (int64_t i = 1; i < out.size(0); ++i) {
    const int64_t id = out[i].item<int64_t>();
    if (id == 1) break;
    text += tok.decode_piece(out[i - 1].item<int64_t>(), id);
  }
  EXPECT_EQ(text + "\n", qt::read_file(qt::stories("greedy_200.txt")));
}

TEST(Stories260K, KvCacheEqualsFullForward) {
  auto m = stories();
  model::GenerateOptions o;
  o.max_new_tokens = 12;
  const at::Tensor gen = m->generate(ids_of({1, 403, 407}), o);
  at::Tensor ids = ids_of({1, 403, 407});
  for (int i = 0; i < 12; ++i) {  // no cache: re-run the whole prefix each step
    const at::Tensor next = m->forward(ids)[0][-1].argmax().view({1, 1});
    ids = at::cat({ids, next}, 1);
  }
  EXPECT_TRUE(at::equal(gen, ids));
}

TEST(Stories260K, LeftPaddedBatchEqualsSeparateRuns) {
  auto m = stories();
  const std::vector<int64_t> a = {1, 403, 407, 261, 378}, b = {1, 403};
  at::Tensor ids = at::full({2, 5}, 0, at::kLong), mask = at::zeros({2, 5}, at::kBool);
  ids[0] = at::tensor(a);
  mask[0].fill_(true);
  ids[1].narrow(0, 3, 2).copy_(at::tensor(b));
  mask[1].narrow(0, 3, 2).fill_(true);
  const at::Tensor batch = m->forward(ids, mask);
  EXPECT_LT((batch[0] - m->forward(ids_of(a))[0]).abs().max().item<double>(), 1e-5);
  EXPECT_LT((batch[1].narrow(0, 3, 2) - m->forward(ids_of(b))[0]).abs().max().item<double>(), 1e-5);
  EXPECT_FALSE(batch.isnan().any().item<bool>());  // padding queries stay finite
  model::GenerateOptions o;
  o.max_new_tokens = 6;
  o.use_default_stop = false;
  const at::Tensor g = m->generate(ids, o, mask);
  EXPECT_TRUE(at::equal(g[0].narrow(0, 5, 6), m->generate(ids_of(a), o)[0].narrow(0, 5, 6)));
  EXPECT_TRUE(at::equal(g[1].narrow(0, 5, 6), m->generate(ids_of(b), o)[0].narrow(0, 2, 6)));
}

TEST(Stories260K, SamplingIsSeeded) {
  auto m = stories();
  model::GenerateOptions o;
  o.max_new_tokens = 30;
  o.temperature = 1.0;
  o.top_p = 0.9;
  o.seed = 123;
  const at::Tensor x = m->generate(ids_of({1}), o), y = m->generate(ids_of({1}), o);
  EXPECT_TRUE(at::equal(x, y));
  o.seed = 124;
  EXPECT_FALSE(at::equal(x, m->generate(ids_of({1}), o)));
}

TEST(Stories260K, HalfPrecisionStaysClose) {
  for (const char* dt : {"fp16", "bf16"}) {
    LoadOptions lo;
    lo.dtype = dt;
    auto m = load_model(qt::stories("stories260K.bin"), lo);
    EXPECT_EQ(m->dtype(), std::string(dt) == "fp16" ? at::kHalf : at::kBFloat16);
    const at::Tensor got = m->forward(ids_of({1, 403, 407, 261, 378}))[0];
    EXPECT_EQ(got.scalar_type(), at::kFloat);
    const double err = (got - reference_logits()).abs().max().item<double>();
    EXPECT_LT(err, std::string(dt) == "fp16" ? 0.05 : 0.3) << dt;
  }
}

// stories260K written as a Hugging Face checkpoint: q/k rows permuted from adjacent-pair RoPE
// to half-split RoPE, config.json beside model.safetensors. Must give the same logits.
TEST(Stories260K, HuggingFaceLayoutGivesSameLogits) {
  qt::TempDir d;
  auto m = stories();
  const auto& c = m->config();
  std::vector<at::Tensor> keep;
  std::vector<io::TensorView> views;
  for (const auto& p : m->named_parameters()) {
    at::Tensor t = p.tensor.contiguous();
    const bool q = p.name.find("q_proj.weight") != std::string::npos;
    const bool k = p.name.find("k_proj.weight") != std::string::npos;
    if (q || k) {  // HF's convert_llama_weights permute: [heads, hd/2, 2, in] -> [heads, 2, hd/2, in]
      const int64_t heads = q ? c.num_heads : c.num_kv_heads;
      t = t.view({heads, c.head_dim / 2, 2, c.hidden_size}).transpose(1, 2).reshape({heads * c.head_dim, c.hidden_size}).contiguous();
    }
    keep.push_back(t);
    views.push_back({p.name, io::DType::F32, t.sizes().vec(), t.data_ptr(), static_cast<size_t>(t.nbytes())});
  }
  io::write_safetensors(d.file("model.safetensors"), views);
  std::ofstream(d.file("config.json")) << R"({"model_type":"llama","vocab_size":512,"hidden_size":64,
    "intermediate_size":172,"num_hidden_layers":5,"num_attention_heads":8,"num_key_value_heads":4,
    "max_position_embeddings":512,"rms_norm_eps":1e-5,"rope_theta":10000.0,"tie_word_embeddings":true,
    "hidden_act":"silu","bos_token_id":1,"eos_token_id":2})";
  auto hf = load_model(d.path().string());
  EXPECT_EQ(hf->config().rope_layout, model::RopeLayout::HalfSplit);
  const at::Tensor ids = ids_of({1, 403, 407, 261, 378, 432, 290});
  const at::Tensor want = m->forward(ids);
  const double err = (hf->forward(ids) - want).abs().max().item<double>();
  // The permuted rows change only the order of the q/k products' sums, so the logits may differ
  // by rounding alone: a few float32 ulps at their scale (6 with AVX-512 MKL); the bound allows 32.
  // Rows left unpermuted (the wrong rotary layout) move them by 11.
  EXPECT_LT(err, 32 * std::numeric_limits<float>::epsilon() * want.abs().max().item<double>());
  // A wrong shape is named.
  std::ofstream(d.file("config.json")) << R"({"model_type":"llama","vocab_size":512,"hidden_size":64,
    "intermediate_size":170,"num_hidden_layers":5,"num_attention_heads":8,"num_key_value_heads":4})";
  EXPECT_QERROR(load_model(d.path().string()), "gate_proj.weight", "[172, 64]", "[170, 64]");
}

TEST(Hooks, ObserveAndReplaceMlpActivation) {
  auto m = stories();
  const at::Tensor ids = ids_of({1, 403, 407, 261, 378});
  std::map<std::string, at::Tensor> seen;
  model::Hooks observe;
  for (const char* n : {"blocks.2.mlp.hook_pre", "blocks.2.mlp.hook_act", "blocks.2.mlp.hook_post",
                        "blocks.2.hook_resid_mid", "blocks.2.hook_resid_post"})
    observe.add(n, [&seen](const at::Tensor& a, const model::HookContext& ctx) -> std::optional<at::Tensor> {
      EXPECT_EQ(ctx.layer, 2);
      EXPECT_EQ(ctx.mask.sizes(), (at::IntArrayRef{1, 5}));
      seen[ctx.name] = a.clone();
      return std::nullopt;
    });
  const at::Tensor base = m->forward(ids, {}, &observe);
  const at::Tensor act = seen["blocks.2.mlp.hook_act"];
  ASSERT_EQ(act.sizes(), (at::IntArrayRef{1, 5, 172}));
  EXPECT_TRUE(at::equal(act, at::silu(seen["blocks.2.mlp.hook_pre"])));  // act(gate), before * up
  // Hand computation of the MLP from the weights: resid_post - resid_mid = down(act * up(norm(x))).
  std::map<std::string, at::Tensor> w;
  for (const auto& p : m->named_parameters()) w[p.name] = p.tensor;
  const at::Tensor x = seen["blocks.2.hook_resid_mid"];
  const at::Tensor h = x * at::rsqrt(x.pow(2).mean(-1, true) + 1e-5) * w["model.layers.2.post_attention_layernorm.weight"];
  const at::Tensor post = act * at::matmul(h, w["model.layers.2.mlp.up_proj.weight"].t());
  EXPECT_LT((post - seen["blocks.2.mlp.hook_post"]).abs().max().item<double>(), 1e-5);
  const at::Tensor mlp_out = at::matmul(post, w["model.layers.2.mlp.down_proj.weight"].t());
  EXPECT_LT((seen["blocks.2.hook_resid_post"] - x - mlp_out).abs().max().item<double>(), 1e-5);

  // Zeroing the neurons removes the MLP's contribution: exactly the run whose block output is
  // replaced by its attention-residual state.
  model::Hooks zero, bypass;
  zero.add("blocks.2.mlp.hook_act", [](const at::Tensor& a, const model::HookContext&) -> std::optional<at::Tensor> {
    return at::zeros_like(a);
  });
  bypass.add("blocks.2.hook_resid_post", [&](const at::Tensor&, const model::HookContext&) -> std::optional<at::Tensor> {
    return x;
  });
  const at::Tensor zeroed = m->forward(ids, {}, &zero);
  EXPECT_TRUE(at::equal(zeroed, m->forward(ids, {}, &bypass)));
  EXPECT_GT((zeroed - base).abs().max().item<double>(), 1e-2);
}

TEST(Hooks, ErrorsNameTheHook) {
  model::Hooks h;
  EXPECT_QERROR(h.add("blocks.2.mlp.act", [](const at::Tensor&, const model::HookContext&) { return std::nullopt; }),
                "unknown hook point 'blocks.2.mlp.act'", "blocks.{L}.mlp.hook_act");
  EXPECT_QERROR(h.add("blocks.1.hook_resid_pre", model::HookFn{}), "empty function");
  EXPECT_TRUE(h.empty());
}

TEST(Hooks, ZeroPaddedLayerNumbersAreRefused) {
  model::Hooks h;  // "blocks.01..." names no point of any model: it would never fire
  EXPECT_QERROR(h.add("blocks.01.mlp.hook_act", [](const at::Tensor&, const model::HookContext&) { return std::nullopt; }),
                "unknown hook point 'blocks.01.mlp.hook_act'");
  EXPECT_NO_THROW(h.add("blocks.0.mlp.hook_act", [](const at::Tensor&, const model::HookContext&) { return std::nullopt; }));
  EXPECT_NO_THROW(h.add("blocks.10.mlp.hook_act", [](const at::Tensor&, const model::HookContext&) { return std::nullopt; }));
}

TEST(Hooks, AHookThatRemovesOrAddsHooksWhileRunningSkipsNoOther) {
  auto m = stories();
  model::Hooks h;
  std::vector<std::string> calls;
  int first = 0, added = 0;
  first = h.add("blocks.1.mlp.hook_act", [&](const at::Tensor&, const model::HookContext&) -> std::optional<at::Tensor> {
    calls.push_back("first");
    h.remove(first);  // once only
    added = h.add("blocks.1.mlp.hook_act", [&](const at::Tensor&, const model::HookContext&) -> std::optional<at::Tensor> {
      calls.push_back("added");
      return std::nullopt;
    });
    return std::nullopt;
  });
  h.add("blocks.1.mlp.hook_act", [&](const at::Tensor&, const model::HookContext&) -> std::optional<at::Tensor> {
    calls.push_back("second");
    return std::nullopt;
  });
  int victim = 0;
  h.add("blocks.1.mlp.hook_act", [&](const at::Tensor&, const model::HookContext&) -> std::optional<at::Tensor> {
    calls.push_back("remover");
    if (victim) h.remove(victim), victim = 0;
    return std::nullopt;
  });
  victim = h.add("blocks.1.mlp.hook_act", [&](const at::Tensor&, const model::HookContext&) -> std::optional<at::Tensor> {
    calls.push_back("victim");
    return std::nullopt;
  });
  m->forward(ids_of({1, 403}), {}, &h);
  // the self-removing hook ran once, the next one still ran, one added meanwhile waits for the
  // next pass, one removed by an earlier hook of the same pass does not run
  EXPECT_EQ(calls, (std::vector<std::string>{"first", "second", "remover"}));
  calls.clear();
  m->forward(ids_of({1, 403}), {}, &h);
  EXPECT_EQ(calls, (std::vector<std::string>{"second", "remover", "added"}));
  EXPECT_GT(added, 0);
}

TEST(Hooks, LayerOutOfRangeAndBadReplacement) {
  auto m = stories();
  model::Hooks h;
  h.add("blocks.9.mlp.hook_act", [](const at::Tensor&, const model::HookContext&) { return std::nullopt; });
  EXPECT_QERROR(m->forward(ids_of({1}), {}, &h), "blocks.9.mlp.hook_act", "5 layers");
  model::Hooks r;
  r.add("blocks.0.mlp.hook_act", [](const at::Tensor&, const model::HookContext&) -> std::optional<at::Tensor> {
    return at::zeros({3});
  });
  EXPECT_QERROR(m->forward(ids_of({1}), {}, &r), "blocks.0.mlp.hook_act", "returned shape");
}

TEST(Model, BadInputsGiveErrors) {
  auto m = stories();
  EXPECT_QERROR(m->forward(ids_of({1, 600})), "token id 600", "[0, 512)");
  EXPECT_QERROR(m->forward(at::zeros({3}, at::kLong)), "[batch, seq]");
  EXPECT_QERROR(m->forward(ids_of({1, 2}), at::ones({1, 3})), "mask shape");
  EXPECT_QERROR(m->forward(at::ones({1, 513}, at::kLong)), "position 512", "context of 512");
  EXPECT_QERROR(load_model("/nonexistent/model.bin"), "no such file");
  LoadOptions lo;
  lo.dtype = "int3";
  EXPECT_QERROR(load_model(qt::stories("stories260K.bin"), lo), "unknown dtype 'int3'");
  lo = {};
  lo.quant = "nf5";
  EXPECT_QERROR(load_model(qt::stories("stories260K.bin"), lo), "unknown quantization spec 'nf5'", "valid specs");
}

TEST(SmolLM2, LoadsFromGguf) {
  auto m = load_model(qt::smollm2_gguf());
  const auto& c = m->config();
  EXPECT_EQ(c.num_layers, 30);
  EXPECT_EQ(c.intermediate_size, 1536);
  EXPECT_EQ(c.vocab_size, 49152);
  EXPECT_EQ(c.num_kv_heads, 3);
  EXPECT_EQ(c.rope_layout, model::RopeLayout::Interleaved);
  EXPECT_TRUE(c.tie_embeddings);
  // Logits against transformers are compared in tests/python/test_smollm2.py.
  const at::Tensor l = m->forward(ids_of({1, 504, 3458, 282}));
  EXPECT_FALSE(l.isnan().any().item<bool>());
}

// A decoding step (one new token per row, float32 on the CPU) runs the model's fast paths: the
// streaming GEMV for every dense layer and the LM head, and plain loops for the norms, the rotary
// embedding and single-query attention over the KV cache. Each step's logits must be the full
// forward's at that position, up to float32 summation order, on a left-padded batch of two rows.
// rows: 2 with row 1 left-padded by `pad`, or 1 padded by `pad`.
void expect_steps_equal_full_forward(const model::Model& m, int64_t vocab_hi, int64_t rows = 2, int64_t T = 6,
                                     int64_t pad = 2) {
  const int64_t steps = 5;
  at::Tensor ids = at::randint(3, vocab_hi, {rows, T}, at::TensorOptions().dtype(at::kLong));
  at::Tensor mask = at::ones({rows, T}, at::kBool);
  mask[rows - 1].narrow(0, 0, pad).fill_(false);
  model::KVCache cache = m.new_cache(rows, T + steps);
  at::Tensor logits = m.forward(ids, mask, nullptr, &cache).select(1, T - 1);
  for (int64_t i = 0; i < steps; ++i) {
    const at::Tensor tok = logits.argmax(-1).unsqueeze(1);
    ids = at::cat({ids, tok}, 1);
    mask = at::cat({mask, at::ones({rows, 1}, at::kBool)}, 1);
    logits = m.forward(tok, at::ones({rows, 1}, at::kBool), nullptr, &cache).select(1, 0);
    const at::Tensor full = m.forward(ids, mask).select(1, ids.size(1) - 1);
    const double err = (logits - full).abs().max().item<double>(), scale = full.abs().max().item<double>();
    EXPECT_LT(err, 2e-5 * scale) << "step " << i << ": max |step - full| = " << err << " of " << scale;
  }
}

TEST(Stories260K, DecodingStepsEqualTheFullForward) {
  at::manual_seed(5);
  expect_steps_equal_full_forward(*stories(), 512);
  LoadOptions lo;
  lo.quant = "nf4:compute=fp32";
  expect_steps_equal_full_forward(*load_model(qt::stories("stories260K.bin"), lo), 512);
}

TEST(SmolLM2, DecodingStepsEqualTheFullForward) {
  at::manual_seed(6);
  const auto m = load_model(qt::smollm2_gguf());
  expect_steps_equal_full_forward(*m, 49152);  // grouped-query, head dim 64
  // one row, 3 kv heads: the keys split into chunks across threads; 50 padded keys leave the first
  // chunk with no key to attend to
  expect_steps_equal_full_forward(*m, 49152, 1, 90, 50);
  expect_steps_equal_full_forward(*m, 49152, 1, 200, 0);
}

// Decoding steps without hooks run Model::fused_step (a layer's loops and kernels on raw rows); a
// hook anywhere sends them through run_layer's step path. The two must agree bit for bit, logits
// and cached keys and values, on a left-padded batch; int8 has no fused kernel, so its products
// take linear() inside the fused step.
void expect_fused_steps_equal_hooked_steps(const model::Model& m, int64_t vocab_hi, const std::string& what) {
  model::Hooks noop;
  noop.add("blocks.0.hook_resid_pre",
           [](const at::Tensor&, const model::HookContext&) { return std::optional<at::Tensor>(); });
  const int64_t rows = 2, T = 6, steps = 4;
  const at::Tensor ids = at::randint(3, vocab_hi, {rows, T}, at::TensorOptions().dtype(at::kLong));
  at::Tensor mask = at::ones({rows, T}, at::kBool);
  mask[1].narrow(0, 0, 2).fill_(false);
  model::KVCache fused = m.new_cache(rows, T + steps), hooked = m.new_cache(rows, T + steps);
  at::Tensor a = m.forward(ids, mask, nullptr, &fused).select(1, T - 1);
  at::Tensor b = m.forward(ids, mask, &noop, &hooked).select(1, T - 1);
  ASSERT_TRUE(at::equal(a, b)) << what << ": prefill";
  for (int64_t i = 0; i < steps; ++i) {
    const at::Tensor tok = a.argmax(-1).unsqueeze(1);
    a = m.forward(tok, at::ones({rows, 1}, at::kBool), nullptr, &fused).select(1, 0);
    b = m.forward(tok, at::ones({rows, 1}, at::kBool), &noop, &hooked).select(1, 0);
    EXPECT_TRUE(at::equal(a, b)) << what << ", step " << i << ": max |fused - hooked| = "
                                 << (a - b).abs().max().item<double>();
  }
  for (size_t l = 0; l < fused.k.size(); ++l) {
    EXPECT_TRUE(at::equal(fused.k[l], hooked.k[l])) << what << ", keys of layer " << l;
    EXPECT_TRUE(at::equal(fused.v[l], hooked.v[l])) << what << ", values of layer " << l;
  }
}

TEST(Stories260K, FusedDecodingStepsEqualTheHookedStepPathBitForBit) {
  at::manual_seed(12);
  for (const char* spec : {"", "nf4:compute=fp32", "nf4:compute=fp32,decode=q8", "fp4:compute=fp32,double_quant=0",
                           "rtn4:compute=fp32,group=32", "rtn8:compute=fp32", "int8:compute=fp32"}) {
    LoadOptions lo;
    lo.quant = spec;
    expect_fused_steps_equal_hooked_steps(*load_model(qt::stories("stories260K.bin"), lo), 512,
                                          *spec ? spec : "fp32");
  }
}

TEST(SmolLM2, FusedDecodingStepsEqualTheHookedStepPathBitForBit) {
  at::manual_seed(13);
  expect_fused_steps_equal_hooked_steps(*load_model(qt::smollm2_gguf()), 49152, "fp32");
}

TEST(Qwen25, FusedDecodingStepsEqualTheHookedStepPathBitForBit) {
  // q/k/v biases, added to the fused products' rows
  at::manual_seed(15);
  const auto m = load_model(qt::qwen25_gguf());
  ASSERT_TRUE(m->config().qkv_bias);
  expect_fused_steps_equal_hooked_steps(*m, 151936, "fp32");
}

TEST(Gemma3, FusedDecodingStepsEqualTheHookedStepPathBitForBit) {
  // Gemma's block: (1 + w) norms, q/k norms (eight head rows for two sequences), sandwich norms,
  // sliding and global layers with their own rotary tables and masks, GELU-tanh.
  at::manual_seed(14);
  const auto m = load_model(qt::gemma3_gguf());
  ASSERT_TRUE(m->config().qk_norm && m->config().sandwich_norms && !m->config().layer_types.empty());
  expect_fused_steps_equal_hooked_steps(*m, 262144, "fp32");
  LoadOptions lo;
  lo.quant = "nf4:compute=fp32";
  expect_fused_steps_equal_hooked_steps(*load_model(qt::gemma3_gguf(), lo), 262144, "nf4");
}

TEST(SmolLM2, DecodingReadsTheLmHeadFromItsExactQ8Blocks) {
  // Its GGUF stores the (tied) head as Q8_0: the exact blocks are found and decoding uses them
  // (the steps above are checked with them); without them the steps are the same within rounding.
  const auto m = load_model(qt::smollm2_gguf());
  EXPECT_EQ(m->compact_head_bytes(), 49152 * 576 + 49152 * 18 * 4);
  at::manual_seed(8);
  const at::Tensor ids = at::randint(3, 49152, {1, 9}, at::TensorOptions().dtype(at::kLong));
  auto step = [&] {
    model::KVCache cache = m->new_cache(1, 10);
    m->forward(ids.narrow(1, 0, 8), {}, nullptr, &cache);
    return m->forward(ids.narrow(1, 8, 1), {}, nullptr, &cache);
  };
  const at::Tensor compact = step();
  m->set_compact_head(false);
  EXPECT_EQ(m->compact_head_bytes(), 0);
  const at::Tensor dense = step();
  EXPECT_LT((compact - dense).abs().max().item<double>(), 2e-5 * dense.abs().max().item<double>());
  EXPECT_FALSE(at::equal(compact, dense));  // another summation order: the path did change
}

TEST(Stories260K, ForwardLastIsTheFullForwardsLastPositionWithTheSameCache) {
  at::manual_seed(10);
  auto m = stories();
  const at::Tensor ids = at::randint(3, 512, {2, 7}, at::TensorOptions().dtype(at::kLong));
  at::Tensor mask = at::ones({2, 7}, at::kBool);
  mask[1].narrow(0, 0, 3).fill_(false);
  model::KVCache c1 = m->new_cache(2, 8), c2 = m->new_cache(2, 8);
  const at::Tensor full = m->forward(ids, mask, nullptr, &c1);
  const at::Tensor last = m->forward_last(ids, mask, nullptr, &c2);
  ASSERT_EQ(last.sizes(), at::IntArrayRef({2, 1, 512}));
  const at::Tensor ref = full.narrow(1, 6, 1);
  EXPECT_LT((last - ref).abs().max().item<double>(), 2e-5 * ref.abs().max().item<double>());
  EXPECT_EQ(c1.length, c2.length);
  EXPECT_TRUE(at::equal(c1.next_pos, c2.next_pos));
  const at::Tensor tok = ref.argmax(-1);
  const at::Tensor s1 = m->forward(tok, at::ones({2, 1}, at::kBool), nullptr, &c1);
  const at::Tensor s2 = m->forward(tok, at::ones({2, 1}, at::kBool), nullptr, &c2);
  EXPECT_TRUE(at::equal(s1, s2));  // the same keys and values were cached
  // A hook on the logits still sees every position.
  model::Hooks h;
  int64_t seen = 0;
  h.add("hook_logits", [&](const at::Tensor& t, const model::HookContext&) -> std::optional<at::Tensor> {
    seen = t.size(1);
    return std::nullopt;
  });
  const at::Tensor hooked = m->forward_last(ids, mask, &h);
  EXPECT_EQ(seen, 7);
  EXPECT_EQ(hooked.sizes(), at::IntArrayRef({2, 1, 512}));
}

TEST(Stories260K, AnLmHeadChangedInPlaceIsNotReadFromStaleBlocks) {
  // stories260K's head is not on a Q8 grid; put it on one, then change it in place: decoding
  // steps must follow the dense head (the full forward), not the blocks made before.
  at::manual_seed(9);
  auto m = stories();
  EXPECT_EQ(m->compact_head_bytes(), 0);
  at::Tensor head;
  for (const auto& p : m->named_parameters())
    if (p.name == "model.embed_tokens.weight") head = p.tensor;  // tied: the LM head too
  ASSERT_TRUE(head.defined());
  const at::Tensor d = (at::rand({512, 2}) * 0.01 + 0.001).to(at::kHalf).to(at::kFloat);
  at::Tensor q = at::randint(-127, 128, {512, 2, 32}).to(at::kFloat);
  q.select(2, 0).fill_(127);
  head.copy_((q * d.unsqueeze(2)).view({512, 64}));
  m->set_compact_head(true);
  EXPECT_EQ(m->compact_head_bytes(), 512 * 64 + 512 * 2 * 4);
  expect_steps_equal_full_forward(*m, 512);
  head.mul_(0.5f).add_(0.001f);
  expect_steps_equal_full_forward(*m, 512);
}

TEST(Stories260K, HooksFireOnDecodingStepsWithTheFullForwardsValues) {
  // A hooked layer's decoding step takes the unfused path (its activation must reach the hook);
  // the others fuse the gated activation. Both must match the full forward position by position.
  at::manual_seed(7);
  auto m = stories();
  const int64_t T = 5, steps = 4;
  at::Tensor ids = at::randint(3, 512, {1, T}, at::TensorOptions().dtype(at::kLong));
  std::vector<at::Tensor> seen;
  model::Hooks hooks;
  hooks.add("blocks.2.mlp.hook_act", [&](const at::Tensor& a, const model::HookContext&) {
    seen.push_back(a.clone());
    return std::optional<at::Tensor>();
  });
  model::KVCache cache = m->new_cache(1, T + steps);
  at::Tensor logits = m->forward(ids, {}, &hooks, &cache).select(1, T - 1);
  for (int64_t i = 0; i < steps; ++i) {
    const at::Tensor tok = logits.argmax(-1).unsqueeze(1);
    ids = at::cat({ids, tok}, 1);
    logits = m->forward(tok, {}, &hooks, &cache).select(1, 0);
  }
  ASSERT_EQ(seen.size(), static_cast<size_t>(1 + steps));
  seen.clear();
  const at::Tensor full_logits = m->forward(ids, {}, &hooks).select(1, ids.size(1) - 1);
  ASSERT_EQ(seen.size(), 1u);
  const at::Tensor full = seen[0];  // [1, T + steps, d_mlp]
  EXPECT_LT((logits - full_logits).abs().max().item<double>(), 2e-5 * full_logits.abs().max().item<double>());
  seen.clear();
  cache = m->new_cache(1, T + steps);
  m->forward(ids.narrow(1, 0, T), {}, &hooks, &cache);
  for (int64_t i = 0; i < steps - 1; ++i) m->forward(ids.narrow(1, T + i, 1), {}, &hooks, &cache);
  for (int64_t i = 0; i < steps - 1; ++i) {
    const at::Tensor step = seen[static_cast<size_t>(1 + i)].select(1, 0), ref = full.select(1, T + i);
    EXPECT_LT((step - ref).abs().max().item<double>(), 2e-5 * ref.abs().max().item<double>()) << "step " << i;
  }
}

TEST(Model, RunsOnCuda) {
  if (!at::hasCUDA()) GTEST_SKIP() << "SKIPPED: no CUDA device here; runs on a GPU machine";
  LoadOptions lo;
  lo.device = "cuda";
  auto m = load_model(qt::stories("stories260K.bin"), lo);
  const at::Tensor got = m->forward(ids_of({1, 403, 407, 261, 378}))[0].cpu();
  EXPECT_LT((got - reference_logits()).abs().max().item<double>(), 1e-4);
}

TEST(ModelConfigJson, EveryFieldRoundTripsAndBadInputIsNamed) {
  model::ModelConfig c;  // every field away from its default
  c.arch = "qwen2", c.source = "/x/model.gguf", c.format = "gguf";
  c.vocab_size = 11, c.hidden_size = 12, c.intermediate_size = 13, c.num_layers = 14, c.num_heads = 15;
  c.num_kv_heads = 5, c.head_dim = 16, c.max_seq_len = 17, c.rms_norm_eps = 1.5e-6, c.rope_theta = 5e5;
  c.rope_layout = model::RopeLayout::Interleaved, c.activation = model::Activation::GeluTanh;
  c.gated_mlp = false, c.tie_embeddings = true, c.qkv_bias = true, c.bos_id = 3, c.eos_id = 4, c.pad_id = 7;
  c.rotary_dim = 8, c.rope_scaling = model::RopeScaling::Llama3, c.rope_factor = 8, c.rope_low_freq_factor = 2;
  c.rope_high_freq_factor = 5, c.rope_original_context = 99, c.sliding_window = 6, c.norm = model::NormKind::LayerNorm;
  c.parallel_block = true, c.attn_out_bias = true, c.mlp_bias = true, c.lm_head_bias = true;
  const std::string j = model::config_to_json(c);
  const model::ModelConfig b = model::config_from_json(j, "ck");
  EXPECT_EQ(model::config_to_json(b), j);
  EXPECT_EQ(b.summary(), c.summary());
  EXPECT_EQ(b.source, c.source);
  EXPECT_EQ(b.format, c.format);
  // files written before source/format and the later flags were stored still load, as plain Llama
  model::ModelConfig old;
  EXPECT_NO_THROW(old = model::config_from_json(R"({"arch":"llama","vocab_size":1,"hidden_size":1,"intermediate_size":1,
      "num_layers":1,"num_heads":1,"num_kv_heads":1,"head_dim":2,"max_seq_len":1,"rms_norm_eps":1e-5,
      "rope_theta":1e4,"rope_layout":"half-split","activation":"silu","gated_mlp":true,"tie_embeddings":false,
      "qkv_bias":false,"bos_id":1,"eos_id":2,"pad_id":-1})", "old"));
  EXPECT_TRUE(model::non_llama_settings(old).empty());
  EXPECT_EQ(old.sliding_window, 0);
  std::string missing = j;
  missing.replace(missing.find("\"qkv_bias\":true"), 15, "\"qkv_bia\":true");
  EXPECT_QERROR(model::config_from_json(missing, "ck.safetensors"), "ck.safetensors", "lacks \"qkv_bias\"");
  std::string extra = j;
  extra.insert(1, "\"softcap\":30,");
  EXPECT_QERROR(model::config_from_json(extra, "ck"), "unknown field \"softcap\"");
  std::string bad_norm = j;
  bad_norm.replace(bad_norm.find("\"layernorm\""), 11, "\"batchnorm\"");
  EXPECT_QERROR(model::config_from_json(bad_norm, "ck"), "\"norm\" has a bad value");
  std::string bad = j;
  bad.replace(bad.find("\"gelu_tanh\""), 11, "\"swiglu\"");
  EXPECT_QERROR(model::config_from_json(bad, "ck"), "\"activation\"", "swiglu");
  EXPECT_QERROR(model::config_from_json("[1]", "ck"), "not a JSON object");
}
