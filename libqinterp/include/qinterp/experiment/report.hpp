// Reports: the paper's tables from a run's HDF5 file (runner.hpp's layout), as Markdown, CSV and
// optionally LaTeX. Every number is read from the file; nothing is recomputed.
//   accuracy / confidence / ACE (and ECE) per model × task × precision   (Figures 1–3)
//   dead neurons per hooked layer, "dead / total"                          (Table of dead neurons)
//   salient neurons per hooked layer                                       (IG)
//   |r| bin counts, the hooked layers pooled                               (Figure 4)
//   drift of each quantized precision from the reference, per layer
#pragma once
#include <string>
#include <vector>

namespace qinterp::experiment {

struct ReportOptions {
  std::string out_dir;  // "" = write nothing, only return the Markdown
  bool latex = false;
};

struct Report {
  std::string markdown;             // every table
  std::vector<std::string> files;   // what was written
};

// Throws Error naming the file when it is not a run's result file.
Report make_report(const std::string& h5_path, const ReportOptions& o = {});

}  // namespace qinterp::experiment
