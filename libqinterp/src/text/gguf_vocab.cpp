// The tokenizer a GGUF file describes in its tokenizer.ggml.* metadata.
//   "llama": a SentencePiece BPE vocabulary (pieces, scores, token types); encoded as sentencepiece
//            does, the way the model was trained (llama.cpp's SPM tokenizer agrees).
//   "gpt2":  byte-level BPE with merges, built as transformers builds it from the same file (its
//            GGUF integration is the reference in the tests): GPT-2's regex unless
//            tokenizer.ggml.pre names a split transformers knows; control tokens (type 3) special.
#include <set>

#include "bpe.hpp"
#include "qinterp/error.hpp"
#include "qinterp/io/gguf.hpp"
#include "unicode.hpp"

namespace qinterp::text {

namespace {

const char* const kLlama3Split =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
const char* const kQwen2Split =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// tokenizer.ggml.pre values with the split transformers (5.x) applies for them; anything else gets
// GPT-2's ByteLevel regex, as transformers does.
const char* split_for(const std::string& pre) {
  static const std::set<std::string> llama3 = {"llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral",
                                               "midm-2.0", "lfm2", "dbrx", "smaug-bpe"};
  static const std::set<std::string> qwen2 = {"qwen2", "deepseek-r1-qwen", "megrez"};
  if (llama3.count(pre)) return kLlama3Split;
  if (qwen2.count(pre)) return kQwen2Split;
  return nullptr;
}

std::vector<std::string> strings(const io::GgufFile& f, const std::string& key) {
  const io::GgufValue& v = f.get(key);
  if (v.type != io::GgufValue::ARRAY || (v.elem_type != io::GgufValue::STRING && !v.array.empty()))
    fail(f.path(), ": ", key, " is not an array of strings");
  std::vector<std::string> out;
  out.reserve(v.array.size());
  for (const auto& e : v.array) out.push_back(e.s);
  return out;
}

template <class T, class Get>
std::vector<T> numbers(const io::GgufFile& f, const std::string& key, size_t n, Get get) {
  std::vector<T> out;
  if (!f.has(key)) return out;
  const io::GgufValue& v = f.get(key);
  if (v.type != io::GgufValue::ARRAY) fail(f.path(), ": ", key, " is not an array");
  if (v.array.size() != n) fail(f.path(), ": ", key, " has ", v.array.size(), " entries for ", n, " tokens");
  for (const auto& e : v.array) out.push_back(get(e));
  return out;
}

int64_t id_or(const io::GgufFile& f, const char* key, int64_t n, int64_t dflt) {
  const int64_t id = f.get_int(key, dflt);
  if (id >= n) fail(f.path(), ": ", key, " = ", id, " is outside the vocabulary of ", n);
  return id < 0 ? -1 : id;
}

bool flag(const io::GgufFile& f, const char* key, bool dflt) { return f.has(key) ? f.get_int(key) != 0 : dflt; }

}  // namespace

std::unique_ptr<Tokenizer> load_gguf_tokenizer(const io::GgufFile& f) {
  if (!f.has("tokenizer.ggml.model")) fail(f.path(), ": no tokenizer.ggml.model; this GGUF carries no tokenizer");
  const std::string type = f.get_string("tokenizer.ggml.model");
  const std::vector<std::string> tokens = strings(f, "tokenizer.ggml.tokens");
  const size_t n = tokens.size();
  if (n == 0) fail(f.path(), ": tokenizer.ggml.tokens is empty");
  const auto n64 = static_cast<int64_t>(n);
  const auto types = numbers<int32_t>(f, "tokenizer.ggml.token_type", n, [](const io::GgufValue& e) { return static_cast<int32_t>(e.i); });

  if (type == "llama") {
    SentencePieceModel m;
    m.pieces = tokens;
    m.scores = numbers<float>(f, "tokenizer.ggml.scores", n, [](const io::GgufValue& e) { return static_cast<float>(e.f); });
    if (m.scores.empty()) fail(f.path(), ": a \"llama\" vocabulary needs tokenizer.ggml.scores");
    m.types.resize(n, TokenType::Normal);
    for (size_t i = 0; i < types.size(); ++i) {
      if (types[i] < 1 || types[i] > 6) fail(f.path(), ": token ", i, " has unknown token type ", types[i]);
      m.types[i] = static_cast<TokenType>(types[i]);
      if (m.types[i] == TokenType::Byte) m.byte_fallback = true;
    }
    m.add_dummy_prefix = flag(f, "tokenizer.ggml.add_space_prefix", true);
    m.remove_extra_whitespaces = false;
    m.user_defined_in_raw_text = true;
    m.unk = id_or(f, "tokenizer.ggml.unknown_token_id", n64, 0);
    m.bos = id_or(f, "tokenizer.ggml.bos_token_id", n64, 1);
    m.eos = id_or(f, "tokenizer.ggml.eos_token_id", n64, 2);
    m.pad = id_or(f, "tokenizer.ggml.padding_token_id", n64, -1);
    m.add_bos = flag(f, "tokenizer.ggml.add_bos_token", true);
    m.add_eos = flag(f, "tokenizer.ggml.add_eos_token", false);
    return std::make_unique<SentencePieceTokenizer>(std::move(m), f.path());
  }
  if (type != "gpt2")
    fail(f.path(), ": tokenizer.ggml.model \"", type, "\" is not supported (qinterp reads \"llama\" and \"gpt2\")");

  auto s = std::make_unique<BpeTokenizer::Spec>();
  const auto& alphabet = byte_level_alphabet();
  std::set<std::string> alpha(std::begin(alphabet), std::end(alphabet));
  const auto in_alphabet = [&](const std::string& t) {
    for (size_t i = 0; i < t.size();) {
      const size_t l = utf8::lead_len(t, i);
      if (!alpha.count(t.substr(i, l))) return false;
      i += l;
    }
    return true;
  };
  s->vocab.resize(n);
  for (size_t i = 0; i < n; ++i) {
    // Tokens spelled outside the byte alphabet (some converters store raw text) are respelled.
    std::string t = tokens[i];
    if (!in_alphabet(t)) {
      std::string r;
      for (unsigned char c : t) r += alphabet[c];
      t = std::move(r);
    }
    s->vocab[i] = t;
    s->ids[t] = static_cast<int64_t>(i);
  }
  if (!f.has("tokenizer.ggml.merges")) fail(f.path(), ": a \"gpt2\" vocabulary needs tokenizer.ggml.merges");
  const std::vector<std::string> merges = strings(f, "tokenizer.ggml.merges");
  for (size_t r = 0; r < merges.size(); ++r) {
    const std::string& m = merges[r];
    const size_t sp = m.find(' ');
    if (sp == std::string::npos) fail(f.path(), ": merge ", r, " (\"", m, "\") is not two tokens");
    const std::string a = m.substr(0, sp), b = m.substr(sp + 1);
    const auto ia = s->ids.find(a), ib = s->ids.find(b), ic = s->ids.find(a + b);
    if (ia == s->ids.end() || ib == s->ids.end() || ic == s->ids.end())
      fail(f.path(), ": merge ", r, " (\"", m, "\") uses a token outside the vocabulary");
    s->merges.emplace((static_cast<uint64_t>(ia->second) << 32) | static_cast<uint64_t>(ib->second),
                      std::make_pair(static_cast<int32_t>(r), ic->second));
  }
  for (size_t i = 0; i < types.size(); ++i) {
    // 3 = control: special added tokens (those spelled in the byte alphabet); 4 = user-defined.
    if (types[i] == 3 && in_alphabet(tokens[i]))
      s->added.push_back({tokens[i], static_cast<int64_t>(i), true, false, false, false, false, {}});
    else if (types[i] == 4)
      s->added.push_back({tokens[i], static_cast<int64_t>(i), false, false, false, false, false, {}});
  }
  const std::string pre = f.has("tokenizer.ggml.pre") ? f.get_string("tokenizer.ggml.pre") : "";
  BpeTokenizer::Spec::Pre bl;
  bl.kind = BpeTokenizer::Spec::Pre::ByteLevel;
  if (const char* split = split_for(pre)) {
    BpeTokenizer::Spec::Pre sp;
    sp.re = std::make_shared<Regex>(split, f.path());
    s->pre.push_back(std::move(sp));
  } else {
    bl.re = std::make_shared<Regex>(kGpt2Pattern, f.path());
  }
  s->pre.push_back(std::move(bl));
  s->decoder.emplace_back();
  s->decoder.back().kind = BpeTokenizer::Spec::Dec::ByteLevel;
  s->bos = id_or(f, "tokenizer.ggml.bos_token_id", n64, -1);
  s->eos = id_or(f, "tokenizer.ggml.eos_token_id", n64, -1);
  s->pad = id_or(f, "tokenizer.ggml.padding_token_id", n64, -1);
  s->unk = id_or(f, "tokenizer.ggml.unknown_token_id", n64, -1);
  s->add_bos = flag(f, "tokenizer.ggml.add_bos_token", false);
  s->add_eos = flag(f, "tokenizer.ggml.add_eos_token", false);
  return std::make_unique<BpeTokenizer>(std::move(s), f.path());
}

}  // namespace qinterp::text
