// The pipeline of an HF-tokenizers BPE tokenizer, as read from tokenizer.json or built from a
// GGUF vocabulary (private). Steps run in the order of HF tokenizers' encode: added tokens are cut
// out, the rest is normalized, pre-tokenized into pieces, and each piece is merged by rank.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "qinterp/text/tokenizer.hpp"

namespace qinterp::text {

// A PCRE2 pattern compiled with UTF + Unicode properties (and JIT where available); the HF
// patterns (Oniguruma syntax: \p{L}, (?i:...), lookahead) need nothing PCRE2 lacks.
class Regex {
 public:
  Regex(const std::string& pattern, const std::string& source);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
  // Non-overlapping matches in s (valid UTF-8) as [begin, end) byte ranges, left to right.
  void find_all(const std::string& s, std::vector<std::pair<size_t, size_t>>& out) const;

 private:
  void* code_ = nullptr;  // pcre2_code_8
  uint32_t pairs_ = 1;    // ovector pairs a match needs (captures + 1)
};

enum class SplitBehavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };

struct BpeTokenizer::Spec {
  // Model.
  std::vector<std::string> vocab;                  // id -> token as stored (byte-level alphabet or ▁ form)
  std::unordered_map<std::string, int64_t> ids;    // model vocabulary: token -> id
  std::unordered_map<uint64_t, std::pair<int32_t, int64_t>> merges;  // (left id << 32 | right id) -> (rank, merged id)
  int64_t model_unk = -1;
  bool byte_fallback = false, fuse_unk = false, ignore_merges = false;

  struct Added {
    std::string content;
    int64_t id = -1;
    bool special = false, lstrip = false, rstrip = false, single_word = false, normalized = false;
    std::string pattern;  // what is matched (set by init): the content, normalized if `normalized`
  };
  std::vector<Added> added;
  std::vector<uint8_t> special_flag;  // per id: a special added token (decode leaves it out)
  // Added tokens by the first byte of their pattern, longest first; [0] matched on raw text, [1]
  // on normalized text.
  std::vector<const Added*> added_by_byte[2][256];

  struct Norm {
    enum Kind { Prepend, Replace, ReplaceRegex, Strip, Unicode, Lowercase } kind = Prepend;
    std::string a, b;  // Prepend: a; Replace: a -> b; Unicode: a = NFC/NFD/NFKC/NFKD
    bool left = false, right = false;
    std::shared_ptr<Regex> re;
  };
  std::vector<Norm> normalizer;

  struct Pre {
    enum Kind { Split, ByteLevel, Metaspace, Digits, Whitespace, WhitespaceSplit } kind = Split;
    std::shared_ptr<Regex> re;          // Split (pattern or escaped string), ByteLevel with use_regex, Digits, ...
    SplitBehavior behavior = SplitBehavior::Isolated;
    bool invert = false;
    bool add_prefix_space = false;      // ByteLevel
    std::string replacement;            // Metaspace
    enum Prepend { Always, First, Never } prepend = Always;
    bool split = true;                  // Metaspace
  };
  std::vector<Pre> pre;
  bool byte_level = false;  // a ByteLevel pre-tokenizer maps bytes to its alphabet before the model

  struct Dec {
    enum Kind { ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip } kind = Fuse;
    std::string a, b;        // Replace: a -> b; Strip: a is the character; Metaspace: a is the replacement
    int start = 0, stop = 0; // Strip
    bool prepend_first = true;  // Metaspace: drop the leading space of the first token
  };
  std::vector<Dec> decoder;
  bool join_with_space = false;  // tokenizer.json without a decoder: tokenizers joins the tokens with " "

  std::vector<int64_t> prefix, suffix;  // post-processor template around a single sequence
  int64_t bos = -1, eos = -1, pad = -1, unk = -1;
  bool add_bos = false, add_eos = false;
};

// tokenizer.json (with tokenizer_config.json beside it, if any) -> Spec (tokenizer_json.cpp).
std::unique_ptr<BpeTokenizer::Spec> read_tokenizer_json(const std::string& path);

// GPT-2's byte <-> printable character map (bytes_to_unicode): byte b -> the UTF-8 of its char.
const std::string (&byte_level_alphabet())[256];
// The regex ByteLevel(use_regex=true) splits with (GPT-2's).
extern const char* const kGpt2Pattern;

}  // namespace qinterp::text
