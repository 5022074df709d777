#include "qinterp/experiment/report.hpp"

#include <ATen/ATen.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <set>
#include <type_traits>
#include <sstream>

#include "qinterp/error.hpp"
#include "qinterp/io/paths.hpp"
#include "qinterp/io/result_store.hpp"

namespace qinterp::experiment {

namespace {

using Row = std::vector<std::string>;

struct Table {
  std::string name, title;
  Row header;
  std::vector<Row> rows;
};

std::string num(double v, int digits = 4) {
  if (std::isnan(v)) return "nan";
  char b[64];
  std::snprintf(b, sizeof b, "%.*f", digits, v);
  return b;
}

std::string md(const Table& t) {
  std::ostringstream os;
  os << "### " << t.title << "\n\n|";
  for (const auto& h : t.header) os << " " << h << " |";
  os << "\n|";
  for (size_t i = 0; i < t.header.size(); ++i) os << (i < 3 ? "---|" : "---:|");
  os << "\n";
  for (const auto& r : t.rows) {
    os << "|";
    for (const auto& c : r) os << " " << c << " |";
    os << "\n";
  }
  return os.str() + "\n";
}

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string q = "\"";
  for (char c : s) q += c == '"' ? std::string("\"\"") : std::string(1, c);
  return q + "\"";
}

std::string csv(const Table& t) {
  std::ostringstream os;
  for (size_t i = 0; i < t.header.size(); ++i) os << (i ? "," : "") << csv_field(t.header[i]);
  os << "\n";
  for (const auto& r : t.rows) {
    for (size_t i = 0; i < r.size(); ++i) os << (i ? "," : "") << csv_field(r[i]);
    os << "\n";
  }
  return os.str();
}

std::string tex_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '_' || c == '%' || c == '&' || c == '#' || c == '$' || c == '{' || c == '}') o += '\\';
    o += c;
  }
  return o;
}

std::string tex(const Table& t) {
  std::ostringstream os;
  os << "% " << t.title << "\n\\begin{tabular}{" << std::string(t.header.size(), 'l') << "}\n\\hline\n";
  for (size_t i = 0; i < t.header.size(); ++i) os << (i ? " & " : "") << tex_escape(t.header[i]);
  os << " \\\\\n\\hline\n";
  for (const auto& r : t.rows) {
    for (size_t i = 0; i < r.size(); ++i) os << (i ? " & " : "") << tex_escape(r[i]);
    os << " \\\\\n";
  }
  return os.str() + "\\hline\n\\end{tabular}\n";
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : s) {
    if (c == sep) {
      out.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  if (!cur.empty()) out.push_back(cur);
  return out;
}

template <class T>
T attr_or(const io::Attrs& a, const std::string& k, T d) {
  auto it = a.find(k);
  if (it == a.end()) return d;
  if (auto* v = std::get_if<T>(&it->second)) return *v;
  return d;
}

// What a run wrote, read back: a missing member or a value of the wrong shape is a damaged or
// foreign file, said as such (never std::map's or c10's message).
struct Reader {
  const std::string& path;
  const io::ResultStore& store;

  template <class T>
  T attr(const io::Attrs& a, const std::string& object, const std::string& key) const {
    const auto it = a.find(key);
    const T* v = it == a.end() ? nullptr : std::get_if<T>(&it->second);
    if (!v) fail(path, ": '", object, "' has no ", std::is_same_v<T, std::string> ? "string" : "numeric", " attribute '",
                 key, "'; the file is incomplete or damaged");
    return *v;
  }
  // Whether the task group g holds `what` (a path under g, from a hook name) for its hooks: for
  // all or for none, as a finished stage writes them; a part would pool or list too few layers.
  template <class F>
  bool for_all_hooks(const std::string& g, const std::vector<std::string>& hooks, F where) const {
    size_t n = 0;
    std::string missing;
    for (const auto& h : hooks)
      if (store.exists(where(h))) ++n;
      else missing = where(h);
    if (n && n < hooks.size())
      fail(path, ": '", missing, "' is missing where the other hooked layers of '", g, "' have theirs; the file is damaged");
    return n > 0;
  }
  at::Tensor member(const Tensors& d, const std::string& group, const std::string& key) const {
    const auto it = d.find(key);
    if (it == d.end()) fail(path, ": '", group, "' has no dataset '", key, "'; the file is incomplete or damaged");
    return it->second;
  }
  double scalar(const at::Tensor& t, const std::string& what) const {
    if (t.numel() != 1) fail(path, ": '", what, "' holds ", t.numel(), " values where one was expected; the file is damaged");
    return t.to(at::kDouble).item<double>();
  }
  int64_t count(const at::Tensor& t, const std::string& what) const {
    const double v = scalar(t, what);
    if (!(v >= 0 && v <= 9.0e15) || v != std::floor(v))
      fail(path, ": '", what, "' is ", v, ", not a count; the file is damaged");
    return static_cast<int64_t>(v);
  }
  // "blocks.<N>.<...>" -> N
  int64_t layer_of(const std::string& hook, const std::string& group) const {
    const size_t dot = hook.find('.', 7);
    if (hook.rfind("blocks.", 0) != 0 || dot == std::string::npos || dot == 7 || dot > 7 + 9 ||
        hook.find_first_not_of("0123456789", 7) != dot)
      fail(path, ": '", group, "' lists hook '", hook, "', which is not blocks.<layer>.<point>; the file is damaged");
    return std::stoll(hook.substr(7, dot - 7));
  }
};

}  // namespace

Report make_report(const std::string& path, const ReportOptions& o) {
  io::ResultStore store(path, io::ResultStore::Mode::Read);
  Table acc{"accuracy", "Accuracy, average confidence, ECE and ACE", {"model", "task", "precision", "examples", "accuracy", "confidence", "ECE", "ACE", "empty answers", "scoring", "mode"}, {}};
  Table dead{"dead_neurons", "Dead neurons per hooked layer (activation strictly inside (-0.1, 0.1) on every real token)", {"model", "task", "precision"}, {}};
  Table sal{"salient_neurons", "Salient neurons per hooked layer (union over the four IG scores and the examples)", {"model", "task", "precision"}, {}};
  Table corr{"correlation", "Neuron pairs per |Pearson r| bin, hooked layers pooled", {"model", "task", "precision"}, {}};
  Table drift{"drift", "Drift from the reference precision, per hooked layer (means over neurons)", {"model", "task", "precision", "layer", "reference", "cosine", "correlation", "mse", "dead agreement", "dead Jaccard"}, {}};
  const Reader rd{path, store};
  bool any = false, any_corr = false;
  // Per-layer cells keyed by layer: a model hooked at other layers gets its own columns, and a
  // layer without results shows "–" rather than shifting the cells after it under other headers.
  struct LayerRow {
    Row head;
    std::map<int64_t, std::string> cells;
    std::vector<int64_t> layers;
  };
  std::vector<LayerRow> dead_rows, sal_rows;
  for (const auto& model : store.list("")) {
    const io::Attrs ma = store.attrs(model);
    if (!ma.count("layers")) continue;  // not a run's model group
    std::vector<std::string> precs = split(attr_or<std::string>(ma, "precisions", ""), ',');
    if (precs.empty())
      for (const auto& p : store.list(model))
        if (p.rfind("_", 0) != 0) precs.push_back(p);
    for (const auto& prec : precs) {
      if (!store.exists(model + "/" + prec)) continue;
      for (const auto& task : store.list(model + "/" + prec)) {
        const std::string g = model + "/" + prec + "/" + task;
        const io::Attrs ta = store.attrs(g);
        if (!ta.count("hooks")) continue;
        any = true;
        const auto hooks = split(attr_or<std::string>(ta, "hooks", ""), ',');
        std::vector<int64_t> layers;
        for (const auto& h : hooks) layers.push_back(rd.layer_of(h, g));
        // Results of a stage count once its done flag is set (runner.cpp writes it after all of
        // them): before that the group may hold some layers' results but not others'.
        const bool forward = ta.count("forward_done") > 0, ig = ta.count("ig_done") > 0;
        if (forward && store.exists(g + "/calibration")) {
          const std::string cg = g + "/calibration", pg = g + "/predictions";
          const io::Attrs ca = store.attrs(cg);
          const int64_t empty = rd.attr<int64_t>(store.attrs(pg), pg, "empty_answers");
          acc.rows.push_back({model, task, prec, std::to_string(rd.attr<int64_t>(ca, cg, "examples")),
                              num(rd.attr<double>(ca, cg, "accuracy")), num(rd.attr<double>(ca, cg, "confidence")),
                              num(rd.attr<double>(ca, cg, "ece")), num(rd.attr<double>(ca, cg, "ace")), std::to_string(empty),
                              attr_or<std::string>(ta, "scoring", "?") +
                                  (attr_or<std::string>(ta, "chat", "none") == "none" ? "" : " + chat template"),
                              attr_or<std::string>(ta, "mode", "?")});
        }
        LayerRow dr{{model, task, prec}, {}, layers}, sr{{model, task, prec}, {}, layers};
        at::Tensor hist;
        auto under = [&](const std::string& what) { return [&g, what](const std::string& h) { return g + "/" + h + "/" + what; }; };
        const bool has_dead = forward && rd.for_all_hooks(g, hooks, under("dead")),
                   has_sal = ig && rd.for_all_hooks(g, hooks, under("salient")),
                   has_corr = forward && rd.for_all_hooks(g, hooks, under("correlation")),
                   has_drift = forward && rd.for_all_hooks(g, hooks, [&g](const std::string& h) { return g + "/drift/" + h; });
        const std::string ref = has_drift ? rd.attr<std::string>(store.attrs(g + "/drift"), g + "/drift", "reference") : "";
        for (size_t hi = 0; hi < hooks.size(); ++hi) {
          const std::string& h = hooks[hi];
          const int64_t layer = layers[hi];
          const std::string hg = g + "/" + h;
          if (has_dead) {
            const auto d = store.read_tensors(hg + "/dead");
            dr.cells[layer] = std::to_string(rd.count(rd.member(d, hg + "/dead", "count"), hg + "/dead/count")) + " / " +
                              std::to_string(rd.member(d, hg + "/dead", "dead").numel());
          }
          if (has_sal) {
            sr.cells[layer] = std::to_string(rd.count(store.read(hg + "/salient/count"), hg + "/salient/count"));
          }
          if (has_corr) {
            any_corr = true;
            const at::Tensor hh = store.read(hg + "/correlation/histogram").to(at::kLong).reshape({-1});
            if (hist.defined() && hh.numel() != hist.numel())
              fail(path, ": '", hg, "/correlation/histogram' has ", hh.numel(), " bins where the task's other layers have ",
                   hist.numel(), "; the file is damaged");
            hist = hist.defined() ? hist + hh : hh;
          }
          if (has_drift) {
            const std::string dg = g + "/drift/" + h;
            const auto d = store.read_tensors(dg);
            drift.rows.push_back({model, task, prec, std::to_string(layer), ref,
                                  num(at::nanmean(rd.member(d, dg, "cosine").to(at::kDouble)).item<double>()),
                                  num(at::nanmean(rd.member(d, dg, "correlation").to(at::kDouble)).item<double>()),
                                  num(rd.member(d, dg, "mse").to(at::kDouble).mean().item<double>(), 6),
                                  num(rd.scalar(rd.member(d, dg, "dead_agreement"), dg + "/dead_agreement")),
                                  num(rd.scalar(rd.member(d, dg, "dead_jaccard"), dg + "/dead_jaccard"))});
          }
        }
        if (!dr.cells.empty()) dead_rows.push_back(std::move(dr));
        if (!sr.cells.empty()) sal_rows.push_back(std::move(sr));
        if (hist.defined()) {
          const int64_t bins = hist.numel();
          if (corr.header.size() == 3)
            for (int64_t b = 0; b < bins; ++b) corr.header.push_back(num(double(b) / bins, 1) + "-" + num(double(b + 1) / bins, 1));
          Row r{model, task, prec};
          for (int64_t b = 0; b < bins; ++b) r.push_back(std::to_string(hist[b].item<int64_t>()));
          corr.rows.push_back(r);
        }
      }
    }
  }
  if (!any) fail(path, ": holds no run results (expected groups written by `qinterp run`)");
  for (auto [t, rows] : {std::pair<Table*, std::vector<LayerRow>*>{&dead, &dead_rows}, {&sal, &sal_rows}}) {
    std::set<int64_t> layers;
    for (const auto& r : *rows) layers.insert(r.layers.begin(), r.layers.end());
    for (int64_t l : layers) t->header.push_back("layer " + std::to_string(l));
    for (const auto& r : *rows) {
      Row row = r.head;
      for (int64_t l : layers) row.push_back(r.cells.count(l) ? r.cells.at(l) : "\u2013");
      t->rows.push_back(std::move(row));
    }
  }
  std::vector<const Table*> tables{&acc};
  if (!dead_rows.empty()) tables.push_back(&dead);
  if (!sal_rows.empty()) tables.push_back(&sal);
  if (any_corr) tables.push_back(&corr);
  if (!drift.rows.empty()) tables.push_back(&drift);
  Report r;
  r.markdown = "# qinterp report: " + path + "\n\n";
  for (const Table* t : tables) r.markdown += md(*t);
  if (!o.out_dir.empty()) {
    io::paths::make_dirs(o.out_dir);
    auto write = [&](const std::string& name, const std::string& text) {
      const std::string p = io::paths::join(o.out_dir, name);
      std::ofstream f(p, std::ios::binary);
      f << text;
      if (!f) fail("report: cannot write ", p);
      r.files.push_back(p);
    };
    write("report.md", r.markdown);
    for (const Table* t : tables) {
      write(t->name + ".csv", csv(*t));
      if (o.latex) write(t->name + ".tex", tex(*t));
    }
  }
  return r;
}

}  // namespace qinterp::experiment
