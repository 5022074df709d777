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
        {"calib", "GPTQ: a CSV of calibration prompts (first column)"},
        {"tokenizer", "tokenizer (default: the model's own, or one beside it)"}}},
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
  if (std::string(c.name) == "run" || std::string(c.name) == "quantize" || std::string(c.name) == "generate")
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
      if (!a.has("calib")) qinterp::fail("quantize ", spec.str(), ": GPTQ needs --calib CSV (prompts in the first column)");
      const auto table = qinterp::experiment::read_csv(a.get("calib"));
      std::vector<int64_t> ids;
      for (const auto& row : table.rows) {
        auto t = tok->encode(row.at(0));
        ids.insert(ids.end(), t.begin(), t.end());
      }
      if (ids.empty()) qinterp::fail(a.get("calib"), ": no calibration text");
      const int64_t seqlen = std::min<int64_t>(spec.seqlen, model->config().max_seq_len);
      calib = qinterp::model::calibration_windows(at::tensor(ids, at::kLong), {}, spec.calib, seqlen);
      std::cerr << "[quantize] calibration: " << calib.size(0) << " windows of " << calib.size(1) << " tokens from "
                << a.get("calib") << "\n";
    }
    qinterp::model::quantize_model(*model, spec, calib, [](int64_t d, int64_t t) {
      std::cerr << "[quantize] layer " << d << "/" << t << "\n";
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
  std::cerr << "[run] " << summary.stages_run << " stage(s) run, " << summary.stages_skipped
            << " already in the file; results in " << summary.out << "\n";
  std::cout << qinterp::experiment::make_report(o.out).markdown;
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
