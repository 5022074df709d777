// HF tokenizer.json (and the tokenizer_config.json beside it) -> BpeTokenizer::Spec. Every
// component qinterp does not implement is refused by name rather than silently approximated.
#include <nlohmann/json.hpp>

#include <fstream>
#include <sstream>

#include "qinterp/io/paths.hpp"
#include "bpe.hpp"
#include "qinterp/error.hpp"
#include "qinterp/io/mapped_file.hpp"

namespace qinterp::text {

namespace {

using nlohmann::json;
using Spec = BpeTokenizer::Spec;

struct Reader {
  const std::string& file;

  [[noreturn]] void bad(const std::string& where, const std::string& why) const { fail(file, ": ", where, ": ", why); }
  const json& need(const json& j, const char* key, const std::string& where) const {
    if (!j.is_object() || !j.contains(key)) bad(where, std::string("missing \"") + key + "\"");
    return j.at(key);
  }
  std::string str(const json& j, const char* key, const std::string& where) const {
    const json& v = need(j, key, where);
    if (!v.is_string()) bad(where, std::string("\"") + key + "\" is not a string");
    return v.get<std::string>();
  }
  bool flag(const json& j, const char* key, bool dflt) const {
    if (!j.is_object() || !j.contains(key) || j.at(key).is_null()) return dflt;
    if (!j.at(key).is_boolean()) bad(key, "not a boolean");
    return j.at(key).get<bool>();
  }
  std::string type(const json& j, const std::string& where) const {
    if (!j.is_object()) bad(where, "not an object");
    return str(j, "type", where);
  }

  // A {"String": s} or {"Regex": r} pattern as a regex.
  std::shared_ptr<Regex> pattern(const json& j, const std::string& where) const {
    const json& p = need(j, "pattern", where);
    for (const char* k : {"Regex", "String"})
      if (p.is_object() && p.contains(k) && p[k].is_string() && p[k].get<std::string>().empty())
        bad(where, "an empty pattern is not supported");
    if (p.is_object() && p.contains("Regex") && p["Regex"].is_string()) return std::make_shared<Regex>(p["Regex"].get<std::string>(), file);
    if (p.is_object() && p.contains("String") && p["String"].is_string()) return std::make_shared<Regex>(escape(p["String"].get<std::string>()), file);
    bad(where, "pattern is neither {\"String\": ...} nor {\"Regex\": ...}");
  }
  static std::string escape(const std::string& s) {
    std::string r;
    for (char c : s) {
      if (std::string("\\^$.|?*+()[]{}").find(c) != std::string::npos) r += '\\';
      r += c;
    }
    return r;
  }

  // The components of a {"type": "Sequence", <key>: [...]} in order.
  template <class F>
  void each(const json& j, const char* key, const std::string& where, F&& f) const {
    const json& list = need(j, key, where);
    if (!list.is_array()) bad(where, std::string("\"") + key + "\" is not a list");
    for (const auto& e : list) f(e);
  }

  void normalizer(const json& j, Spec& s) const {
    if (j.is_null()) return;
    const std::string t = type(j, "normalizer");
    Spec::Norm n;
    if (t == "Sequence") {
      each(j, "normalizers", "normalizer Sequence", [&](const json& e) { normalizer(e, s); });
      return;
    } else if (t == "Prepend") {
      n.a = str(j, "prepend", "normalizer Prepend");
    } else if (t == "Replace") {
      const json& p = need(j, "pattern", "normalizer Replace");
      n.b = str(j, "content", "normalizer Replace");
      if (p.is_object() && p.contains("String") && p["String"].is_string()) {
        n.kind = Spec::Norm::Replace, n.a = p["String"].get<std::string>();
        if (n.a.empty()) bad("normalizer Replace", "an empty pattern is not supported");
      } else {
        n.kind = Spec::Norm::ReplaceRegex, n.re = pattern(j, "normalizer Replace");
      }
    } else if (t == "Strip") {
      n.kind = Spec::Norm::Strip, n.left = flag(j, "strip_left", true), n.right = flag(j, "strip_right", true);
    } else if (t == "NFC" || t == "NFD" || t == "NFKC" || t == "NFKD") {
      n.kind = Spec::Norm::Unicode, n.a = t;
    } else if (t == "Lowercase") {
      n.kind = Spec::Norm::Lowercase;
    } else {
      bad("normalizer", "type \"" + t + "\" is not supported (qinterp has Sequence, Prepend, Replace, Strip, NFC/NFD/NFKC/NFKD, Lowercase)");
    }
    s.normalizer.push_back(std::move(n));
  }

  void pre_tokenizer(const json& j, Spec& s) const {
    if (j.is_null()) return;
    const std::string t = type(j, "pre_tokenizer");
    Spec::Pre p;
    if (t == "Sequence") {
      each(j, "pretokenizers", "pre_tokenizer Sequence", [&](const json& e) { pre_tokenizer(e, s); });
      return;
    } else if (t == "Split") {
      p.re = pattern(j, "pre_tokenizer Split");
      const std::string b = str(j, "behavior", "pre_tokenizer Split");
      if (b == "Removed") p.behavior = SplitBehavior::Removed;
      else if (b == "Isolated") p.behavior = SplitBehavior::Isolated;
      else if (b == "MergedWithPrevious") p.behavior = SplitBehavior::MergedWithPrevious;
      else if (b == "MergedWithNext") p.behavior = SplitBehavior::MergedWithNext;
      else if (b == "Contiguous") p.behavior = SplitBehavior::Contiguous;
      else bad("pre_tokenizer Split", "unknown behavior \"" + b + "\"");
      p.invert = flag(j, "invert", false);
    } else if (t == "ByteLevel") {
      p.kind = Spec::Pre::ByteLevel;
      p.add_prefix_space = flag(j, "add_prefix_space", true);
      if (flag(j, "use_regex", true)) p.re = std::make_shared<Regex>(kGpt2Pattern, file);
    } else if (t == "Metaspace") {
      p.kind = Spec::Pre::Metaspace;
      p.replacement = str(j, "replacement", "pre_tokenizer Metaspace");
      p.split = flag(j, "split", true);
      p.prepend = metaspace_prepend(j);
    } else if (t == "Digits") {
      p.kind = Spec::Pre::Digits;
      p.re = std::make_shared<Regex>(flag(j, "individual_digits", false) ? "\\p{N}" : "\\p{N}+", file);
      p.behavior = SplitBehavior::Isolated;
    } else if (t == "Whitespace") {
      p.kind = Spec::Pre::Whitespace;
      // tokenizers' \w+|[^\w\s]+ in Rust's regex, whose \w is Alphabetic, marks, decimal digits,
      // connector punctuation and join controls and whose \s is White_Space; PCRE2's differ (its
      // \w takes "²" and "½", its \s leaves out U+0085).
      p.re = std::make_shared<Regex>(
          "[\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\x{200C}\\x{200D}]+|"
          "[^\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\x{200C}\\x{200D}\\p{White_Space}]+",
          file);
    } else if (t == "WhitespaceSplit") {
      p.kind = Spec::Pre::WhitespaceSplit;
    } else {
      bad("pre_tokenizer", "type \"" + t + "\" is not supported (qinterp has Sequence, Split, ByteLevel, Metaspace, Digits, Whitespace, WhitespaceSplit)");
    }
    s.pre.push_back(std::move(p));
  }

  Spec::Pre::Prepend metaspace_prepend(const json& j) const {
    if (j.contains("prepend_scheme") && j["prepend_scheme"].is_string()) {
      const std::string v = j["prepend_scheme"].get<std::string>();
      if (v == "always") return Spec::Pre::Always;
      if (v == "first") return Spec::Pre::First;
      if (v == "never") return Spec::Pre::Never;
      bad("Metaspace", "unknown prepend_scheme \"" + v + "\"");
    }
    return flag(j, "add_prefix_space", true) ? Spec::Pre::Always : Spec::Pre::Never;  // files before prepend_scheme
  }

  void decoder(const json& j, Spec& s) const {
    if (j.is_null()) return;
    const std::string t = type(j, "decoder");
    Spec::Dec d;
    if (t == "Sequence") {
      each(j, "decoders", "decoder Sequence", [&](const json& e) { decoder(e, s); });
      return;
    } else if (t == "ByteLevel") {
      d.kind = Spec::Dec::ByteLevel;
    } else if (t == "Metaspace") {
      d.kind = Spec::Dec::Metaspace, d.a = str(j, "replacement", "decoder Metaspace");
      d.prepend_first = metaspace_prepend(j) != Spec::Pre::Never;
    } else if (t == "Replace") {
      const json& p = need(j, "pattern", "decoder Replace");
      if (!(p.is_object() && p.contains("String") && p["String"].is_string()))
        bad("decoder Replace", "only {\"String\": ...} patterns are supported");
      d.kind = Spec::Dec::Replace, d.a = p["String"].get<std::string>(), d.b = str(j, "content", "decoder Replace");
      if (d.a.empty()) bad("decoder Replace", "an empty pattern is not supported");
    } else if (t == "ByteFallback") {
      d.kind = Spec::Dec::ByteFallback;
    } else if (t == "Fuse") {
      d.kind = Spec::Dec::Fuse;
    } else if (t == "Strip") {
      d.kind = Spec::Dec::Strip, d.a = str(j, "content", "decoder Strip");
      const json& a = need(j, "start", "decoder Strip");
      const json& b = need(j, "stop", "decoder Strip");
      if (!a.is_number_integer() || !b.is_number_integer()) bad("decoder Strip", "start/stop are not integers");
      d.start = a.get<int>(), d.stop = b.get<int>();
    } else {
      bad("decoder", "type \"" + t + "\" is not supported (qinterp has Sequence, ByteLevel, Metaspace, Replace, ByteFallback, Fuse, Strip)");
    }
    s.decoder.push_back(std::move(d));
  }

  int64_t special_id(const json& tokens, const std::string& name) const {
    if (!tokens.is_object() || !tokens.contains(name)) bad("post_processor", "special token \"" + name + "\" is not defined");
    const json& ids = tokens[name].contains("ids") ? tokens[name]["ids"] : json();
    if (!ids.is_array() || ids.size() != 1 || !ids[0].is_number_integer())
      bad("post_processor", "special token \"" + name + "\" must have exactly one id");
    return ids[0].get<int64_t>();
  }

  void post_processor(const json& j, Spec& s) const {
    if (j.is_null()) return;
    const std::string t = type(j, "post_processor");
    if (t == "Sequence") {
      each(j, "processors", "post_processor Sequence", [&](const json& e) { post_processor(e, s); });
    } else if (t == "ByteLevel") {
      // offsets only
    } else if (t == "TemplateProcessing") {
      const json& single = need(j, "single", "post_processor TemplateProcessing");
      if (!single.is_array()) bad("post_processor TemplateProcessing", "\"single\" is not a list");
      bool seen_a = false;
      s.prefix.clear(), s.suffix.clear();
      for (const auto& item : single) {
        if (item.contains("Sequence")) {
          seen_a = true;
        } else if (item.contains("SpecialToken") && item["SpecialToken"].contains("id")) {
          const int64_t id = special_id(need(j, "special_tokens", "post_processor"), item["SpecialToken"]["id"].get<std::string>());
          (seen_a ? s.suffix : s.prefix).push_back(id);
        } else {
          bad("post_processor TemplateProcessing", "an item is neither Sequence nor SpecialToken");
        }
      }
    } else if (t == "BertProcessing" || t == "RobertaProcessing") {
      const json& cls = need(j, "cls", "post_processor");
      const json& sep = need(j, "sep", "post_processor");
      if (!cls.is_array() || cls.size() != 2 || !sep.is_array() || sep.size() != 2) bad("post_processor", "cls/sep are not [token, id]");
      s.prefix = {cls[1].get<int64_t>()}, s.suffix = {sep[1].get<int64_t>()};
    } else {
      bad("post_processor", "type \"" + t + "\" is not supported");
    }
  }
};

json parse_file(const std::string& path) {
  io::MappedFile f(path);
  try {
    return json::parse(f.data(), f.data() + f.size());
  } catch (const json::exception& e) {
    fail(path, ": not valid JSON (", e.what(), ")");
  }
}

// A special token as tokenizer_config.json writes it: a string or {"content": ...}.
std::string token_text(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  return {};
}

}  // namespace

std::unique_ptr<Spec> read_tokenizer_json(const std::string& path) {
  const json j = parse_file(path);
  Reader r{path};
  if (!j.is_object()) r.bad("top level", "not a JSON object");
  auto s = std::make_unique<Spec>();
  const json& model = r.need(j, "model", "top level");
  const std::string mtype = model.contains("type") ? r.type(model, "model") : "BPE";
  if (mtype != "BPE")
    r.bad("model", "type \"" + mtype + "\" is not supported (qinterp reads BPE tokenizers; WordPiece, WordLevel and Unigram are not)");
  if (model.contains("dropout") && model["dropout"].is_number() && model["dropout"].get<double>() > 0)
    r.bad("model", "BPE dropout makes encoding random; qinterp needs it null");
  for (const char* k : {"continuing_subword_prefix", "end_of_word_suffix"})
    if (model.contains(k) && model[k].is_string() && !model[k].get<std::string>().empty())
      r.bad("model", std::string(k) + " is not supported");
  s->byte_fallback = r.flag(model, "byte_fallback", false);
  s->fuse_unk = r.flag(model, "fuse_unk", false);
  s->ignore_merges = r.flag(model, "ignore_merges", false);

  const json& vocab = r.need(model, "vocab", "model");
  if (!vocab.is_object()) r.bad("model", "\"vocab\" is not an object");
  // Ids index a table: they may leave gaps, but not so many that one damaged id asks for gigabytes.
  const json& added_list = j.contains("added_tokens") && j["added_tokens"].is_array() ? j["added_tokens"] : json::array();
  const int64_t most_ids = 4 * static_cast<int64_t>(vocab.size() + added_list.size()) + 65536;
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    if (!it.value().is_number_integer() || it.value().get<int64_t>() < 0 || it.value().get<int64_t>() >= (1LL << 31))
      r.bad("model vocab", "the id of \"" + it.key() + "\" is not a non-negative 32-bit integer");
    if (it.value().get<int64_t>() >= most_ids)
      r.bad("model vocab", "the id of \"" + it.key() + "\" is " + std::to_string(it.value().get<int64_t>()) +
                               ", far beyond the " + std::to_string(vocab.size()) + " entries");
    const auto id = it.value().get<int64_t>();
    if (static_cast<size_t>(id) >= s->vocab.size()) s->vocab.resize(static_cast<size_t>(id) + 1);
    s->vocab[static_cast<size_t>(id)] = it.key();
    s->ids[it.key()] = id;
  }
  const json& merges = r.need(model, "merges", "model");
  if (!merges.is_array()) r.bad("model", "\"merges\" is not a list");
  int32_t rank = 0;
  for (const auto& m : merges) {
    std::string a, b;
    if (m.is_string()) {
      const std::string t = m.get<std::string>();
      const size_t sp = t.find(' ');
      if (sp == std::string::npos || t.find(' ', sp + 1) != std::string::npos) r.bad("merges", "\"" + t + "\" is not two tokens");
      a = t.substr(0, sp), b = t.substr(sp + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      a = m[0].get<std::string>(), b = m[1].get<std::string>();
    } else {
      r.bad("merges", "entry " + std::to_string(rank) + " is neither \"a b\" nor [\"a\", \"b\"]");
    }
    const auto ia = s->ids.find(a), ib = s->ids.find(b), ic = s->ids.find(a + b);
    if (ia == s->ids.end() || ib == s->ids.end() || ic == s->ids.end())
      r.bad("merges", "merge " + std::to_string(rank) + " (\"" + a + "\", \"" + b + "\") uses a token outside the vocabulary");
    const uint64_t key = (static_cast<uint64_t>(ia->second) << 32) | static_cast<uint64_t>(ib->second);
    s->merges.emplace(key, std::make_pair(rank, ic->second));  // the first (best) rank wins on duplicates
    ++rank;
  }
  if (model.contains("unk_token") && model["unk_token"].is_string()) {
    const auto it = s->ids.find(model["unk_token"].get<std::string>());
    if (it != s->ids.end()) s->model_unk = it->second;
  }

  if (j.contains("added_tokens") && !j["added_tokens"].is_null()) {
    if (!j["added_tokens"].is_array()) r.bad("added_tokens", "not a list");
    for (const auto& a : j["added_tokens"]) {
      Spec::Added t;
      t.content = r.str(a, "content", "added_tokens");
      const json& id = r.need(a, "id", "added_tokens");
      if (!id.is_number_integer() || id.get<int64_t>() < 0) r.bad("added_tokens", "\"" + t.content + "\" has no valid id");
      if (id.get<int64_t>() >= most_ids)
        r.bad("added_tokens", "\"" + t.content + "\" has id " + std::to_string(id.get<int64_t>()) + ", far beyond the " +
                                  std::to_string(vocab.size() + added_list.size()) + " tokens");
      t.id = id.get<int64_t>();
      t.special = r.flag(a, "special", false), t.lstrip = r.flag(a, "lstrip", false), t.rstrip = r.flag(a, "rstrip", false);
      t.single_word = r.flag(a, "single_word", false), t.normalized = r.flag(a, "normalized", !t.special);
      s->added.push_back(std::move(t));
    }
  }
  // tokenizers gives added tokens their ids itself, in file order, and only warns where the file
  // says otherwise: a content the model's vocabulary or an earlier added token has keeps that id;
  // a new one takes the vocabulary's size, then one past the largest added id. An empty content
  // is dropped, and a repeated one keeps its first id with the later flags.
  {
    std::vector<Spec::Added> list;
    std::unordered_map<std::string, size_t> at;
    const int64_t model_n = static_cast<int64_t>(vocab.size());
    int64_t most = -1;
    for (Spec::Added& t : s->added) {
      if (t.content.empty()) continue;
      if (const auto f = at.find(t.content); f != at.end()) {
        t.id = list[f->second].id;
        t.special = t.special || list[f->second].special;
        list[f->second] = std::move(t);
        continue;
      }
      const auto v = s->ids.find(t.content);
      t.id = v != s->ids.end() ? v->second : most < 0 ? model_n : most >= model_n || model_n == 0 ? most + 1 : model_n;
      most = std::max(most, t.id);
      at.emplace(t.content, list.size());
      list.push_back(std::move(t));
    }
    s->added = std::move(list);
  }
  r.normalizer(j.value("normalizer", json()), *s);
  r.pre_tokenizer(j.value("pre_tokenizer", json()), *s);
  r.decoder(j.value("decoder", json()), *s);
  s->join_with_space = !j.contains("decoder") || j["decoder"].is_null();
  r.post_processor(j.value("post_processor", json()), *s);
  if (s->prefix.size() > 1 || s->suffix.size() > 1)
    r.bad("post_processor", "templates adding more than one token before or after the text are not supported");

  // Special ids: the template first, then tokenizer_config.json beside the file if there is one.
  const auto id_of = [&](const std::string& t) -> int64_t {
    for (const auto& a : s->added)
      if (a.content == t) return a.id;
    const auto it = s->ids.find(t);
    return it == s->ids.end() ? -1 : it->second;
  };
  if (!s->prefix.empty()) s->bos = s->prefix[0], s->add_bos = true;
  if (!s->suffix.empty()) s->eos = s->suffix[0], s->add_eos = true;
  s->unk = s->model_unk;
  const std::string cfg_path = io::paths::join(io::paths::parent(path), "tokenizer_config.json");
  if (io::paths::exists(cfg_path)) {
    const json c = parse_file(cfg_path);
    if (c.is_object()) {
      const auto set = [&](const char* key, int64_t& dst) {
        if (!c.contains(key)) return;
        const std::string t = token_text(c[key]);
        if (!t.empty() && id_of(t) >= 0) dst = id_of(t);
      };
      set("bos_token", s->bos);
      set("eos_token", s->eos);
      set("pad_token", s->pad);
      set("unk_token", s->unk);
      if (s->prefix.empty()) s->add_bos = Reader{cfg_path}.flag(c, "add_bos_token", false);
      if (s->suffix.empty()) s->add_eos = Reader{cfg_path}.flag(c, "add_eos_token", false);
    }
  }
  return s;
}

}  // namespace qinterp::text
