// Tokenizers: text <-> token ids exactly as the model was trained. This release has the
// llama2.c tokenizer.bin format (SentencePiece-style vocabulary with scores, merged greedily by
// score, byte fallback through the <0xNN> pieces); the other formats arrive behind the same
// interface.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace qinterp::text {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual std::vector<int64_t> encode(const std::string& text, bool add_bos = true, bool add_eos = false) const = 0;
  // Bytes of the decoded ids (may be invalid UTF-8 mid-character when cut between bytes).
  virtual std::string decode(const std::vector<int64_t>& ids) const = 0;
  // What streaming output prints for `id` after `prev` (e.g. a leading space dropped after BOS).
  virtual std::string decode_piece(int64_t prev, int64_t id) const = 0;
  virtual const std::string& piece(int64_t id) const = 0;  // the raw vocabulary entry
  virtual int64_t vocab_size() const = 0;
  virtual int64_t bos_id() const = 0;
  virtual int64_t eos_id() const = 0;
  virtual int64_t pad_id() const = 0;  // -1 if none
  virtual int64_t unk_id() const = 0;
};

// llama2.c tokenizer.bin: int32 max_token_length, then per token: float32 score, int32 length,
// `length` bytes. The vocabulary size is the number of records. Ids 0/1/2 are unk/bos/eos.
class Llama2cTokenizer : public Tokenizer {
 public:
  explicit Llama2cTokenizer(const std::string& path);
  std::vector<int64_t> encode(const std::string& text, bool add_bos = true, bool add_eos = false) const override;
  std::string decode(const std::vector<int64_t>& ids) const override;
  std::string decode_piece(int64_t prev, int64_t id) const override;
  const std::string& piece(int64_t id) const override;
  int64_t vocab_size() const override { return static_cast<int64_t>(pieces_.size()); }
  int64_t bos_id() const override { return 1; }
  int64_t eos_id() const override { return 2; }
  int64_t pad_id() const override { return -1; }
  int64_t unk_id() const override { return 0; }

 private:
  std::string path_;
  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  std::unordered_map<std::string, int64_t> lookup_;  // first id of each piece
  int64_t byte_base_ = 3;                              // id of <0x00>
  int64_t find(const std::string& s) const;
};

// Picks the implementation from the path. Throws Error for formats not supported yet.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path);

}  // namespace qinterp::text

namespace qinterp {
using text::load_tokenizer;
using text::Tokenizer;
}  // namespace qinterp
