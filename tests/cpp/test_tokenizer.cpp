// The llama2.c tokenizer against the ids and text of the reference implementation.
#include "common.hpp"
#include "qinterp/text/tokenizer.hpp"

using namespace qinterp;

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
  EXPECT_QERROR(load_tokenizer(d.write("t.json", "{}")), "not supported yet");
}
