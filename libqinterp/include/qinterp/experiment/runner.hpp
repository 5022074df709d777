// The main job: the paper's protocol (PROTOCOLS.md §1) over one model, several precisions and
// tasks, into one HDF5 file.
//
// Per task:
//   forward stage  one pass over the task's examples in batches (left padding), every precision in
//                  lockstep on the same batch: the last position's logits give the prediction and
//                  calibration; hooks on blocks.{L}.mlp.hook_act feed DeadNeurons, NeuronStats,
//                  Correlation and, for each quantized precision, Drift against the reference
//                  precision's activations of the same batch (nothing is cached beyond one batch);
//   ig stage       per precision and example, IntegratedGradients on the hooked layers in one call,
//                  folded into SalientNeurons.
// Both stages save their state every checkpoint_seconds; a run started again with the same
// settings and file resumes where the last checkpoint left it and ends with the same results.
//
// Results (layout stable; docs/runner.md):
//   /{model}/{precision}/{task}                   attrs: model_file, spec, mode, seed, scoring, ...
//     predictions/{predicted_id, confidence, correct, gold}   one row per example
//     calibration                                 attrs accuracy, confidence, ece, ace; reliability datasets
//     {hook}/dead, {hook}/stats, {hook}/correlation, {hook}/salient   the analyses' results
//     drift/{hook}                                (quantized precisions)
//   /{model}/_checkpoints/...                     resumable state (removed when a stage is done)
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "qinterp/analysis/accumulator.hpp"
#include "qinterp/experiment/task.hpp"
#include "qinterp/progress.hpp"

namespace qinterp::experiment {

struct RunOptions {
  std::string model;       // path (llama2.c, GGUF, safetensors, HF directory, saved quantized model)
  std::string tokenizer;   // "" = the model's own / beside it (text::find_tokenizer)
  std::string model_name;  // group name in the file; "" = the model file's stem
  std::vector<std::string> precisions = {"fp32", "int8", "nf4"};  // dtype or quantization specs
  std::vector<std::string> tasks = {"boolq"};                     // built-in names or CSV paths
  std::string data_dir;    // where the built-in tasks' CSVs are
  TaskOptions task_options;  // a template ("{}" = the prompt), label words, column names for every task
  // Any of: predictions (implies calibration), dead, stats, correlation, drift, salient; "all".
  std::vector<std::string> analyses = {"all"};
  std::vector<int64_t> layers;  // hooked blocks; empty = 0, 14 (a model with fewer layers: its middle), last
  // "clean": the prompt as the task gives it (template applied) for every pass, the model's
  //   default special tokens, fp32 activations around quantized layers, IG target = the generated token.
  // "paper": the authors' code (§1.5): fp16 for everything bitsandbytes leaves unquantized in the
  //   quantized runs, raw CSV prompts for the activation pass, batch 32 with pad = eos, IG on the
  //   re-tokenized stripped answer generated without special tokens.
  std::string mode = "clean";
  std::string scoring = "paper";  // "paper": substring of the greedy token; "labels": argmax over label words
  std::string chat = "none";      // "none"; "auto": the model's chat template (task.hpp)
  int64_t limit = 0;              // examples per task (first N; 0 = all)
  int64_t ig_limit = -1;          // examples for IG (-1 = limit)
  int64_t batch = 0;              // 0 = 32 (the authors' batch)
  int64_t ig_steps = 50;
  std::string ig_method = "gausslegendre";
  std::string ig_target;          // "" = by mode; "generated" | "retokenized"
  std::string device = "cpu";
  uint64_t seed = 42;
  int64_t correlation_top_k = 100;
  double checkpoint_seconds = 60;
  std::string out;                // the HDF5 file (created or resumed)
  bool restart = false;           // ignore (and replace) earlier results of the same groups
};

// Data-parallel: examples split into contiguous shards over `world` processes; each process runs
// its shard, and at the end of each stage `gather` receives this rank's state and returns every
// rank's state in rank order on rank 0 (an empty list elsewhere). Rank 0 merges and writes; other
// ranks write nothing. Python's torchrun entry point provides both through torch.distributed.
// Rank 0 also decides whether a stage is already in the file; `broadcast` gives every rank rank 0's value.
struct Parallel {
  int rank = 0, world = 1;
  std::function<std::vector<analysis::State>(const analysis::State&)> gather;
  std::function<int64_t(int64_t)> broadcast;
};

struct RunSummary {
  std::string out;
  int64_t stages_run = 0, stages_skipped = 0;  // skipped: already in the file
  // Unreadable copies that killed runs left in the file, removed at the end (their paths).
  std::vector<std::string> dropped;
};

// Checks the options (every name, spec, path) before any work; throws Error naming the first bad one.
void validate(const RunOptions& o);
RunSummary run(const RunOptions& o, const ProgressFn& progress = {}, const Parallel& par = {});

// Default hooked layers of a model with n blocks: 0, 14 (n/2 when n <= 15) and n − 1 (distinct).
std::vector<int64_t> default_layers(int64_t n);

}  // namespace qinterp::experiment
