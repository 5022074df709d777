// Bindings for qinterp::experiment (tasks, the runner, reports) and the command-line entry point.
// The run releases the GIL; its progress and gather callbacks take it back to call Python.
#include <torch/csrc/utils/pybind.h>

#include <pybind11/functional.h>
#include <pybind11/stl.h>

#include "../../libqinterp/cli/cli.hpp"
#include "qinterp/error.hpp"
#include "qinterp/experiment/report.hpp"
#include "qinterp/experiment/runner.hpp"
#include "qinterp/experiment/task.hpp"
#include "qinterp/progress.hpp"

namespace py = pybind11;
using namespace qinterp;

namespace {

experiment::RunOptions options_from(const py::dict& d) {
  experiment::RunOptions o;
  for (auto& [k, v] : d) {
    const std::string key = py::str(k);
    if (v.is_none()) continue;
    if (key == "model") o.model = v.cast<std::string>();
    else if (key == "tokenizer") o.tokenizer = v.cast<std::string>();
    else if (key == "name") o.model_name = v.cast<std::string>();
    else if (key == "quant") o.precisions = v.cast<std::vector<std::string>>();
    else if (key == "task") o.tasks = v.cast<std::vector<std::string>>();
    else if (key == "data") o.data_dir = v.cast<std::string>();
    else if (key == "template") o.task_options.prompt_template = v.cast<std::string>();
    else if (key == "labels") o.task_options.labels = v.cast<std::vector<std::string>>();
    else if (key == "prompt_column") o.task_options.prompt_column = v.cast<std::string>();
    else if (key == "gold_column") o.task_options.gold_column = v.cast<std::string>();
    else if (key == "analyses") o.analyses = v.cast<std::vector<std::string>>();
    else if (key == "layers") o.layers = v.cast<std::vector<int64_t>>();
    else if (key == "mode") o.mode = v.cast<std::string>();
    else if (key == "scoring") o.scoring = v.cast<std::string>();
    else if (key == "chat") o.chat = v.cast<std::string>();
    else if (key == "limit") o.limit = v.cast<int64_t>();
    else if (key == "ig_limit") o.ig_limit = v.cast<int64_t>();
    else if (key == "batch") o.batch = v.cast<int64_t>();
    else if (key == "ig_steps") o.ig_steps = v.cast<int64_t>();
    else if (key == "ig_method") o.ig_method = v.cast<std::string>();
    else if (key == "ig_target") o.ig_target = v.cast<std::string>();
    else if (key == "device") o.device = v.cast<std::string>();
    else if (key == "seed") o.seed = v.cast<uint64_t>();
    else if (key == "checkpoint_seconds") o.checkpoint_seconds = v.cast<double>();
    else if (key == "out") o.out = v.cast<std::string>();
    else if (key == "restart") o.restart = v.cast<bool>();
    else fail("run: unknown option '", key, "'");
  }
  return o;
}

// comm: a Python object with gather(State) -> [State] and broadcast(int) -> int (qinterp._distributed).
experiment::Parallel parallel_from(int rank, int world, const std::optional<py::object>& comm) {
  experiment::Parallel par;
  par.rank = rank;
  par.world = world;
  if (comm) {
    py::object c = *comm;
    par.gather = [c](const analysis::State& s) {
      py::gil_scoped_acquire gil;
      return c.attr("gather")(s).cast<std::vector<analysis::State>>();
    };
    par.broadcast = [c](int64_t v) {
      py::gil_scoped_acquire gil;
      return c.attr("broadcast")(v).cast<int64_t>();
    };
  }
  return par;
}

}  // namespace

void bind_experiment(py::module_& m) {
  py::class_<ProgressEvent>(m, "ProgressEvent")
      .def_readonly("stage", &ProgressEvent::stage)
      .def_readonly("done", &ProgressEvent::done)
      .def_readonly("total", &ProgressEvent::total)
      .def_readonly("unit", &ProgressEvent::unit)
      .def_readonly("finished", &ProgressEvent::finished);
  py::class_<ProgressMeter>(m, "ProgressMeter", "Formats progress events: rate and ETA; on a terminal one line redrawn.")
      .def(py::init<bool, double>(), py::arg("terminal"), py::arg("interval_seconds") = 10.0)
      .def("update", &ProgressMeter::update, py::arg("event"));

  py::class_<experiment::Task>(m, "Task", "A task: prompts, gold answers, template and label words.")
      .def_readonly("name", &experiment::Task::name)
      .def_readonly("source", &experiment::Task::source)
      .def_readonly("prompt_template", &experiment::Task::prompt_template)
      .def_readonly("labels", &experiment::Task::labels)
      .def("prompt", &experiment::Task::prompt, py::arg("i"), "Example i's prompt with the template applied.")
      .def("gold_index", &experiment::Task::gold_index, py::arg("i"))
      .def_property_readonly("prompts", [](const experiment::Task& t) {
        std::vector<std::string> v;
        for (const auto& e : t.examples) v.push_back(e.prompt);
        return v;
      })
      .def_property_readonly("golds", [](const experiment::Task& t) {
        std::vector<std::string> v;
        for (const auto& e : t.examples) v.push_back(e.gold);
        return v;
      })
      .def("__len__", [](const experiment::Task& t) { return t.examples.size(); });
  m.def("load_task", [](const std::string& name, const std::string& data_dir, const std::string& tpl,
                        const std::vector<std::string>& labels, const std::string& pc, const std::string& gc) {
          experiment::TaskOptions o;
          o.prompt_template = tpl;
          o.labels = labels;
          o.prompt_column = pc;
          o.gold_column = gc;
          return experiment::load_task(name, data_dir, o);
        }, py::arg("name"), py::arg("data_dir") = "", py::arg("prompt_template") = "",
        py::arg("labels") = std::vector<std::string>{}, py::arg("prompt_column") = "prompt",
        py::arg("gold_column") = "gold");
  m.def("read_csv", [](const std::string& path) {
          const auto t = experiment::read_csv(path);
          return py::make_tuple(t.header, t.rows, t.lines);
        }, py::arg("path"));
  m.def("paper_correct", &experiment::paper_correct, py::arg("answer"), py::arg("gold"));
  m.def("chat_template_of", &experiment::chat_template_of, py::arg("model_path"));
  m.def("apply_chat_template", &experiment::apply_chat_template, py::arg("template"), py::arg("prompt"));
  m.def("default_layers", &experiment::default_layers, py::arg("num_layers"));

  m.def("run", [](const py::dict& opts, const std::optional<py::function>& progress, int rank, int world,
                  const std::optional<py::object>& comm) {
          const experiment::RunOptions o = options_from(opts);
          ProgressFn cb;
          if (progress) {
            py::function f = *progress;
            cb = [f](const ProgressEvent& e) {
              py::gil_scoped_acquire gil;
              f(e);
            };
          }
          const experiment::Parallel par = parallel_from(rank, world, comm);
          experiment::RunSummary s;
          {
            py::gil_scoped_release nogil;
            s = experiment::run(o, cb, par);
          }
          py::dict d;
          d["out"] = s.out;
          d["stages_run"] = s.stages_run;
          d["stages_skipped"] = s.stages_skipped;
          d["dropped"] = s.dropped;
          return d;
        }, py::arg("options"), py::arg("progress") = py::none(), py::arg("rank") = 0, py::arg("world") = 1,
        py::arg("comm") = py::none());
  m.def("make_report", [](const std::string& path, const std::string& out_dir, bool latex) {
          experiment::ReportOptions o;
          o.out_dir = out_dir;
          o.latex = latex;
          const auto r = experiment::make_report(path, o);
          return py::make_tuple(r.markdown, r.files);
        }, py::arg("path"), py::arg("out_dir") = "", py::arg("latex") = false);
  m.def("cli_main", [](const std::vector<std::string>& argv, int rank, int world, const std::optional<py::object>& comm) {
          std::vector<std::string> args = argv;
          std::vector<char*> ptrs;
          for (auto& a : args) ptrs.push_back(a.data());
          ptrs.push_back(nullptr);
          const experiment::Parallel par = parallel_from(rank, world, comm);
          py::gil_scoped_release nogil;
          return qinterp_cli(static_cast<int>(args.size()), ptrs.data(), par);
        }, py::arg("argv"), py::arg("rank") = 0, py::arg("world") = 1, py::arg("comm") = py::none(),
        "The qinterp command line: argv[0] is the program name.");
}
