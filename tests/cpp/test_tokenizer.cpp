// Tokenizers against ids of their reference libraries (sentencepiece, HF tokenizers,
// transformers' GGUF tokenizer, llama2.c run.c), recorded here as hand-checked values; the
// Python tests compare whole corpora against the libraries themselves.
#include "common.hpp"
#include "qinterp/io/gguf.hpp"
#include "qinterp/text/batch.hpp"
#include "qinterp/text/tokenizer.hpp"

using namespace qinterp;
using text::BpeTokenizer;

TEST(Llama2cTokenizer, EncodesLikeRunC) {
  text::Llama2cTokenizer t(qt::stories("tok512.bin"));
  EXPECT_EQ(t.vocab_size(), 512);
  EXPECT_EQ(t.encode("Once upon a time"), (std::vector<int64_t>{1, 403, 407, 261, 378}));
  EXPECT_EQ(t.encode(""), (std::vector<int64_t>{1}));
  EXPECT_EQ(t.encode("", false), (std::vector<int64_t>{}));
  EXPECT_EQ(t.encode("Once", true, true).back(), 2);
  // Characters outside the 512-piece vocabulary fall back to their UTF-8 bytes (<0xNN> = 3 + byte).
  EXPECT_EQ(t.encode("é", false), (std::vector<int64_t>{410, 485}));  // " ", "é": both in the vocabulary
  EXPECT_EQ(t.encode("中", false), (std::vector<int64_t>{410, 3 + 0xE4, 3 + 0xB8, 3 + 0xAD}));
  EXPECT_EQ(t.decode(t.encode("Lily's mom said, \"Hi!\"\nThe end. é 中")), "Lily's mom said, \"Hi!\"\nThe end. é 中");
}

TEST(Llama2cTokenizer, DecodePieceRules) {
  text::Llama2cTokenizer t(qt::stories("tok512.bin"));
  EXPECT_EQ(t.decode_piece(1, 403), "Once");        // leading space dropped after BOS
  EXPECT_EQ(t.decode_piece(403, 407), " upon");
  EXPECT_EQ(t.decode_piece(5, 3 + 0x0A), "\n");     // <0x0A> is a raw byte
  EXPECT_QERROR(t.piece(512), "token id 512");
}

TEST(Llama2cTokenizer, Llama2VocabularyLoads) {
  text::Llama2cTokenizer t(qt::shared("fixtures/llama2-tokenizer/tokenizer.bin"));
  EXPECT_EQ(t.vocab_size(), 32000);
  // Reference ids from sentencepiece with the same vocabulary.
  EXPECT_EQ(t.encode("Hello world"), (std::vector<int64_t>{1, 15043, 3186}));
}

TEST(Llama2cTokenizer, MalformedFilesGiveErrors) {
  qt::TempDir d;
  const std::string full = qt::read_file(qt::stories("tok512.bin"));
  EXPECT_QERROR(text::Llama2cTokenizer(d.write("cut.bin", full.substr(0, full.size() - 3))), "cut.bin", "truncated");
  EXPECT_QERROR(text::Llama2cTokenizer(d.write("few.bin", full.substr(0, 4))), "few.bin", "only 0 tokens");
  std::string s = full;
  const int32_t neg = -1;
  std::memcpy(&s[8], &neg, 4);  // first token's length
  EXPECT_QERROR(text::Llama2cTokenizer(d.write("neg.bin", s)), "neg.bin", "length -1");
  EXPECT_QERROR(load_tokenizer(d.file("none.bin")), "no such file");
  EXPECT_QERROR(load_tokenizer(d.write("t.txt", "x")), "t.txt", "unknown tokenizer format");
}

TEST(SentencePieceTokenizer, Llama2ModelMatchesSentencepiece) {
  text::SentencePieceTokenizer t(qt::shared("fixtures/llama2-tokenizer/tokenizer.model"));
  EXPECT_EQ(t.vocab_size(), 32000);
  EXPECT_EQ(t.bos_id(), 1);
  EXPECT_EQ(t.eos_id(), 2);
  EXPECT_EQ(t.unk_id(), 0);
  EXPECT_EQ(t.pad_id(), -1);
  EXPECT_TRUE(t.add_bos_default());
  // Reference ids from the sentencepiece package (0.2.x) on the same model.
  using V = std::vector<int64_t>;
  EXPECT_EQ(t.encode("Hello world"), (V{1, 15043, 3186}));
  EXPECT_EQ(t.tokenize("Hello world  x"), (V{15043, 3186, 29871, 921}));
  EXPECT_EQ(t.tokenize("  lead"), (V{259, 3275}));
  EXPECT_EQ(t.tokenize("tab\there\n"), (V{4434, 12, 4150, 13}));
  EXPECT_EQ(t.tokenize("\xF0\x9F\x98\x80"), (V{29871, 243, 162, 155, 131}));  // emoji: byte fallback
  EXPECT_EQ(t.tokenize("a\xFF" "b"), (V{263, 30140, 29890}));  // a malformed byte is U+FFFD, as sentencepiece does
  EXPECT_EQ(t.tokenize(""), V{});
  EXPECT_EQ(t.decode({1, 15043, 3186, 2}), "Hello world");
  EXPECT_EQ(t.decode(t.tokenize("  two  spaces\n")), "  two  spaces\n");
  EXPECT_EQ(t.decode_piece(1, 15043), "Hello");
  EXPECT_EQ(t.decode_piece(15043, 3186), " world");
  EXPECT_EQ(t.decode_piece(5, 3 + 0x0A), "\n");
  // The llama2.c export of the same vocabulary agrees where run.c's merging is exact.
  text::Llama2cTokenizer l(qt::shared("fixtures/llama2-tokenizer/tokenizer.bin"));
  EXPECT_EQ(l.encode("Lily's mom said, \"Hi!\""), t.encode("Lily's mom said, \"Hi!\""));
}

TEST(SentencePieceTokenizer, MalformedModelsGiveErrors) {
  qt::TempDir d;
  const std::string full = qt::read_file(qt::shared("fixtures/llama2-tokenizer/tokenizer.model"));
  EXPECT_QERROR(text::SentencePieceTokenizer(d.write("cut.model", full.substr(0, full.size() / 2))), "cut.model",
                "malformed SentencePiece model");
  EXPECT_QERROR(text::SentencePieceTokenizer(d.write("junk.model", std::string(64, '\xFF'))), "junk.model", "malformed");
  EXPECT_QERROR(text::SentencePieceTokenizer(d.write("empty.model", "")), "empty.model", "no pieces");
  // A hand-built unigram model: pieces {"a", 0.0, NORMAL}, trainer_spec { model_type: UNIGRAM }.
  const std::string unigram = std::string("\x0A\x08\x0A\x01" "a" "\x15\x00\x00\x00\x00", 10) + "\x12\x02\x18\x01";
  EXPECT_QERROR(text::SentencePieceTokenizer(d.write("uni.model", unigram)), "uni.model", "unigram", "not supported");
}

TEST(BpeTokenizer, SmolLM2GgufMatchesTransformers) {
  auto t = load_tokenizer(qt::smollm2_gguf());
  EXPECT_STREQ(t->kind(), "bpe");
  EXPECT_EQ(t->vocab_size(), 49152);
  EXPECT_EQ(t->bos_id(), 1);
  EXPECT_EQ(t->eos_id(), 2);
  EXPECT_FALSE(t->add_bos_default());  // tokenizer.ggml.add_bos_token = false
  // Reference ids from transformers' tokenizer built from the same GGUF (AutoTokenizer, gguf_file=).
  using V = std::vector<int64_t>;
  EXPECT_EQ(t->encode("Once upon a time, 42 cats."), (V{6403, 1980, 253, 655, 28, 216, 36, 34, 7680, 30}));
  EXPECT_EQ(t->tokenize("<|im_start|>user\nIt's 3.14!<|im_end|>"), (V{1, 4093, 198, 1589, 506, 216, 35, 30, 33, 36, 17, 2}));
  EXPECT_EQ(t->tokenize("  two  spaces"), (V{216, 827, 216, 5600}));
  EXPECT_EQ(t->tokenize("caf\xC3\xA9 \xF0\x9F\x98\x80"), (V{83, 1939, 2756, 40303, 218}));
  EXPECT_EQ(t->decode(t->tokenize("caf\xC3\xA9 \xF0\x9F\x98\x80\n")), "caf\xC3\xA9 \xF0\x9F\x98\x80\n");
  EXPECT_EQ(t->decode({1, 4093, 2}), "user");  // special tokens left out
  EXPECT_EQ(t->decode_piece(4093, 198), "\n");
}

TEST(BpeTokenizer, HandWrittenTokenizerJson) {
  qt::TempDir d;
  // Byte-level vocabulary of a, b, c, space ("Ġ") and three merges; "<|x|>" is a special token.
  const std::string json = R"({
    "added_tokens": [{"id": 7, "content": "<|x|>", "special": true, "normalized": false,
                      "lstrip": false, "rstrip": false, "single_word": false}],
    "normalizer": null,
    "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true},
    "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<|x|>", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}], "pair": [],
                       "special_tokens": {"<|x|>": {"id": "<|x|>", "ids": [7], "tokens": ["<|x|>"]}}},
    "decoder": {"type": "ByteLevel"},
    "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "c": 2, "\u0120": 3, "ab": 4, "\u0120a": 5, "\u0120ab": 6},
              "merges": ["a b", "\u0120 a", "\u0120a b"]}
  })";
  BpeTokenizer t(d.write("tokenizer.json", json));
  using V = std::vector<int64_t>;
  // "abc ab": pieces "abc", " ab". In "Ġab" the pair (a, b) has rank 0 and wins over (Ġ, a),
  // leaving Ġ + ab, which no merge joins; in " ac" only (Ġ, a) applies, then nothing.
  EXPECT_EQ(t.tokenize("abc ab"), (V{4, 2, 3, 4}));
  EXPECT_EQ(t.tokenize(" ac"), (V{5, 2}));
  EXPECT_EQ(t.encode("abc ab"), (V{7, 4, 2, 3, 4}));  // the template adds <|x|>
  EXPECT_EQ(t.bos_id(), 7);
  EXPECT_EQ(t.tokenize("b<|x|>a"), (V{1, 7, 0}));
  EXPECT_EQ(t.decode({7, 4, 2, 6}), "abc ab");
  EXPECT_EQ(t.decode_piece(4, 6), " ab");
  EXPECT_EQ(t.vocab_size(), 8);
  // A character outside the vocabulary with no unk and no byte fallback is dropped, as HF does.
  EXPECT_EQ(t.tokenize("ad"), (V{0}));
  EXPECT_QERROR(t.encode("a", false, true), "tokenizer.json", "EOS", "none");
  // tokenizers numbers added tokens itself (the vocabulary's size, then on) and only warns where
  // the file says otherwise; so does qinterp. Checked with tokenizers 0.23: [1, 7, 0], 8 ids.
  std::string other = json;
  other.replace(other.find("\"id\": 7"), 7, "\"id\": 9");
  BpeTokenizer u(d.write("other.json", other));
  EXPECT_EQ(u.tokenize("b<|x|>a"), (V{1, 7, 0}));
  EXPECT_EQ(u.vocab_size(), 8);
}

TEST(BpeTokenizer, MalformedJsonGivesErrors) {
  qt::TempDir d;
  EXPECT_QERROR(load_tokenizer(d.write("a.json", "{not json")), "a.json", "not valid JSON");
  EXPECT_QERROR(load_tokenizer(d.write("b.json", "{}")), "b.json", "missing \"model\"");
  EXPECT_QERROR(load_tokenizer(d.write("c.json", R"({"model": {"type": "WordPiece", "vocab": {}}})")), "c.json",
                "WordPiece", "not supported");
  EXPECT_QERROR(load_tokenizer(d.write("d.json", R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a z"]}})")),
                "d.json", "outside the vocabulary");
  EXPECT_QERROR(load_tokenizer(d.write("e.json", R"({"model": {"type": "BPE", "vocab": {"a": -3}, "merges": []}})")),
                "e.json", "not a non-negative");
  EXPECT_QERROR(load_tokenizer(d.write("f.json", R"({"model": {"type": "BPE", "vocab": {}, "merges": []},
                                                     "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "(["},
                                                     "behavior": "Isolated"}})")),
                "f.json", "does not compile");
  EXPECT_QERROR(load_tokenizer(d.write("g.json", R"({"model": {"type": "BPE", "vocab": {}, "merges": []},
                                                     "normalizer": {"type": "Precompiled"}})")),
                "g.json", "Precompiled", "not supported");
  EXPECT_QERROR(load_tokenizer(d.path().string()), "no tokenizer.json");
}

TEST(Tokenizer, EncodeBatchPadsOnTheLeft) {
  text::Llama2cTokenizer t(qt::stories("tok512.bin"));
  const auto b = text::encode_batch(t, {"Once upon a time", "Once", ""});
  ASSERT_EQ(b.ids.sizes(), (std::vector<int64_t>{3, 5}));
  EXPECT_EQ(std::vector<int64_t>(b.ids[0].data_ptr<int64_t>(), b.ids[0].data_ptr<int64_t>() + 5),
            (std::vector<int64_t>{1, 403, 407, 261, 378}));
  EXPECT_EQ(b.ids[1][3].item<int64_t>(), 1);
  EXPECT_EQ(b.ids[1][0].item<int64_t>(), 2);  // no pad in this vocabulary: eos fills, masked out
  const auto counts = b.mask.sum(1);
  EXPECT_EQ(counts[0].item<int64_t>(), 5);
  EXPECT_EQ(counts[1].item<int64_t>(), 2);
  EXPECT_EQ(counts[2].item<int64_t>(), 1);
  EXPECT_FALSE(b.mask[1][2].item<bool>());
  const auto nb = text::encode_batch(t, {"Once"}, false, true, 0);
  EXPECT_EQ(nb.ids.sizes(), (std::vector<int64_t>{1, 2}));  // "Once" is one piece, then eos
  EXPECT_EQ(nb.ids[0][1].item<int64_t>(), 2);
  EXPECT_QERROR(BpeTokenizer(qt::stories("tok512.bin")), "tok512.bin", "not valid JSON");
}

TEST(Tokenizer, LoadsFromADirectory) {
  qt::TempDir d;
  std::filesystem::copy_file(qt::stories("tok512.bin"), d.file("tokenizer.bin"));
  EXPECT_STREQ(load_tokenizer(d.path().string())->kind(), "llama2c");
  std::filesystem::copy_file(qt::shared("fixtures/llama2-tokenizer/tokenizer.model"), d.file("tokenizer.model"));
  EXPECT_STREQ(load_tokenizer(d.path().string())->kind(), "sentencepiece");  // .model before .bin
}
