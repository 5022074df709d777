// Tokenizers: text <-> token ids exactly as the model was trained, with no Python.
//
// One interface, four file formats, each reproducing its reference library:
//   llama2.c tokenizer.bin    run.c (score-ordered merges, byte fallback)
//   SentencePiece .model      the sentencepiece library (BPE models: Llama-2, Mistral)
//   HF tokenizer.json         HF tokenizers (byte-level BPE with regex pre-tokenizers: GPT-2,
//                             Llama-3, Qwen2, SmolLM; SentencePiece-style BPE: Llama-2 exports)
//   GGUF vocabulary           tokenizer.ggml.model "llama" as sentencepiece, "gpt2" as the
//                             byte-level BPE transformers builds from the same file
// load_tokenizer(path) picks one from the path. Text is UTF-8 bytes; ids are int64.
// docs/tokenizers.md states each format's rules (whitespace, special tokens, malformed UTF-8).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace qinterp::io {
class GgufFile;
}

namespace qinterp::text {

class WordCache;

// Token kinds as sentencepiece and GGUF number them.
enum class TokenType : int32_t { Normal = 1, Unknown = 2, Control = 3, UserDefined = 4, Unused = 5, Byte = 6 };

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // The ids of `text` with no BOS/EOS added.
  virtual std::vector<int64_t> tokenize(const std::string& text) const = 0;
  // With the BOS/EOS the model's files ask for (add_bos_default / add_eos_default) ...
  std::vector<int64_t> encode(const std::string& text) const;
  // ... or as given. Asking for a BOS/EOS the vocabulary lacks is an Error.
  std::vector<int64_t> encode(const std::string& text, bool add_bos, bool add_eos = false) const;

  // Bytes of the decoded ids, special (control) tokens left out. May be invalid UTF-8 where the
  // ids cut a character; the Python binding replaces such bytes with U+FFFD as the references do.
  virtual std::string decode(const std::vector<int64_t>& ids) const = 0;
  // What streaming output prints for `id` after `prev` (e.g. a leading space dropped after BOS).
  virtual std::string decode_piece(int64_t prev, int64_t id) const = 0;
  virtual const std::string& piece(int64_t id) const = 0;  // the vocabulary entry as stored
  virtual int64_t vocab_size() const = 0;
  virtual const char* kind() const = 0;  // "llama2c", "sentencepiece" or "bpe"

  int64_t bos_id() const { return bos_; }  // -1 where the vocabulary has none
  int64_t eos_id() const { return eos_; }
  int64_t pad_id() const { return pad_; }
  int64_t unk_id() const { return unk_; }
  bool add_bos_default() const { return add_bos_; }
  bool add_eos_default() const { return add_eos_; }
  const std::string& source() const { return source_; }  // the file it was read from

 protected:
  int64_t bos_ = -1, eos_ = -1, pad_ = -1, unk_ = -1;
  bool add_bos_ = false, add_eos_ = false;
  std::string source_;
  void check_id(int64_t id) const;  // Error naming the file for ids outside the vocabulary
};

// llama2.c tokenizer.bin: int32 max_token_length, then per token: float32 score, int32 length,
// `length` bytes. The vocabulary size is the number of records. Ids 0/1/2 are unk/bos/eos.
class Llama2cTokenizer : public Tokenizer {
 public:
  explicit Llama2cTokenizer(const std::string& path);
  std::vector<int64_t> tokenize(const std::string& text) const override;
  std::string decode(const std::vector<int64_t>& ids) const override;
  std::string decode_piece(int64_t prev, int64_t id) const override;
  const std::string& piece(int64_t id) const override;
  int64_t vocab_size() const override { return static_cast<int64_t>(pieces_.size()); }
  const char* kind() const override { return "llama2c"; }

 private:
  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  std::unordered_map<std::string, int64_t> lookup_;  // first id of each piece
  int64_t byte_base_ = 3;                              // id of <0x00>
  int64_t find(const std::string& s) const;
};

// A SentencePiece BPE vocabulary and the normalizer settings encoding uses.
struct SentencePieceModel {
  std::vector<std::string> pieces;  // "▁" (U+2581) stands for a space
  std::vector<float> scores;        // higher merges first
  std::vector<TokenType> types;
  bool add_dummy_prefix = true;           // a "▁" before non-empty text
  bool remove_extra_whitespaces = true;   // strip ends, collapse runs of spaces
  bool escape_whitespaces = true;         // " " -> "▁"
  bool byte_fallback = false;             // unknown characters as <0xNN> pieces
  std::string unk_surface = " \xE2\x81\x87 ";  // what decoding writes for unk (sentencepiece's " ⁇ ")
  int64_t bos = -1, eos = -1, pad = -1, unk = -1;
  bool add_bos = true, add_eos = false;
  // GGUF vocabularies (llama.cpp, and transformers reading them): user-defined pieces are found in
  // the raw text before normalization, longest first, and the text between them is encoded alone
  // (Gemma's "\n\n" and runs of spaces are such pieces). sentencepiece itself matches them in the
  // normalized text.
  bool user_defined_in_raw_text = false;
};

// SentencePiece BPE (sentencepiece's bpe_model): characters (user-defined pieces whole), then the
// adjacent pair whose concatenation has the highest score merges first, leftmost on ties; unused
// pieces are split back; unknown characters become bytes (byte_fallback) or unk. Normalizers
// other than "identity" (precompiled character maps) and unigram models are refused.
class SentencePieceTokenizer : public Tokenizer {
 public:
  explicit SentencePieceTokenizer(const std::string& path);  // a .model file (protobuf)
  SentencePieceTokenizer(SentencePieceModel model, const std::string& source);
  std::vector<int64_t> tokenize(const std::string& text) const override;
  std::string decode(const std::vector<int64_t>& ids) const override;
  std::string decode_piece(int64_t prev, int64_t id) const override;
  const std::string& piece(int64_t id) const override;
  int64_t vocab_size() const override { return static_cast<int64_t>(m_.pieces.size()); }
  const char* kind() const override { return "sentencepiece"; }

 private:
  SentencePieceModel m_;
  std::unordered_map<std::string, int64_t> normal_;  // normal, user-defined and unused pieces
  std::vector<std::string> user_defined_;             // matched whole, longest first
  bool user_defined_first_[256] = {};                 // bytes a user-defined piece starts with
  int64_t byte_id_[256];
  bool split_words_ = false;  // no mergeable piece has a space after another character
  std::shared_ptr<WordCache> cache_;
  void init();
  void append_ids(const std::string& piece, std::vector<int64_t>& out) const;
  void merge_word(const std::string& s, std::vector<int64_t>& out) const;
  void encode_segment(const std::string& clean, bool at_start, std::vector<int64_t>& out) const;
  std::string surface(int64_t id) const;  // the bytes a piece stands for
};

// Byte-level or SentencePiece-style BPE with the HF tokenizers pipeline: added tokens, normalizer,
// pre-tokenizer (regex splits via PCRE2), merges by rank, decoder, post-processor template.
class BpeTokenizer : public Tokenizer {
 public:
  struct Spec;  // the parsed pipeline (src/text/bpe.hpp)
  explicit BpeTokenizer(const std::string& tokenizer_json);
  BpeTokenizer(std::unique_ptr<Spec> spec, const std::string& source);
  ~BpeTokenizer() override;
  std::vector<int64_t> tokenize(const std::string& text) const override;
  std::string decode(const std::vector<int64_t>& ids) const override;
  std::string decode_piece(int64_t prev, int64_t id) const override;
  const std::string& piece(int64_t id) const override;
  int64_t vocab_size() const override;
  const char* kind() const override { return "bpe"; }

 private:
  std::unique_ptr<Spec> s_;
  std::shared_ptr<WordCache> cache_;
  std::string split_at_ = "\xE2\x96\x81";  // "▁"
  bool split_words_ = false;                // pieces may be merged word by word (see init())
  void init();
  void merge_cached(const std::string& word, std::vector<int64_t>& out) const;
};

// The tokenizer a GGUF file's metadata describes (tokenizer.ggml.*).
std::unique_ptr<Tokenizer> load_gguf_tokenizer(const io::GgufFile& file);

// Picks the implementation from the path: a directory (tokenizer.json, tokenizer.model,
// tokenizer.bin or one .gguf inside), *.json, *.model, *.gguf, *.bin (llama2.c). Throws Error
// naming the file for anything unreadable or malformed.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path);

// The tokenizer that goes with a model file: a GGUF's own vocabulary, a model directory's files,
// else tokenizer.json / tokenizer.model / tokenizer.bin / tok512.bin beside the model file.
// Throws Error when there is none (pass a tokenizer explicitly then).
std::string find_tokenizer(const std::string& model_path);

// Throws Error when a tokenizer cannot belong to a model with `model_vocab` embedding rows: ids
// beyond the model's vocabulary (a larger tokenizer, or BOS/EOS/pad beyond it), or a vocabulary
// much smaller than the model's (more than max(256, model_vocab / 64) rows short: models pad their
// embedding to a round size, not by thousands).
void check_tokenizer(const Tokenizer& tok, int64_t model_vocab, const std::string& model_path);

}  // namespace qinterp::text

namespace qinterp {
using text::load_tokenizer;
using text::Tokenizer;
}  // namespace qinterp
