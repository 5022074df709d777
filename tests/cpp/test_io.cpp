// File readers: valid files round-trip; malformed ones give qinterp::Error naming file and problem.
#include <unistd.h>

#include "common.hpp"
#include "qinterp/io/gguf.hpp"
#include "qinterp/io/llama2c.hpp"
#include "qinterp/io/safetensors.hpp"

using namespace qinterp;
using qt::put;

namespace {

std::string safetensors_bytes(const std::string& header, const std::string& data) {
  std::string s;
  put<uint64_t>(s, header.size());
  return s + header + data;
}

}  // namespace

TEST(Safetensors, RoundTripWithMetadata) {
  qt::TempDir d;
  std::vector<float> a = {1.f, -2.f, 3.5f, 0.f, 5.f, 6.f};
  std::vector<uint16_t> b = {0x3c00, 0xc000};
  std::vector<io::TensorView> ts = {{"a", io::DType::F32, {2, 3}, a.data(), a.size() * 4},
                                    {"b.bias", io::DType::F16, {2}, b.data(), b.size() * 2}};
  io::write_safetensors(d.file("x.safetensors"), ts, {{"qinterp.spec", "nf4"}});
  io::SafetensorsFile f(d.file("x.safetensors"));
  EXPECT_EQ(f.names(), (std::vector<std::string>{"a", "b.bias"}));
  EXPECT_EQ(f.metadata().at("qinterp.spec"), "nf4");
  const auto& v = f.get("a");
  EXPECT_EQ(v.shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(std::memcmp(v.data, a.data(), 24), 0);
  EXPECT_EQ(f.get("b.bias").dtype, io::DType::F16);
  EXPECT_FALSE(std::filesystem::exists(d.file("x.safetensors.tmp")));
  EXPECT_QERROR(f.get("nope"), "x.safetensors", "nope");
}

TEST(Safetensors, MalformedFilesGiveErrors) {
  qt::TempDir d;
  const std::string data(24, '\0');
  const std::string ok = R"({"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}})";
  EXPECT_NO_THROW(io::SafetensorsFile(d.write("ok.st", safetensors_bytes(ok, data))));
  EXPECT_QERROR(io::SafetensorsFile(d.write("short.st", "abc")), "short.st", "header length needs 8");
  {
    std::string s;
    put<uint64_t>(s, 1000);
    EXPECT_QERROR(io::SafetensorsFile(d.write("len.st", s + "{}")), "len.st", "exceeds the file");
  }
  EXPECT_QERROR(io::SafetensorsFile(d.write("json.st", safetensors_bytes("{\"w\":", ""))), "json.st", "not valid JSON");
  EXPECT_QERROR(io::SafetensorsFile(d.write("arr.st", safetensors_bytes("[1,2]", ""))), "not a JSON object");
  EXPECT_QERROR(io::SafetensorsFile(d.write("dt.st", safetensors_bytes(
                    R"({"w":{"dtype":"Q9","shape":[2],"data_offsets":[0,8]}})", std::string(8, '\0')))),
                "dt.st", "'w'", "unknown dtype");
  EXPECT_QERROR(io::SafetensorsFile(d.write("past.st", safetensors_bytes(
                    R"({"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}})", std::string(20, '\0')))),
                "past.st", "outside the data region");
  EXPECT_QERROR(io::SafetensorsFile(d.write("size.st", safetensors_bytes(
                    R"({"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,24]}})", data))),
                "size.st", "shape and dtype need 16");
  EXPECT_QERROR(io::SafetensorsFile(d.write("neg.st", safetensors_bytes(
                    R"({"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", data))),
                "negative");
  EXPECT_QERROR(io::SafetensorsFile(d.write("keys.st", safetensors_bytes(R"({"w":{"dtype":"F32"}})", ""))),
                "needs dtype, shape and data_offsets");
  EXPECT_QERROR(io::SafetensorsFile(d.file("missing.st")), "missing.st", "cannot open");
  // Every truncation of a valid file is an error, never a crash.
  const std::string full = safetensors_bytes(ok, data);
  for (size_t n = 0; n < full.size(); ++n)
    EXPECT_THROW(io::SafetensorsFile(d.write("t.st", full.substr(0, n))), Error) << "length " << n;
}

// Messages quote bytes from the files they describe; whatever those bytes are, the message is
// well-formed UTF-8 (so that it prints, and converts to a Python str).
TEST(Error, MessagesAreWellFormedUtf8) {
  EXPECT_STREQ(Error("plain ascii").what(), "plain ascii");
  EXPECT_STREQ(Error("caf\xc3\xa9 \xe4\xb8\xad \xf0\x9f\x98\x80").what(), "caf\xc3\xa9 \xe4\xb8\xad \xf0\x9f\x98\x80");
  EXPECT_STREQ(Error("a\xff b").what(), "a\\xff b");                       // not a lead byte
  EXPECT_STREQ(Error("cut \xe2\x82").what(), "cut \\xe2\\x82");           // sequence cut short
  EXPECT_STREQ(Error("\xc0\xaf").what(), "\\xc0\\xaf");                    // overlong '/'
  EXPECT_STREQ(Error("\xed\xa0\x80").what(), "\\xed\\xa0\\x80");          // a UTF-16 surrogate
  EXPECT_STREQ(Error("\xf4\x90\x80\x80").what(), "\\xf4\\x90\\x80\\x80");  // past U+10FFFF
  // a safetensors header whose JSON breaks on a byte that is not UTF-8
  qt::TempDir d;
  const std::string bad = R"({"w\xef":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})";
  try {
    io::SafetensorsFile(d.write("u.st", safetensors_bytes(bad, std::string(4, '\0'))));
    ADD_FAILURE() << "a header with a non-UTF-8 key was accepted";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("u.st"), std::string::npos) << m;
    EXPECT_EQ(m, detail::printable_utf8(m)) << m;
  }
}

TEST(Safetensors, ShardedIndex) {
  qt::TempDir d;
  std::vector<float> a = {1, 2}, b = {3};
  io::write_safetensors(d.file("m-1.safetensors"), {{"a", io::DType::F32, {2}, a.data(), 8}});
  io::write_safetensors(d.file("m-2.safetensors"), {{"b", io::DType::F32, {1}, b.data(), 4}});
  d.write("model.safetensors.index.json",
          R"({"metadata":{},"weight_map":{"a":"m-1.safetensors","b":"m-2.safetensors"}})");
  io::SafetensorsCheckpoint ck(d.path().string());
  EXPECT_EQ(ck.names(), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(static_cast<const float*>(ck.get("b").data)[0], 3.f);
  d.write("model.safetensors.index.json", R"({"weight_map":{"a":"m-2.safetensors"}})");
  EXPECT_QERROR(io::SafetensorsCheckpoint(d.path().string()), "'a'", "does not contain it");
  d.write("model.safetensors.index.json", R"({"weight_map":{"a":"../m-1.safetensors"}})");
  EXPECT_QERROR(io::SafetensorsCheckpoint(d.path().string()), "plain file name");
}

namespace {

// A small but complete GGUF v3 file: metadata of several types, one Q8_0 and one F32 tensor.
std::string gguf_bytes(uint32_t version = 3, uint32_t q_type = 8, uint64_t q_offset = 0) {
  std::string s;
  auto str = [&](const std::string& x) {
    put<uint64_t>(s, x.size());
    s += x;
  };
  s += "GGUF";
  put<uint32_t>(s, version);
  put<uint64_t>(s, 2);  // tensors
  put<uint64_t>(s, 3);  // kv
  str("general.architecture");
  put<uint32_t>(s, 8);
  str("llama");
  str("llama.block_count");
  put<uint32_t>(s, 4);
  put<uint32_t>(s, 7);
  str("tokenizer.ggml.tokens");
  put<uint32_t>(s, 9);
  put<uint32_t>(s, 8);
  put<uint64_t>(s, 2);
  str("a");
  str("bc");
  str("q");
  put<uint32_t>(s, 2);
  put<int64_t>(s, 32);
  put<int64_t>(s, 2);
  put<uint32_t>(s, q_type);
  put<uint64_t>(s, q_offset);
  str("f");
  put<uint32_t>(s, 1);
  put<int64_t>(s, 3);
  put<uint32_t>(s, 0);
  put<uint64_t>(s, 96);  // 68 bytes of Q8_0, aligned up to 96
  s.append((32 - s.size() % 32) % 32, '\0');
  std::string data(96 + 12, '\0');
  const uint16_t half_one = 0x3c00;
  std::memcpy(&data[0], &half_one, 2);
  for (int i = 0; i < 32; ++i) data[2 + i] = static_cast<char>(i - 16);
  const float fv[3] = {1.5f, -2.f, 0.25f};
  std::memcpy(&data[96], fv, 12);
  return s + data;
}

}  // namespace

TEST(Gguf, ReadsMetadataAndTensors) {
  qt::TempDir d;
  io::GgufFile f(d.write("m.gguf", gguf_bytes()));
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.get_string("general.architecture"), "llama");
  EXPECT_EQ(f.get_int("llama.block_count"), 7);
  EXPECT_EQ(f.get("tokenizer.ggml.tokens").array.size(), 2u);
  EXPECT_EQ(f.get("tokenizer.ggml.tokens").array[1].s, "bc");
  ASSERT_EQ(f.tensors().size(), 2u);
  const auto* q = f.find_tensor("q");
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(q->torch_shape(), (std::vector<int64_t>{2, 32}));
  EXPECT_EQ(q->nbytes, 68u);
  EXPECT_EQ(reinterpret_cast<const float*>(f.find_tensor("f")->data)[2], 0.25f);
  EXPECT_QERROR(f.get("nope"), "m.gguf", "'nope' is missing");
  EXPECT_QERROR(f.get_string("llama.block_count"), "not a string");
}

TEST(Gguf, MalformedFilesGiveErrors) {
  qt::TempDir d;
  std::string bad = gguf_bytes();
  bad[0] = 'X';
  EXPECT_QERROR(io::GgufFile(d.write("magic.gguf", bad)), "magic.gguf", "not a GGUF file");
  EXPECT_QERROR(io::GgufFile(d.write("v1.gguf", gguf_bytes(1))), "version 1");
  EXPECT_QERROR(io::GgufFile(d.write("type.gguf", gguf_bytes(3, 99))), "'q'", "ggml type 99");
  EXPECT_QERROR(io::GgufFile(d.write("align.gguf", gguf_bytes(3, 8, 4))), "not aligned");
  EXPECT_QERROR(io::GgufFile(d.write("off.gguf", gguf_bytes(3, 8, 1 << 20))), "'q'", "past the end");
  {  // a string length far beyond the file
    std::string s = gguf_bytes();
    const uint64_t huge = 1ull << 40;
    std::memcpy(&s[24], &huge, 8);
    EXPECT_QERROR(io::GgufFile(d.write("str.gguf", s)), "str.gguf", "exceeds the file");
  }
  {  // an array claiming more elements than bytes remain
    std::string s = gguf_bytes();
    const size_t at = s.find("tokenizer.ggml.tokens") + 21 + 4 + 4;
    const uint64_t huge = 1ull << 50;
    std::memcpy(&s[at], &huge, 8);
    EXPECT_QERROR(io::GgufFile(d.write("arr.gguf", s)), "array elements");
  }
  // Every truncation is an error, never a crash or a hang.
  const std::string full = gguf_bytes();
  for (size_t n = 0; n < full.size(); ++n)
    EXPECT_THROW(io::GgufFile(d.write("t.gguf", full.substr(0, n))), Error) << "length " << n;
}

TEST(Gguf, SmolLM2Metadata) {
  io::GgufFile f(qt::smollm2_gguf());
  EXPECT_EQ(f.get_string("general.architecture"), "llama");
  EXPECT_EQ(f.get_int("llama.block_count"), 30);
  EXPECT_EQ(f.get_int("llama.feed_forward_length"), 1536);
  EXPECT_EQ(f.get("tokenizer.ggml.tokens").array.size(), 49152u);
  EXPECT_EQ(f.tensors().size(), 272u);
  EXPECT_EQ(f.find_tensor("token_embd.weight")->type, io::GgmlType::Q8_0);
  EXPECT_EQ(f.find_tensor("blk.0.ffn_gate.weight")->type, io::GgmlType::Q4_1);
}

TEST(Llama2c, ReadsStories260K) {
  io::Llama2cFile f(qt::stories("stories260K.bin"));
  const auto& c = f.config();
  EXPECT_EQ(c.dim, 64);
  EXPECT_EQ(c.hidden_dim, 172);
  EXPECT_EQ(c.n_layers, 5);
  EXPECT_EQ(c.n_heads, 8);
  EXPECT_EQ(c.n_kv_heads, 4);
  EXPECT_EQ(c.vocab_size, 512);
  EXPECT_EQ(c.seq_len, 512);
  EXPECT_TRUE(c.shared_classifier);
  EXPECT_EQ(f.wcls(), f.token_embedding());
}

TEST(Llama2c, MalformedFilesGiveErrors) {
  qt::TempDir d;
  const std::string full = qt::read_file(qt::stories("stories260K.bin"));
  EXPECT_QERROR(io::Llama2cFile(d.write("trunc.bin", full.substr(0, full.size() - 4))), "trunc.bin", "truncated");
  EXPECT_QERROR(io::Llama2cFile(d.write("long.bin", full + "xxxx")), "long.bin", "needs exactly");
  EXPECT_QERROR(io::Llama2cFile(d.write("hdr.bin", full.substr(0, 10))), "hdr.bin", "truncated");
  std::string s = full;
  const int32_t bad_heads = 7;  // 64 is not divisible by 7
  std::memcpy(&s[12], &bad_heads, 4);
  EXPECT_QERROR(io::Llama2cFile(d.write("heads.bin", s)), "heads.bin", "even-sized heads");
  s = full;
  const int32_t neg = -5;
  std::memcpy(&s[0], &neg, 4);
  EXPECT_QERROR(io::Llama2cFile(d.write("neg.bin", s)), "positive");
  EXPECT_QERROR(io::Llama2cFile(d.write("v1.bin", "ak42" + std::string(300, '\0'))), "version-1/2");
}
