// Progress of long work, reported through a callback: the library never prints. ProgressMeter
// turns the callbacks into the lines a terminal or a log wants (rate and ETA).
#pragma once
#include <chrono>
#include <cstdint>
#include <functional>
#include <string>

namespace qinterp {

struct ProgressEvent {
  std::string stage;  // e.g. "forward boolq", "ig boolq nf4"
  int64_t done = 0, total = 0;  // units of work (examples, layers, windows)
  std::string unit = "examples";
  bool finished = false;  // the last event of a stage
};
using ProgressFn = std::function<void(const ProgressEvent&)>;

// Formats events: on a terminal one line redrawn in place ("\r"), elsewhere a plain line every
// `interval` seconds and at the end of each stage. Rate and ETA count from the stage's first event.
class ProgressMeter {
 public:
  explicit ProgressMeter(bool terminal, double interval_seconds = 10.0);
  // The text to print for this event ("" when nothing is due); terminal lines begin with '\r'.
  std::string update(const ProgressEvent& e);

 private:
  bool terminal_;
  double interval_;
  std::string stage_;
  int64_t first_done_ = 0;
  std::chrono::steady_clock::time_point start_, last_;
};

}  // namespace qinterp
