// The `qinterp` command-line tool.
//   qinterp generate --model PATH [--tokenizer PATH] --prompt TEXT [--max-new-tokens N]
//                    [--temperature T] [--top-p P] [--seed S] [--device D] [--dtype DT]
//   qinterp inspect --model PATH [--quant SPEC]
//   qinterp quantize --model PATH --quant SPEC --out DIR [--calib CSV --tokenizer PATH]
#include <ATen/ATen.h>

#include <cstdio>
#include <cmath>
#include <iostream>
#include <map>
#include <vector>
#include <string>

#include "../src/io/paths.hpp"
#include "qinterp/qinterp.hpp"

namespace {

const char* kUsage =
    "usage: qinterp <command> [options]\n"
    "commands:\n"
    "  generate --model PATH [--tokenizer PATH] --prompt TEXT [--max-new-tokens N (32)]\n"
    "           [--temperature T (0 = greedy)] [--top-p P (1)] [--seed S (42)]\n"
    "           [--device cpu|cuda] [--dtype fp32|fp16|bf16] [--quant SPEC]\n"
    "      prints the prompt's continuation as it is generated\n"
    "  inspect --model PATH [--quant SPEC]\n"
    "      prints the architecture, tensor dtypes, memory and bytes per weight\n"
    "  quantize --model PATH --quant SPEC --out DIR [--device cpu|cuda]\n"
    "           [--calib CSV (GPTQ: prompts in the first column)] [--tokenizer PATH]\n"
    "      quantizes the block linear layers and saves DIR/model.safetensors (load it with\n"
    "      load_model(DIR)); SPEC: nf4 fp4 int8 rtn8 rtn4 gptq4 gptq3 gptq2 [:key=value,...]\n"
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

// A whole number in [lo, hi] (the options are counts and seeds: a fraction or an overflow is a
// typo, not something to round).
int64_t to_int(const std::string& s, const char* what, int64_t lo, int64_t hi) {
  const double v = to_double(s, what);
  if (!(v == std::floor(v)) || v < static_cast<double>(lo) || v > static_cast<double>(hi))
    qinterp::fail("--", what, " expects a whole number from ", lo, " to ", hi, ", got '", s, "'");
  return static_cast<int64_t>(v);
}

// The tokenizer for a model: --tokenizer, else the GGUF's own vocabulary, else the model
// directory, else tokenizer.json / tokenizer.model / tokenizer.bin / tok512.bin beside the model.
std::string find_tokenizer(const Args& a, const std::string& model) {
  if (a.has("tokenizer")) return a.get("tokenizer");
  namespace paths = qinterp::io::paths;
  if (paths::ends_with(model, ".gguf") || paths::is_dir(model)) return model;
  const std::string dir = paths::parent(model);
  for (const char* n : {"tokenizer.json", "tokenizer.model", "tokenizer.bin", "tok512.bin"})
    if (paths::exists(paths::join(dir, n))) return paths::join(dir, n);
  qinterp::fail("no tokenizer found beside ", model, "; pass --tokenizer PATH");
}

int cmd_generate(const Args& a) {
  if (!a.has("model") || !a.has("prompt")) qinterp::fail("generate needs --model and --prompt\n", kUsage);
  qinterp::LoadOptions lo;
  lo.device = a.get("device", "cpu");
  lo.dtype = a.get("dtype", "");
  lo.quant = a.get("quant", "");
  auto model = qinterp::load_model(a.get("model"), lo);
  auto tok = qinterp::load_tokenizer(find_tokenizer(a, a.get("model")));
  const std::string prompt = a.get("prompt");
  std::vector<int64_t> ids = tok->encode(prompt);  // BOS as the model's files ask
  qinterp::model::GenerateOptions go;
  go.max_new_tokens = to_int(a.get("max-new-tokens", "32"), "max-new-tokens", 0, int64_t{1} << 40);
  go.temperature = to_double(a.get("temperature", "0"), "temperature");
  go.top_p = to_double(a.get("top-p", "1"), "top-p");
  go.seed = static_cast<uint64_t>(to_int(a.get("seed", "42"), "seed", 0, int64_t{1} << 53));
  go.stop_tokens = {tok->bos_id()};  // llama2.c models delimit stories with BOS
  const at::Tensor in = at::tensor(ids, at::kLong).unsqueeze(0);
  const at::Tensor out = model->generate(in, go);
  std::string text;
  int64_t prev = -1;
  for (int64_t i = 0; i < out.size(1); ++i) {
    const int64_t id = out[0][i].item<int64_t>();
    const bool special = id == tok->bos_id() || id == tok->eos_id();
    if (special && i >= static_cast<int64_t>(ids.size())) break;
    if (!special) text += tok->decode_piece(prev < 0 ? tok->bos_id() : prev, id);
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
  qinterp::LoadOptions lo;
  lo.quant = a.get("quant", "");
  auto model = qinterp::load_model(path, lo);
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
            << "quantization: " << (model->quant_spec().quantized() ? model->quant_spec().str() : "none") << "\n";
  {  // bytes per weight of the block linear layers (what quantization changes)
    int64_t n = 0, bytes = 0;
    for (int64_t l = 0; l < c.num_layers; ++l)
      for (int k = 0; k < qinterp::model::kNumLinear; ++k) {
        if (auto q = model->qlinear(l, k)) {
          n += q->weight().numel();
          bytes += q->weight().nbytes();
        } else {
          const at::Tensor w = model->linear_weight(l, k);
          if (!w.defined()) continue;
          n += w.numel();
          bytes += w.numel() * static_cast<int64_t>(w.element_size());
        }
      }
    char buf[160];
    std::snprintf(buf, sizeof buf, "%.4f bytes/weight over %lld weights (%.2f bits; fp16: 2 bytes)", n ? double(bytes) / n : 0.0,
                  static_cast<long long>(n), n ? 8.0 * bytes / n : 0.0);
    std::cout << "block linears: " << buf << "\n"
              << "total:        " << human(static_cast<double>(model->parameter_bytes())) << " vs "
              << human(model->num_parameters() * 2.0) << " in fp16 ("
              << static_cast<int>(100.0 * model->parameter_bytes() / (model->num_parameters() * 2.0) + 0.5) << "%)\n";
  }
  std::cout << "hook points:  " << qinterp::model::Hooks::all_names(c.num_layers).size()
            << " (blocks.{0.." << c.num_layers - 1 << "}.*, hook_logits)\n";
  return 0;
}

// Minimal RFC 4180 reader: the first field of every record after the header.
std::vector<std::string> csv_first_column(const std::string& path) {
  const std::string text = [&] {
    qinterp::io::MappedFile f(path);
    return std::string(reinterpret_cast<const char*>(f.data()), f.size());
  }();
  std::vector<std::string> out;
  std::string field;
  bool quoted = false, first = true, header = true;
  size_t i = 0;
  auto end_record = [&] {
    if (!header && !(first && field.empty())) out.push_back(field);
    header = false;
    field.clear();
    first = true;
  };
  for (; i < text.size(); ++i) {
    const char ch = text[i];
    if (quoted) {
      if (ch == '"') {
        if (i + 1 < text.size() && text[i + 1] == '"') field += '"', ++i;
        else quoted = false;
      } else if (first) {
        field += ch;
      }
    } else if (ch == '"') {
      quoted = true;
    } else if (ch == ',') {
      first = false;
    } else if (ch == '\n') {
      end_record();
    } else if (ch != '\r' && first) {
      field += ch;
    }
  }
  if (quoted) qinterp::fail(path, ": unterminated quoted field at the end of the file");
  end_record();
  if (out.empty()) qinterp::fail(path, ": no records after the header");
  return out;
}

int cmd_quantize(const Args& a) {
  if (!a.has("model") || !a.has("quant") || !a.has("out"))
    qinterp::fail("quantize needs --model, --quant and --out\n", kUsage);
  const auto spec = qinterp::quant::parse_quant_spec(a.get("quant"));
  if (!spec.quantized()) qinterp::fail("quantize: '", spec.str(), "' is not a quantized format");
  // Make the output folder first: an unwritable --out should fail now, not after the work.
  qinterp::io::paths::make_dirs(a.get("out"));
  qinterp::LoadOptions lo;
  lo.device = a.get("device", "cpu");
  auto model = qinterp::load_model(a.get("model"), lo);
  at::Tensor calib;
  if (spec.method == qinterp::quant::Method::GPTQ) {
    if (!a.has("calib")) qinterp::fail("quantize ", spec.str(), ": GPTQ needs --calib CSV (prompts in the first column)");
    auto tok = qinterp::load_tokenizer(find_tokenizer(a, a.get("model")));
    std::vector<int64_t> ids;
    for (const auto& prompt : csv_first_column(a.get("calib"))) {
      auto t = tok->encode(prompt);
      ids.insert(ids.end(), t.begin(), t.end());
    }
    const int64_t seqlen = std::min<int64_t>(spec.seqlen, model->config().max_seq_len);
    calib = qinterp::model::calibration_windows(at::tensor(ids, at::kLong), {}, spec.calib, seqlen);
    std::cerr << "[quantize] calibration: " << calib.size(0) << " windows of " << calib.size(1) << " tokens from "
              << a.get("calib") << "\n";
  }
  qinterp::model::quantize_model(*model, spec, calib, [](int64_t d, int64_t t) {
    std::cerr << "[quantize] layer " << d << "/" << t << "\n";
  });
  qinterp::model::save_model(*model, a.get("out"));
  std::cout << "saved " << spec.str() << " to " << a.get("out") << "/model.safetensors ("
            << human(static_cast<double>(model->parameter_bytes())) << ")\n";
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
    if (cmd == "quantize") return cmd_quantize(parse(argc, argv, 2));
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
