#include "qinterp/experiment/task.hpp"

#include <algorithm>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <sstream>

#include "qinterp/io/paths.hpp"
#include "qinterp/error.hpp"
#include "qinterp/io/gguf.hpp"
#include "qinterp/io/mapped_file.hpp"
#include "qinterp/text/tokenizer.hpp"

namespace qinterp::experiment {

namespace paths = io::paths;

CsvTable read_csv(const std::string& path) {
  if (!paths::exists(path)) fail(path, ": no such file");
  if (paths::is_dir(path)) fail(path, ": is a directory, not a CSV file");
  std::string text;
  {
    io::MappedFile f(path);
    text.assign(reinterpret_cast<const char*>(f.data()), f.size());
  }
  if (text.size() >= 3 && text.compare(0, 3, "\xEF\xBB\xBF") == 0) text.erase(0, 3);  // BOM
  CsvTable t;
  std::vector<std::string> rec;
  std::string field;
  int64_t line = 1, rec_line = 1;
  bool quoted = false, after_quote = false, any = false;
  auto end_field = [&] {
    rec.push_back(field);
    field.clear();
    after_quote = false;
  };
  auto end_record = [&] {
    end_field();
    const bool blank = rec.size() == 1 && rec[0].empty() && !any;
    if (!blank) {
      if (t.header.empty()) {
        t.header = rec;
      } else {
        if (rec.size() != t.header.size())
          fail(path, ":", rec_line, ": a record with ", rec.size(), " field", rec.size() == 1 ? "" : "s", " where the header has ",
               t.header.size());
        t.rows.push_back(rec);
        t.lines.push_back(rec_line);
      }
    }
    rec.clear();
    any = false;
  };
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (quoted) {
      if (c == '"') {
        if (i + 1 < text.size() && text[i + 1] == '"') {
          field += '"';
          ++i;
        } else {
          quoted = false;
          after_quote = true;
        }
      } else {
        if (c == '\n') ++line;
        field += c;
      }
      continue;
    }
    if (c == ',') {
      end_field();
      any = true;
    } else if (c == '\n' || c == '\r') {
      if (c == '\r' && i + 1 < text.size() && text[i + 1] == '\n') ++i;
      end_record();
      ++line;
      rec_line = line;
    } else if (after_quote) {
      fail(path, ":", line, ": text after a closing quote (a field is either quoted whole or not at all)");
    } else if (c == '"') {
      if (!field.empty()) fail(path, ":", line, ": a quote inside an unquoted field");
      quoted = true;
      any = true;
    } else {
      field += c;
      any = true;
    }
  }
  if (quoted) fail(path, ":", rec_line, ": a quoted field is never closed");
  if (any || !field.empty() || !rec.empty()) end_record();
  if (t.header.empty()) fail(path, ": empty file (a CSV needs a header row)");
  return t;
}

namespace {

struct Builtin {
  const char* name;
  const char* file;
  const char* prompt_template;
  std::vector<std::string> labels;
};

const std::vector<Builtin>& builtins() {
  static const std::vector<Builtin> b = {
      {"boolq", "boolq.csv", "Respond with True or False only.\n{}\nAnswer:", {"True", "False"}},
      {"piqa", "piqa.csv", "{}", {"A", "B"}},
      {"hellaswag", "hellaswag.csv", "{}", {"0", "1", "2", "3"}},
      {"toxicity", "toxicity.csv", "{}", {"True", "False"}},
      {"imdb", "IMDB_sentiment.csv", "{}", {}},
  };
  return b;
}

std::string stem(const std::string& path) {
  std::string s = path.substr(path.find_last_of('/') + 1);
  const size_t dot = s.find_last_of('.');
  return dot == std::string::npos || dot == 0 ? s : s.substr(0, dot);
}

}  // namespace

const std::vector<std::string>& builtin_tasks() {
  static const std::vector<std::string> n = [] {
    std::vector<std::string> v;
    for (const auto& b : builtins()) v.push_back(b.name);
    return v;
  }();
  return n;
}

std::string Task::prompt(size_t i) const {
  const std::string& p = examples.at(i).prompt;
  if (prompt_template == "{}") return p;
  std::string out;
  size_t pos = 0;
  for (;;) {
    const size_t at = prompt_template.find("{}", pos);
    if (at == std::string::npos) break;
    out.append(prompt_template, pos, at - pos);
    out += p;
    pos = at + 2;
  }
  out.append(prompt_template, pos, std::string::npos);
  return out;
}

int64_t Task::gold_index(size_t i) const {
  const std::string g = strip(examples.at(i).gold);
  for (size_t k = 0; k < labels.size(); ++k)
    if (strip(labels[k]) == g) return static_cast<int64_t>(k);
  return -1;
}

Task load_task(const std::string& name_or_csv, const std::string& data_dir, const TaskOptions& o) {
  Task t;
  const Builtin* b = nullptr;
  for (const auto& x : builtins())
    if (name_or_csv == x.name) b = &x;
  if (b) {
    t.name = b->name;
    t.source = paths::join(data_dir, b->file);
    t.prompt_template = b->prompt_template;
    t.labels = b->labels;
    if (!paths::exists(t.source)) {
      if (t.name == "imdb")
        fail("task 'imdb': the paper's IMDB CSV is not available here; pass its path as the task (--task "
             "PATH/IMDB_sentiment.csv)");
      fail("task '", t.name, "': ", t.source, " not found (set the data folder, e.g. --data ../shared/datasets/paper1)");
    }
  } else {
    const bool looks_like_file = name_or_csv.find('/') != std::string::npos || paths::ends_with(name_or_csv, ".csv");
    if (!looks_like_file || !paths::exists(name_or_csv)) {
      std::string names;
      for (const auto& n : builtin_tasks()) names += (names.empty() ? "" : ", ") + n;
      if (looks_like_file) fail("task CSV ", name_or_csv, ": no such file");
      fail("unknown task '", name_or_csv, "' (built in: ", names, "; or give a CSV path)");
    }
    t.name = stem(name_or_csv);
    t.source = name_or_csv;
    t.prompt_template = "{}";
  }
  if (!o.prompt_template.empty()) {
    if (o.prompt_template.find("{}") == std::string::npos)
      fail("task '", t.name, "': the prompt template must contain {} where the prompt goes");
    t.prompt_template = o.prompt_template;
  }
  const CsvTable csv = read_csv(t.source);
  auto column = [&](const std::string& name) -> size_t {
    for (size_t i = 0; i < csv.header.size(); ++i)
      if (csv.header[i] == name) return i;
    std::string have;
    for (const auto& h : csv.header) have += (have.empty() ? "" : ", ") + h;
    fail(t.source, ": no column '", name, "' (columns: ", have, ")");
  };
  const size_t pc = column(o.prompt_column), gc = column(o.gold_column);
  for (size_t r = 0; r < csv.rows.size(); ++r) {
    Example e{csv.rows[r][pc], csv.rows[r][gc], csv.lines[r]};
    if (strip(e.gold).empty()) fail(t.source, ":", e.line, ": empty gold answer");
    t.examples.push_back(std::move(e));
  }
  if (t.examples.empty()) fail(t.source, ": no records after the header");
  if (!o.labels.empty()) t.labels = o.labels;
  if (t.labels.empty()) {  // the distinct gold values, in order of appearance
    std::set<std::string> seen;
    for (const auto& e : t.examples)
      if (seen.insert(strip(e.gold)).second) t.labels.push_back(strip(e.gold));
  }
  for (size_t i = 0; i < t.examples.size(); ++i)
    if (t.gold_index(i) < 0) {
      std::string l;
      for (const auto& x : t.labels) l += (l.empty() ? "" : ", ") + x;
      fail(t.source, ":", t.examples[i].line, ": gold '", t.examples[i].gold, "' is not one of the labels (", l, ")");
    }
  return t;
}

// Python's str.strip(): ASCII whitespace and the Unicode spaces.
std::string strip(const std::string& s_in) {
  static const char* const kSpaces[] = {" ", "\t", "\n", "\r", "\v", "\f", "\x1c", "\x1d", "\x1e", "\x1f",
                                        "\xC2\x85", "\xC2\xA0", "\xE1\x9A\x80", "\xE2\x80\x80", "\xE2\x80\x81",
                                        "\xE2\x80\x82", "\xE2\x80\x83", "\xE2\x80\x84", "\xE2\x80\x85",
                                        "\xE2\x80\x86", "\xE2\x80\x87", "\xE2\x80\x88", "\xE2\x80\x89",
                                        "\xE2\x80\x8A", "\xE2\x80\xA8", "\xE2\x80\xA9", "\xE2\x80\xAF",
                                        "\xE2\x81\x9F", "\xE3\x80\x80"};
  size_t b = 0, e = s_in.size();
  for (bool changed = true; changed && b < e;) {
    changed = false;
    for (const char* sp : kSpaces) {
      const size_t n = std::char_traits<char>::length(sp);
      if (e - b >= n && s_in.compare(b, n, sp) == 0) b += n, changed = true;
      if (e - b >= n && s_in.compare(e - n, n, sp) == 0) e -= n, changed = true;
    }
  }
  return s_in.substr(b, e - b);
}

namespace {
std::string ascii_lower(std::string s) {
  for (char& c : s)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  return s;
}
}  // namespace

bool paper_correct(const std::string& answer, const std::string& gold) {
  return ascii_lower(strip(answer)).find(ascii_lower(strip(gold))) != std::string::npos;
}

std::string token_text(const text::Tokenizer& tok, int64_t id) {
  std::string s = tok.decode({id});
  return s.empty() ? tok.piece(id) : s;
}

std::string chat_template_of(const std::string& model_path) {
  if (paths::ends_with(model_path, ".gguf") && paths::exists(model_path)) {
    io::GgufFile f(model_path);
    return f.has("tokenizer.chat_template") ? f.get_string("tokenizer.chat_template") : "";
  }
  const std::string dir = paths::is_dir(model_path) ? model_path : paths::parent(model_path);
  const std::string jinja = paths::join(dir, "chat_template.jinja");
  if (paths::exists(jinja)) {
    std::ifstream in(jinja);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }
  const std::string cfg = paths::join(dir, "tokenizer_config.json");
  if (!paths::exists(cfg)) return "";
  std::ifstream in(cfg);
  nlohmann::json j;
  try {
    in >> j;
  } catch (const nlohmann::json::exception& e) {
    fail(cfg, ": not valid JSON (", e.what(), ")");
  }
  if (j.contains("chat_template") && j["chat_template"].is_string()) return j["chat_template"].get<std::string>();
  return "";
}

std::string apply_chat_template(const std::string& tpl, const std::string& prompt) {
  if (tpl.find("<|im_start|>") != std::string::npos) {
    // ChatML. A default system turn is a literal in the template, written when the conversation
    // has none: '<|im_start|>system\n...<|im_end|>\n'.
    std::string system;
    static const std::regex def(R"('<\|im_start\|>system\n([^']*)<\|im_end\|>\\n')");
    static const std::regex def_raw("'<\\|im_start\\|>system\n([^']*)<\\|im_end\\|>\n'");
    std::smatch m;
    if (std::regex_search(tpl, m, def_raw) || std::regex_search(tpl, m, def)) {
      system = m[1].str();
      // The escaped form keeps "\n" as two characters.
      for (size_t p = 0; (p = system.find("\\n", p)) != std::string::npos;) system.replace(p, 2, "\n");
      system = "<|im_start|>system\n" + system + "<|im_end|>\n";
    }
    return system + "<|im_start|>user\n" + prompt + "<|im_end|>\n<|im_start|>assistant\n";
  }
  if (tpl.find("<start_of_turn>") != std::string::npos)
    return "<bos><start_of_turn>user\n" + prompt + "<end_of_turn>\n<start_of_turn>model\n";
  if (tpl.find("[INST]") != std::string::npos) return "<s>[INST] " + strip(prompt) + " [/INST]";
  fail("chat template: not one of the families qinterp renders (ChatML, Llama-2 [INST], Gemma); pass --chat none");
}

}  // namespace qinterp::experiment
