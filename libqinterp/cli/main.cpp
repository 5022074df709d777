// The `qinterp` command-line tool.
//   qinterp generate --model PATH [--tokenizer PATH] --prompt TEXT [--max-new-tokens N]
//                    [--temperature T] [--top-p P] [--seed S] [--device D] [--dtype DT]
//   qinterp inspect --model PATH
#include <ATen/ATen.h>

#include <cstdio>
#include <iostream>
#include <map>
#include <string>

#include "../src/io/paths.hpp"
#include "qinterp/qinterp.hpp"

namespace {

const char* kUsage =
    "usage: qinterp <command> [options]\n"
    "commands:\n"
    "  generate --model PATH [--tokenizer PATH] --prompt TEXT [--max-new-tokens N (32)]\n"
    "           [--temperature T (0 = greedy)] [--top-p P (1)] [--seed S (42)]\n"
    "           [--device cpu|cuda] [--dtype fp32|fp16|bf16]\n"
    "      prints the prompt's continuation as it is generated\n"
    "  inspect --model PATH\n"
    "      prints the architecture, tensor dtypes and memory\n"
    "  version\n";

struct Args {
  std::map<std::string, std::string> kv;
  std::string get(const std::string& k, const std::string& d = "") const {
    auto it = kv.find(k);
    return it == kv.end() ? d : it->second;
  }
  bool has(const std::string& k) const { return kv.count(k) != 0; }
};

Args parse(int argc, char** argv, int from) {
  Args a;
  for (int i = from; i < argc; ++i) {
    std::string k = argv[i];
    if (k.rfind("--", 0) != 0) qinterp::fail("unexpected argument '", k, "'\n", kUsage);
    if (i + 1 >= argc) qinterp::fail("option ", k, " needs a value");
    a.kv[k.substr(2)] = argv[++i];
  }
  return a;
}

double to_double(const std::string& s, const char* what) {
  try {
    size_t n;
    double v = std::stod(s, &n);
    if (n == s.size()) return v;
  } catch (...) {
  }
  qinterp::fail("--", what, " expects a number, got '", s, "'");
}

// The tokenizer for a model: --tokenizer, else tokenizer.bin / tok512.bin beside the model.
std::string find_tokenizer(const Args& a, const std::string& model) {
  if (a.has("tokenizer")) return a.get("tokenizer");
  namespace paths = qinterp::io::paths;
  const std::string dir = paths::parent(model);
  for (const char* n : {"tokenizer.bin", "tok512.bin"})
    if (paths::exists(paths::join(dir, n))) return paths::join(dir, n);
  qinterp::fail("no tokenizer found beside ", model, "; pass --tokenizer PATH");
}

int cmd_generate(const Args& a) {
  if (!a.has("model") || !a.has("prompt")) qinterp::fail("generate needs --model and --prompt\n", kUsage);
  qinterp::LoadOptions lo;
  lo.device = a.get("device", "cpu");
  lo.dtype = a.get("dtype", "");
  auto model = qinterp::load_model(a.get("model"), lo);
  auto tok = qinterp::load_tokenizer(find_tokenizer(a, a.get("model")));
  const std::string prompt = a.get("prompt");
  std::vector<int64_t> ids = tok->encode(prompt, true);
  qinterp::model::GenerateOptions go;
  go.max_new_tokens = static_cast<int64_t>(to_double(a.get("max-new-tokens", "32"), "max-new-tokens"));
  go.temperature = to_double(a.get("temperature", "0"), "temperature");
  go.top_p = to_double(a.get("top-p", "1"), "top-p");
  go.seed = static_cast<uint64_t>(to_double(a.get("seed", "42"), "seed"));
  go.stop_tokens = {tok->bos_id()};  // llama2.c models delimit stories with BOS
  const at::Tensor in = at::tensor(ids, at::kLong).unsqueeze(0);
  const at::Tensor out = model->generate(in, go);
  std::string text;
  int64_t prev = -1;
  for (int64_t i = 0; i < out.size(1); ++i) {
    const int64_t id = out[0][i].item<int64_t>();
    if (i > 0 && (id == tok->bos_id() || id == tok->eos_id()) && i >= static_cast<int64_t>(ids.size())) break;
    if (i > 0) text += tok->decode_piece(prev, id);
    prev = id;
  }
  std::cout << text << std::endl;
  return 0;
}

std::string human(double bytes) {
  char buf[64];
  const char* u[] = {"B", "KiB", "MiB", "GiB"};
  int i = 0;
  while (bytes >= 1024 && i < 3) {
    bytes /= 1024;
    ++i;
  }
  std::snprintf(buf, sizeof buf, "%.2f %s", bytes, u[i]);
  return buf;
}

int cmd_inspect(const Args& a) {
  if (!a.has("model")) qinterp::fail("inspect needs --model\n", kUsage);
  const std::string path = a.get("model");
  auto model = qinterp::load_model(path);
  const auto& c = model->config();
  std::cout << "model:        " << path << "\n"
            << "format:       " << c.format << "\n"
            << "architecture: " << c.summary() << "\n";
  if (c.format == "gguf") {  // the file's own storage types, before decoding
    qinterp::io::GgufFile f(path);
    std::map<std::string, std::pair<int, int64_t>> types;
    int64_t file_bytes = 0;
    for (const auto& t : f.tensors()) {
      auto& e = types[qinterp::io::ggml_type_name(t.type)];
      ++e.first;
      e.second += t.numel();
      file_bytes += static_cast<int64_t>(t.nbytes);
    }
    std::cout << "stored as:   ";
    for (const auto& kv : types) std::cout << " " << kv.first << " x" << kv.second.first;
    std::cout << " (" << human(static_cast<double>(file_bytes)) << " of tensor data)\n";
  }
  std::map<std::string, std::pair<int, int64_t>> dtypes;
  for (const auto& p : model->named_parameters()) {
    auto& e = dtypes[std::string(c10::toString(p.tensor.scalar_type()))];
    ++e.first;
    e.second += p.tensor.numel();
  }
  std::cout << "loaded as:   ";
  for (const auto& kv : dtypes) std::cout << " " << kv.first << " x" << kv.second.first << " (" << kv.second.second << " values)";
  std::cout << "\nparameters:   " << model->num_parameters() << "\n"
            << "memory:       " << human(static_cast<double>(model->parameter_bytes())) << " as loaded; "
            << human(model->num_parameters() * 2.0) << " in fp16\n"
            << "hook points:  " << qinterp::model::Hooks::all_names(c.num_layers).size()
            << " (blocks.{0.." << c.num_layers - 1 << "}.*, hook_logits)\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << kUsage;
    return 2;
  }
  const std::string cmd = argv[1];
  try {
    if (cmd == "generate") return cmd_generate(parse(argc, argv, 2));
    if (cmd == "inspect") return cmd_inspect(parse(argc, argv, 2));
    if (cmd == "version") {
      std::cout << "qinterp " << qinterp::version() << "\n";
      return 0;
    }
    if (cmd == "-h" || cmd == "--help" || cmd == "help") {
      std::cout << kUsage;
      return 0;
    }
    std::cerr << "qinterp: unknown command '" << cmd << "'\n" << kUsage;
    return 2;
  } catch (const qinterp::Error& e) {
    std::cerr << "qinterp: error: " << e.what() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "qinterp: internal error: " << e.what() << "\n";
    return 3;
  }
}
