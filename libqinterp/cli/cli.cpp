// The `qinterp` command-line tool: a client of the public C++ API. `qinterp help` lists the
// commands; `qinterp CMD --help` describes one. Built into the `qinterp` executable and into the
// Python module (python -m qinterp, where torchrun's processes pass a Parallel for `run`).
#include "cli.hpp"

#include <ATen/ATen.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "qinterp/io/paths.hpp"
#include "qinterp/qinterp.hpp"

namespace {

namespace paths = qinterp::io::paths;

struct Opt {
  const char* name;
  const char* help;
  bool flag = false;      // takes no value
  bool repeat = false;    // may be given several times
};

struct Command {
  const char* name;
  const char* synopsis;
  const char* about;
  std::vector<Opt> opts;
  bool positional = false;  // one positional argument (report's file)
};

const char* kSpecs = "fp32 fp16 bf16 nf4 fp4 int8 rtn8 rtn4 rtn3 rtn2 gptq8 gptq4 gptq3 gptq2 [:key=value,...]";

const std::vector<Command>& commands() {
  static const std::vector<Command> c = {
      {"generate", "generate --model PATH --prompt TEXT [options]",
       "Prints the prompt's continuation (greedy by default) once it is generated.",
       {{"model", "model file or directory"},
        {"tokenizer", "tokenizer (default: the model's own, or one beside it)"},
        {"prompt", "the text to continue (must encode to at least one token)"},
        {"max-new-tokens", "tokens to generate (32)"},
        {"temperature", "0 = greedy (default); > 0 samples"},
        {"top-p", "nucleus sampling mass in (0, 1] (1)"},
        {"seed", "sampling seed (42)"},
        {"device", "cpu (default), cuda, cuda:N"},
        {"dtype", "fp32 (default), fp16, bf16"},
        {"quant", "quantize on load: a spec"}}},
      {"inspect", "inspect --model PATH [--quant SPEC]",
       "Prints the architecture, tensor dtypes, memory and bytes per weight.",
       {{"model", "model file or directory"}, {"quant", "quantize on load first"}}},
      {"quantize", "quantize --model PATH --quant SPEC --out DIR [options]",
       "Quantizes the block linear layers and saves DIR/model.safetensors with the model's tokenizer "
       "(load it with --model DIR).",
       {{"model", "model file or directory"},
        {"quant", "the spec"},
        {"out", "output folder (created; must not be a file)"},
        {"device", "cpu (default), cuda, cuda:N"},
        {"calib", "GPTQ: calibration text, a text file or a CSV (its prompt column, else the first)"},
        {"calib-seed", "seed of the random calibration windows (0, as GPTQ's loaders)"},
        {"tokenizer", "tokenizer (default: the model's own, or one beside it)"}}},
      {"perplexity", "perplexity --model PATH --quant SPEC... [--dataset wikitext2|FILE] [--protocol gptq|llamacpp] [options]",
       "Perplexity per precision under a named protocol: gptq (non-overlapping seqlen windows, every "
       "position scored; the default) or llamacpp (512-token chunks, BOS first, second half scored).",
       {{"model", "model file or directory"},
        {"tokenizer", "tokenizer (default: the model's own, or one beside it)"},
        {"quant", "a precision: fp32/fp16/bf16 or a quantization spec (repeat for several; default fp32)", false, true},
        {"dataset", "wikitext2 (default; $QINTERP_WIKITEXT2 or ../shared/datasets/wikitext2/wiki.test.raw) or a text file"},
        {"protocol", "gptq (default) or llamacpp"},
        {"seqlen", "window length (gptq: min(2048, the model's context); llamacpp: 512)"},
        {"max-windows", "evaluate only the first N windows (default: all)"},
        {"batch", "windows per forward pass (1)"},
        {"calib", "GPTQ calibration: a text file or a CSV (its prompt column); default the paper-1 BoolQ prompts"},
        {"data", "folder of the paper-1 CSVs for the default calibration ($QINTERP_DATA or ../shared/datasets/paper1)"},
        {"device", "cpu (default), cuda, cuda:N"},
        {"name", "the model's group name in --out (default: the file's stem)"},
        {"out", "also write the results into this HDF5 file"},
        {"quiet", "no progress output", true}}},
      {"speed", "speed --model PATH --quant SPEC... [--prompt-tokens 256] [--new-tokens 512] [options]",
       "Weight bytes, peak memory, prefill time and decoding tokens/s per precision at batch 1 (greedy, EOS "
       "ignored, after a warm-up): the layout of paper 2's Table 8.",
       {{"model", "model file or directory"},
        {"quant", "a precision (repeat for several; default fp32)", false, true},
        {"prompt-tokens", "prompt length (256)"},
        {"new-tokens", "tokens to decode (512)"},
        {"warmup", "untimed decode steps first (8)"},
        {"calib", "GPTQ calibration: a text file or a CSV (its prompt column); default the paper-1 BoolQ prompts"},
        {"data", "folder of the paper-1 CSVs for the default calibration ($QINTERP_DATA or ../shared/datasets/paper1)"},
        {"tokenizer", "tokenizer for GPTQ's calibration text (default: the model's own, or one beside it)"},
        {"device", "cpu (default), cuda, cuda:N"},
        {"name", "the model's group name in --out (default: the file's stem)"},
        {"out", "also write the results into this HDF5 file"}}},
      {"run", "run --model PATH --quant SPEC... --task NAME... --out FILE.h5 [options]",
       "The paper's protocol: predictions and calibration, dead neurons, statistics, correlation, drift "
       "and IG salience for every precision and task, into one HDF5 file. Resumes an interrupted run.",
       {{"model", "model file or directory"},
        {"tokenizer", "tokenizer (default: the model's own, or one beside it)"},
        {"name", "the model's group name in the file (default: the file's stem)"},
        {"quant", "a precision: fp32/fp16/bf16 or a quantization spec (repeat for several)", false, true},
        {"task", "boolq, piqa, hellaswag, toxicity, or a CSV path (repeat for several)", false, true},
        {"data", "folder of the built-in tasks' CSVs (default $QINTERP_DATA or ../shared/datasets/paper1)"},
        {"template", "prompt template for the tasks, {} = the CSV prompt (default: BoolQ's for boolq, else none)"},
        {"labels", "label words, comma-separated (default: the task's, or its distinct gold answers)"},
        {"prompt-column", "the CSV's prompt column (prompt)"},
        {"gold-column", "the CSV's gold column (gold)"},
        {"analyses", "all (default) or a comma list of predictions, dead, stats, correlation, drift, salient"},
        {"layers", "hooked blocks, comma-separated (default 0, 14 (or the middle), last)"},
        {"mode", "clean (default) or paper (the authors' code: fp16 around quantized layers, raw prompts for "
                 "activations, re-tokenized IG target)"},
        {"scoring", "paper (substring of the greedy token; default) or labels (argmax over the label words)"},
        {"chat", "none (default) or auto (wrap prompts in the model's chat template)"},
        {"limit", "examples per task (default: all)"},
        {"ig-limit", "examples per task for IG (default: --limit)"},
        {"batch", "batch size (32)"},
        {"ig-steps", "IG steps (50)"},
        {"ig-method", "gausslegendre (default), riemann_left/right/middle/trapezoid"},
        {"ig-target", "generated or retokenized (default: by mode)"},
        {"device", "cpu (default), cuda, cuda:N"},
        {"seed", "seed (42)"},
        {"checkpoint-seconds", "seconds between saved states (60)"},
        {"out", "the HDF5 file (created, or resumed when it holds this run)"},
        {"restart", "replace earlier results of the same groups instead of resuming", true},
        {"quiet", "no progress output", true}}},
      {"report", "report FILE.h5 [--out DIR] [--latex] [--figures]",
       "Prints the paper's tables from a run's file; with --out writes report.md and CSV (and LaTeX) "
       "tables; --figures draws the figures with the Python package (qinterp.plots).",
       {{"out", "folder for report.md, the CSV tables and the figures"},
        {"latex", "also write LaTeX tables", true},
        {"figures", "draw the paper's figures (needs python3 with qinterp and matplotlib)", true}},
       true},
      {"version", "version", "Prints the version.", {}},
  };
  return c;
}

std::string usage() {
  std::string s = "usage: qinterp <command> [options]   (qinterp <command> --help for its options)\ncommands:\n";
  for (const auto& c : commands()) s += "  " + std::string(c.synopsis) + "\n      " + c.about + "\n";
  s += "specs: " + std::string(kSpecs) + "\n";
  return s;
}

std::string help(const Command& c) {
  std::string s = "usage: qinterp " + std::string(c.synopsis) + "\n" + c.about + "\n";
  if (!c.opts.empty()) s += "options:\n";
  for (const auto& o : c.opts) {
    std::string left = "  --" + std::string(o.name) + (o.flag ? "" : " VALUE");
    if (left.size() < 26) left += std::string(26 - left.size(), ' ');
    s += left + " " + o.help + (o.repeat ? " [repeatable]" : "") + "\n";
  }
  if (std::set<std::string>{"run", "quantize", "generate", "perplexity", "speed"}.count(c.name))
    s += "specs: " + std::string(kSpecs) + "\n";
  return s;
}

struct Args {
  std::map<std::string, std::vector<std::string>> kv;
  std::string positional;
  bool has(const std::string& k) const { return kv.count(k) != 0; }
  std::string get(const std::string& k, const std::string& d = "") const {
    auto it = kv.find(k);
    return it == kv.end() ? d : it->second.back();
  }
  const std::vector<std::string>& all(const std::string& k) const {
    static const std::vector<std::string> none;
    auto it = kv.find(k);
    return it == kv.end() ? none : it->second;
  }
};

struct HelpRequested {};

Args parse(const Command& c, int argc, char** argv) {
  Args a;
  for (int i = 2; i < argc; ++i) {
    std::string k = argv[i];
    if (k == "--help" || k == "-h") throw HelpRequested{};
    if (k.rfind("--", 0) != 0) {
      if (c.positional && a.positional.empty()) {
        a.positional = k;
        continue;
      }
      qinterp::fail(c.name, ": unexpected argument '", k, "' (see qinterp ", c.name, " --help)");
    }
    std::string name = k.substr(2), value;
    const size_t eq = name.find('=');
    const bool inline_value = eq != std::string::npos;
    if (inline_value) value = name.substr(eq + 1), name = name.substr(0, eq);
    const Opt* o = nullptr;
    for (const auto& x : c.opts)
      if (name == x.name) o = &x;
    if (!o) qinterp::fail(c.name, ": unknown option --", name, " (see qinterp ", c.name, " --help)");
    if (o->flag) {
      if (inline_value) qinterp::fail(c.name, ": --", name, " takes no value");
      value = "1";
    } else if (!inline_value) {
      if (i + 1 >= argc) qinterp::fail(c.name, ": option --", name, " needs a value");
      value = argv[++i];
    }
    if (a.kv.count(name) && !o->repeat) qinterp::fail(c.name, ": --", name, " is given twice");
    a.kv[name].push_back(value);
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

// A whole number in [lo, hi] (counts and seeds: a fraction or an overflow is a typo).
int64_t to_int(const std::string& s, const char* what, int64_t lo, int64_t hi) {
  const double v = to_double(s, what);
  if (!(v == std::floor(v)) || v < static_cast<double>(lo) || v > static_cast<double>(hi))
    qinterp::fail("--", what, " expects a whole number from ", lo, " to ", hi, ", got '", s, "'");
  return static_cast<int64_t>(v);
}

void need(const Args& a, const Command& c, std::initializer_list<const char*> names) {
  for (const char* n : names)
    if (!a.has(n)) qinterp::fail(c.name, " needs --", n, " (see qinterp ", c.name, " --help)");
}

std::shared_ptr<qinterp::text::Tokenizer> tokenizer_for(const Args& a, const qinterp::model::Model& m) {
  const std::string path = a.has("tokenizer") ? a.get("tokenizer") : qinterp::text::find_tokenizer(a.get("model"));
  std::shared_ptr<qinterp::text::Tokenizer> tok = qinterp::load_tokenizer(path);
  qinterp::text::check_tokenizer(*tok, m.config().vocab_size, a.get("model"));
  return tok;
}

int cmd_generate(const Command& c, const Args& a) {
  need(a, c, {"model", "prompt"});
  qinterp::model::GenerateOptions go;
  go.max_new_tokens = to_int(a.get("max-new-tokens", "32"), "max-new-tokens", 0, int64_t{1} << 40);
  go.temperature = to_double(a.get("temperature", "0"), "temperature");
  go.top_p = to_double(a.get("top-p", "1"), "top-p");
  go.seed = static_cast<uint64_t>(to_int(a.get("seed", "42"), "seed", 0, int64_t{1} << 53));
  qinterp::LoadOptions lo;
  lo.device = a.get("device", "cpu");
  lo.dtype = a.get("dtype", "");
  lo.quant = a.get("quant", "");
  auto model = qinterp::load_model(a.get("model"), lo);
  auto tok = tokenizer_for(a, *model);
  const std::vector<int64_t> ids = tok->encode(a.get("prompt"));  // BOS as the model's files ask
  if (ids.empty())
    qinterp::fail("generate: the prompt encodes to no tokens (", tok->source(),
                  " adds no BOS); give a prompt with some text");
  if (tok->bos_id() >= 0) go.stop_tokens = {tok->bos_id()};  // llama2.c models delimit stories with BOS
  const at::Tensor in = at::tensor(ids, at::kLong).unsqueeze(0);
  const at::Tensor out = model->generate(in, go);
  std::string text;
  int64_t prev = -1;
  for (int64_t i = 0; i < out.size(1); ++i) {
    const int64_t id = out[0][i].item<int64_t>();
    const bool special = id == tok->bos_id() || id == tok->eos_id();
    if (special && i >= static_cast<int64_t>(ids.size())) break;
    if (!special) text += tok->decode_piece(prev < 0 ? (tok->bos_id() >= 0 ? tok->bos_id() : id) : prev, id);
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

int cmd_inspect(const Command& c, const Args& a) {
  need(a, c, {"model"});
  const std::string path = a.get("model");
  qinterp::LoadOptions lo;
  lo.quant = a.get("quant", "");
  auto model = qinterp::load_model(path, lo);
  const auto& cfg = model->config();
  std::cout << "model:        " << path << "\n"
            << "format:       " << cfg.format << "\n"
            << "architecture: " << cfg.summary() << "\n";
  {
    const auto diff = qinterp::model::non_llama_settings(cfg);
    std::cout << "vs Llama:     " << cfg.arch << (diff.empty() ? ", nothing differs from a plain Llama decoder" : ":");
    for (const auto& d : diff) std::cout << " " << d;
    std::cout << "\n";
  }
  if (cfg.format == "gguf") {  // the file's own storage types, before decoding
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
    for (int64_t l = 0; l < cfg.num_layers; ++l)
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
  std::cout << "hook points:  " << qinterp::model::Hooks::all_names(cfg.num_layers).size()
            << " (blocks.{0.." << cfg.num_layers - 1 << "}.*, hook_logits)\n";
  return 0;
}

// The model's tokenizer, saved beside a quantized model so that --model DIR alone works: a
// tokenizer file is copied; a GGUF's vocabulary is written as a metadata-only tokenizer.gguf.
void save_tokenizer(const std::string& tok_path, const std::string& dir) {
  if (paths::ends_with(tok_path, ".gguf")) {
    qinterp::io::GgufFile f(tok_path);
    std::map<std::string, qinterp::io::GgufValue> kv;
    for (const auto& [k, v] : f.metadata())
      if (k.rfind("tokenizer.", 0) == 0 || k == "general.architecture") kv.emplace(k, v);
    qinterp::io::write_gguf_metadata(paths::join(dir, "tokenizer.gguf"), kv);
    return;
  }
  if (paths::is_dir(tok_path)) {
    for (const char* n : {"tokenizer.json", "tokenizer_config.json", "tokenizer.model", "tokenizer.bin"})
      if (paths::exists(paths::join(tok_path, n))) save_tokenizer(paths::join(tok_path, n), dir);
    return;
  }
  std::string name = tok_path.substr(tok_path.find_last_of('/') + 1);
  if (paths::ends_with(name, ".bin")) name = "tokenizer.bin";  // llama2.c's tok512.bin and friends
  const std::string bytes = [&] {
    qinterp::io::MappedFile m(tok_path);
    return std::string(reinterpret_cast<const char*>(m.data()), m.size());
  }();
  const std::string dst = paths::join(dir, name);
  FILE* f = std::fopen(dst.c_str(), "wb");
  if (!f || std::fwrite(bytes.data(), 1, bytes.size(), f) != bytes.size() || std::fclose(f) != 0)
    qinterp::fail("quantize: cannot write ", dst);
}

// GPTQ's calibration as the field draws it: spec.calib random windows (seeded) of the source's
// tokens, windows shortened to fit a short text; the saved spec records what was used.
at::Tensor calibration(const qinterp::quant::QuantSpec& spec, const qinterp::text::Tokenizer& tok, int64_t context,
                       const std::string& source, uint64_t seed) {
  std::vector<int64_t> ids;
  const bool csv = source.size() >= 4 && source.compare(source.size() - 4, 4, ".csv") == 0;
  if (csv) {
    const auto table = qinterp::experiment::read_csv(source);
    size_t col = 0;
    for (size_t i = 0; i < table.header.size(); ++i)
      if (table.header[i] == "prompt") col = i;
    for (const auto& row : table.rows) {
      if (col >= row.size()) continue;
      auto t = tok.encode(row[col]);
      ids.insert(ids.end(), t.begin(), t.end());
    }
  } else {
    if (!paths::exists(source) || paths::is_dir(source)) qinterp::fail("--calib ", source, ": no such text file");
    ids = tok.encode(qinterp::analysis::perplexity_text(source, qinterp::analysis::PerplexityProtocol::LlamaCpp));
  }
  if (ids.size() < 2) qinterp::fail("--calib ", source, ": too little calibration text (", ids.size(), " tokens)");
  const int64_t seqlen = std::min<int64_t>({spec.seqlen, context, static_cast<int64_t>(ids.size()) - 1});
  at::Tensor w = qinterp::model::random_calibration_windows(at::tensor(ids, at::kLong), spec.calib, seqlen, seed);
  std::cerr << "[quantize] GPTQ calibration: " << w.size(0) << " random windows (seed " << seed << ") of " << w.size(1)
            << " tokens from " << source << " (" << ids.size() << " tokens)\n";
  return w;
}

int cmd_quantize(const Command& c, const Args& a) {
  need(a, c, {"model", "quant", "out"});
  const auto spec = qinterp::quant::parse_quant_spec(a.get("quant"));
  if (!spec.quantized()) qinterp::fail("quantize: '", spec.str(), "' is not a quantized format");
  const std::string out = a.get("out");
  if (paths::exists(out) && !paths::is_dir(out)) qinterp::fail("quantize: --out ", out, " is a file, not a folder");
  const std::string tok_path = a.has("tokenizer") ? a.get("tokenizer") : qinterp::text::find_tokenizer(a.get("model"));
  // Make the output folder first: an unwritable --out fails now, not after the work; a folder made
  // here is removed again if the work fails.
  const bool made = !paths::exists(out);
  paths::make_dirs(out);
  try {
    qinterp::LoadOptions lo;
    lo.device = a.get("device", "cpu");
    auto model = qinterp::load_model(a.get("model"), lo);
    auto tok = qinterp::load_tokenizer(tok_path);
    qinterp::text::check_tokenizer(*tok, model->config().vocab_size, a.get("model"));
    at::Tensor calib;
    if (spec.method == qinterp::quant::Method::GPTQ) {
      if (!a.has("calib")) qinterp::fail("quantize ", spec.str(), ": GPTQ needs --calib (a text file or a CSV of prompts)");
      const uint64_t seed = static_cast<uint64_t>(to_int(a.get("calib-seed", "0"), "calib-seed", 0, int64_t{1} << 53));
      calib = calibration(spec, *tok, model->config().max_seq_len, a.get("calib"), seed);
    }
    qinterp::ProgressMeter meter(isatty(2) != 0, 0.0);
    qinterp::model::quantize_model(*model, spec, calib, [&](int64_t d, int64_t t) {
      std::cerr << meter.update({"quantize " + spec.str(), d, t, "layers", d == t}) << std::flush;
    });
    qinterp::model::save_model(*model, out);
    save_tokenizer(tok_path, out);
    std::cout << "saved " << spec.str() << " to " << out << "/model.safetensors ("
              << human(static_cast<double>(model->parameter_bytes())) << ") with its tokenizer\n";
  } catch (...) {
    if (made) paths::remove_empty_dir(out);
    throw;
  }
  return 0;
}

std::vector<int64_t> int_list(const std::string& s, const char* what) {
  std::vector<int64_t> out;
  size_t pos = 0;
  while (pos <= s.size()) {
    const size_t c = s.find(',', pos);
    const std::string tok = s.substr(pos, c == std::string::npos ? std::string::npos : c - pos);
    out.push_back(to_int(tok, what, 0, 1 << 20));
    if (c == std::string::npos) break;
    pos = c + 1;
  }
  return out;
}

std::vector<std::string> str_list(const std::string& s) {
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos <= s.size()) {
    const size_t c = s.find(',', pos);
    out.push_back(s.substr(pos, c == std::string::npos ? std::string::npos : c - pos));
    if (c == std::string::npos) break;
    pos = c + 1;
  }
  return out;
}

int cmd_run(const Command& c, const Args& a, const qinterp::experiment::Parallel& par) {
  need(a, c, {"model", "out"});
  qinterp::experiment::RunOptions o;
  o.model = a.get("model");
  o.tokenizer = a.get("tokenizer");
  o.model_name = a.get("name");
  if (a.has("quant")) o.precisions = a.all("quant");
  if (a.has("task")) o.tasks = a.all("task");
  const char* env_data = std::getenv("QINTERP_DATA");
  o.data_dir = a.get("data", env_data ? env_data : "../shared/datasets/paper1");
  o.task_options.prompt_template = a.get("template");
  if (a.has("labels")) o.task_options.labels = str_list(a.get("labels"));
  o.task_options.prompt_column = a.get("prompt-column", "prompt");
  o.task_options.gold_column = a.get("gold-column", "gold");
  if (a.has("analyses")) o.analyses = str_list(a.get("analyses"));
  if (a.has("layers")) o.layers = int_list(a.get("layers"), "layers");
  o.mode = a.get("mode", "clean");
  o.scoring = a.get("scoring", "paper");
  o.chat = a.get("chat", "none");
  o.limit = to_int(a.get("limit", "0"), "limit", 0, int64_t{1} << 40);
  if (a.has("ig-limit")) o.ig_limit = to_int(a.get("ig-limit"), "ig-limit", 0, int64_t{1} << 40);
  o.batch = to_int(a.get("batch", "32"), "batch", 1, 1 << 20);
  o.ig_steps = to_int(a.get("ig-steps", "50"), "ig-steps", 1, 1 << 20);
  o.ig_method = a.get("ig-method", "gausslegendre");
  o.ig_target = a.get("ig-target", "");
  o.device = a.get("device", "cpu");
  o.seed = static_cast<uint64_t>(to_int(a.get("seed", "42"), "seed", 0, int64_t{1} << 53));
  o.checkpoint_seconds = to_double(a.get("checkpoint-seconds", "60"), "checkpoint-seconds");
  o.out = a.get("out");
  o.restart = a.has("restart");
  at::manual_seed(o.seed);
  qinterp::ProgressMeter meter(isatty(2) != 0);
  qinterp::ProgressFn progress;
  if (!a.has("quiet"))
    progress = [&meter](const qinterp::ProgressEvent& e) {
      const std::string s = meter.update(e);
      if (!s.empty()) std::cerr << s << std::flush;
    };
  const auto summary = qinterp::experiment::run(o, progress, par);
  if (par.rank != 0) return 0;
  if (!summary.dropped.empty())
    std::cerr << "[run] removed " << summary.dropped.size() << " unreadable copy(ies) that killed runs left, e.g. "
              << summary.dropped.front() << "\n";
  std::cerr << "[run] " << summary.stages_run << " stage(s) run, " << summary.stages_skipped
            << " already in the file; results in " << summary.out << "\n";
  std::cout << qinterp::experiment::make_report(o.out).markdown;
  return 0;
}

// One loaded model per precision, in the order given; GPTQ calibrates on --calib or the paper-1
// BoolQ prompts. On the CPU quantized layers compute in fp32 unless the spec says otherwise.
std::shared_ptr<qinterp::Model> load_precision(const Args& a, const std::string& prec,
                                               std::shared_ptr<qinterp::text::Tokenizer>& tok) {
  const auto spec = qinterp::quant::parse_quant_spec(prec);
  qinterp::LoadOptions lo;
  lo.device = a.get("device", "cpu");
  lo.quant = qinterp::quant::spec_for_device(prec, lo.device);
  if (spec.method != qinterp::quant::Method::GPTQ) return qinterp::load_model(a.get("model"), lo);
  // GPTQ: load once, calibrate on the dense model's context, quantize in place.
  auto model = qinterp::load_model(a.get("model"), qinterp::LoadOptions{lo.device, "", "", {}});
  if (!tok) tok = tokenizer_for(a, *model);
  const char* env_data = std::getenv("QINTERP_DATA");
  const std::string src =
      a.has("calib") ? a.get("calib") : paths::join(a.get("data", env_data ? env_data : "../shared/datasets/paper1"), "boolq.csv");
  const auto used = qinterp::quant::parse_quant_spec(lo.quant);
  qinterp::ProgressMeter meter(isatty(2) != 0);
  qinterp::model::quantize_model(*model, used, calibration(used, *tok, model->config().max_seq_len, src, 0),
                                 [&](int64_t d, int64_t t) {
                                   std::cerr << meter.update({"GPTQ " + prec, d, t, "layers", d == t}) << std::flush;
                                 });
  return model;
}

std::vector<std::string> precisions(const Args& a) {
  std::vector<std::string> p = a.has("quant") ? a.all("quant") : std::vector<std::string>{"fp32"};
  for (const auto& x : p) qinterp::quant::parse_quant_spec(x);  // every typo before the first model loads
  return p;
}

int cmd_perplexity(const Command& c, const Args& a) {
  need(a, c, {"model"});
  namespace an = qinterp::analysis;
  an::PerplexityOptions po;
  po.protocol = an::parse_perplexity_protocol(a.get("protocol", "gptq"));
  po.seqlen = to_int(a.get("seqlen", "0"), "seqlen", 0, int64_t{1} << 30);
  if (a.has("seqlen") && po.seqlen < 2) qinterp::fail("--seqlen must be at least 2, got ", po.seqlen);
  po.max_windows = to_int(a.get("max-windows", "0"), "max-windows", 0, int64_t{1} << 40);
  po.batch = to_int(a.get("batch", "1"), "batch", 1, 1 << 20);
  const std::vector<std::string> precs = precisions(a);
  const std::string dataset = a.get("dataset", "wikitext2");
  const std::string text = an::perplexity_text(dataset, po.protocol);
  std::unique_ptr<qinterp::io::ResultStore> store;
  if (a.has("out")) store = std::make_unique<qinterp::io::ResultStore>(a.get("out"), qinterp::io::ResultStore::Mode::Append);
  const std::string name = a.get("name", paths::stem(a.get("model")));
  const std::string data_name = dataset == "wikitext2" ? dataset : paths::stem(dataset);
  std::shared_ptr<qinterp::text::Tokenizer> tok;
  qinterp::ProgressMeter meter(isatty(2) != 0);
  std::vector<std::pair<std::string, an::PerplexityResult>> rows;
  at::Tensor ids;  // the text tokenized once, for every precision
  for (const auto& prec : precs) {
    auto model = load_precision(a, prec, tok);
    if (!tok) tok = tokenizer_for(a, *model);
    if (!ids.defined()) {
      ids = at::tensor(tok->encode(text), at::kLong);
      if (po.protocol == an::PerplexityProtocol::LlamaCpp && tok->add_bos_default()) po.bos_id = tok->bos_id();
    }
    std::function<void(int64_t, int64_t)> cb;
    if (!a.has("quiet"))
      cb = [&](int64_t d, int64_t t) {
        std::cerr << meter.update({"perplexity " + prec, d, t, "windows", d == t}) << std::flush;
      };
    const auto r = an::evaluate_perplexity(*model, ids, po, cb);
    rows.emplace_back(prec, r);
    if (store) {
      const std::string g = qinterp::io::ResultStore::join({name, prec, data_name, std::string("Perplexity_") + r.protocol});
      store->write_tensors(g, {{"ppl", at::scalar_tensor(r.ppl, at::kDouble)},
                               {"nll", at::scalar_tensor(r.nll, at::kDouble)},
                               {"tokens", at::scalar_tensor(r.tokens, at::kLong)},
                               {"windows", at::scalar_tensor(r.windows, at::kLong)},
                               {"seqlen", at::scalar_tensor(r.seqlen, at::kLong)}});
      store->set_attrs(g, {{"protocol", r.protocol}, {"dataset", dataset}, {"spec", model->quant_spec().str()}});
    }
  }
  std::printf("perplexity of %s on %s, protocol %s\n\n", a.get("model").c_str(), data_name.c_str(),
              rows.front().second.protocol.c_str());
  std::printf("| precision | PPL | mean NLL | scored tokens | windows x seqlen |\n|---|---:|---:|---:|---:|\n");
  for (const auto& [p, r] : rows)
    std::printf("| %s | %.4f | %.6f | %lld | %lld x %lld |\n", p.c_str(), r.ppl, r.nll, static_cast<long long>(r.tokens),
                static_cast<long long>(r.windows), static_cast<long long>(r.seqlen));
  return 0;
}

int cmd_speed(const Command& c, const Args& a) {
  need(a, c, {"model"});
  qinterp::experiment::SpeedOptions so;
  so.prompt_tokens = to_int(a.get("prompt-tokens", "256"), "prompt-tokens", 1, int64_t{1} << 30);
  so.new_tokens = to_int(a.get("new-tokens", "512"), "new-tokens", 1, int64_t{1} << 30);
  so.warmup_tokens = to_int(a.get("warmup", "8"), "warmup", 0, int64_t{1} << 30);
  const std::vector<std::string> precs = precisions(a);
  std::unique_ptr<qinterp::io::ResultStore> store;
  if (a.has("out")) store = std::make_unique<qinterp::io::ResultStore>(a.get("out"), qinterp::io::ResultStore::Mode::Append);
  const std::string name = a.get("name", paths::stem(a.get("model")));
  std::shared_ptr<qinterp::text::Tokenizer> tok;
  std::vector<std::pair<std::string, qinterp::experiment::SpeedResult>> rows;
  for (const auto& prec : precs) {
    auto model = load_precision(a, prec, tok);
    std::cerr << "[speed] " << prec << ": " << so.prompt_tokens << " prompt + " << so.new_tokens << " new tokens\n";
    const auto r = qinterp::experiment::measure_speed(*model, so);
    rows.emplace_back(prec, r);
    if (store) {
      const std::string g = qinterp::io::ResultStore::join({name, prec, "speed"});
      store->write_tensors(g, {{"weight_bytes", at::scalar_tensor(r.weight_bytes, at::kLong)},
                               {"head_q8_bytes", at::scalar_tensor(r.head_q8_bytes, at::kLong)},
                               {"peak_host_bytes", at::scalar_tensor(r.peak_host_bytes, at::kLong)},
                               {"peak_device_allocated", at::scalar_tensor(r.peak_device_allocated, at::kLong)},
                               {"peak_device_reserved", at::scalar_tensor(r.peak_device_reserved, at::kLong)},
                               {"prefill_seconds", at::scalar_tensor(r.prefill_seconds, at::kDouble)},
                               {"decode_seconds", at::scalar_tensor(r.decode_seconds, at::kDouble)},
                               {"decode_tokens_per_second", at::scalar_tensor(r.decode_tokens_per_second, at::kDouble)},
                               {"prompt_tokens", at::scalar_tensor(r.prompt_tokens, at::kLong)},
                               {"new_tokens", at::scalar_tensor(r.new_tokens, at::kLong)}});
      store->set_attrs(g, {{"device", a.get("device", "cpu")}, {"spec", model->quant_spec().str()}});
    }
  }
  const bool cuda = rows.front().second.peak_device_allocated >= 0;
  std::printf("decoding speed of %s on %s, batch 1, %lld prompt + %lld new tokens (greedy, EOS ignored)\n\n",
              a.get("model").c_str(), a.get("device", "cpu").c_str(), static_cast<long long>(so.prompt_tokens),
              static_cast<long long>(so.new_tokens));
  std::printf("| precision | weights | peak memory (%s) | prefill s | decode tokens/s |\n|---|---:|---:|---:|---:|\n",
              cuda ? "allocated / reserved" : "process RSS");
  for (const auto& [p, r] : rows) {
    const std::string mem = cuda ? human(static_cast<double>(r.peak_device_allocated)) + " / " +
                                       human(static_cast<double>(r.peak_device_reserved))
                                 : r.peak_host_bytes >= 0 ? human(static_cast<double>(r.peak_host_bytes)) : "n/a";
    std::printf("| %s | %s | %s | %.3f | %.2f |\n", p.c_str(), human(static_cast<double>(r.weight_bytes)).c_str(),
                mem.c_str(), r.prefill_seconds, r.decode_tokens_per_second);
  }
  if (rows.front().second.head_q8_bytes > 0)
    std::printf("\nDecoding reads the LM head from its exact Q8_0 blocks (%s, held beside the weights above).\n",
                human(static_cast<double>(rows.front().second.head_q8_bytes)).c_str());
  return 0;
}

int cmd_report(const Command& c, const Args& a) {
  if (a.positional.empty()) qinterp::fail("report needs the run's file: qinterp report FILE.h5 [--out DIR]");
  if (a.has("figures") && !a.has("out")) qinterp::fail("report: --figures needs --out DIR for the images");
  qinterp::experiment::ReportOptions ro;
  ro.out_dir = a.get("out");
  ro.latex = a.has("latex");
  const auto r = qinterp::experiment::make_report(a.positional, ro);
  std::cout << r.markdown;
  for (const auto& f : r.files) std::cerr << "[report] wrote " << f << "\n";
  if (a.has("figures")) {
    const char* py = std::getenv("QINTERP_PYTHON");
    const std::string cmd = std::string(py ? py : "python3") + " -m qinterp.plots '" + a.positional + "' '" + ro.out_dir + "'";
    if (std::system(cmd.c_str()) != 0)
      qinterp::fail("report --figures: '", cmd, "' failed (it needs the qinterp Python package and matplotlib; set "
                    "QINTERP_PYTHON to the Python that has them)");
  }
  return 0;
}

}  // namespace

int qinterp_cli(int argc, char** argv, const qinterp::experiment::Parallel& par) {
  if (argc < 2) {
    std::cerr << usage();
    return 2;
  }
  const std::string cmd = argv[1];
  if (cmd == "-h" || cmd == "--help" || cmd == "help") {
    std::cout << usage();
    return 0;
  }
  if (cmd == "--version" || cmd == "-V") {
    std::cout << "qinterp " << qinterp::version() << "\n";
    return 0;
  }
  const Command* c = nullptr;
  for (const auto& x : commands())
    if (cmd == x.name) c = &x;
  if (!c) {
    std::cerr << "qinterp: unknown command '" << cmd << "' (qinterp help lists them)\n";
    return 2;
  }
  try {
    const Args a = parse(*c, argc, argv);
    const std::string n = c->name;
    if (n == "generate") return cmd_generate(*c, a);
    if (n == "inspect") return cmd_inspect(*c, a);
    if (n == "quantize") return cmd_quantize(*c, a);
    if (n == "run") return cmd_run(*c, a, par);
    if (n == "perplexity") return cmd_perplexity(*c, a);
    if (n == "speed") return cmd_speed(*c, a);
    if (n == "report") return cmd_report(*c, a);
    std::cout << "qinterp " << qinterp::version() << "\n";
    return 0;
  } catch (const HelpRequested&) {
    std::cout << help(*c);
    return 0;
  } catch (const qinterp::Error& e) {
    std::cerr << "qinterp: error: " << e.what() << "\n";
    return 1;
  } catch (const c10::Error& e) {  // one line, without torch's backtrace
    const std::string m = e.what_without_backtrace();
    std::cerr << "qinterp: internal error: " << m.substr(0, m.find('\n')) << "\n";
    return 3;
  } catch (const std::exception& e) {
    const std::string m = e.what();
    std::cerr << "qinterp: internal error: " << m.substr(0, m.find('\n')) << "\n";
    return 3;
  }
}
