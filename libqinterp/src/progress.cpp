#include "qinterp/progress.hpp"

#include <cstdio>

namespace qinterp {

ProgressMeter::ProgressMeter(bool terminal, double interval) : terminal_(terminal), interval_(interval) {}

namespace {
std::string clock(double s) {
  if (!(s >= 0) || s > 1e7) return "?";
  char b[32];
  const long t = static_cast<long>(s + 0.5);
  if (t >= 3600) std::snprintf(b, sizeof b, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
  else std::snprintf(b, sizeof b, "%ld:%02ld", t / 60, t % 60);
  return b;
}
}  // namespace

std::string ProgressMeter::update(const ProgressEvent& e) {
  const auto now = std::chrono::steady_clock::now();
  if (e.stage != stage_) {  // a new stage: its clock starts here
    stage_ = e.stage;
    start_ = last_ = now;
    first_done_ = e.done;  // a resumed stage starts where it left off
  }
  const double elapsed = std::chrono::duration<double>(now - start_).count();
  if (!e.finished && !terminal_ && e.done >= e.total) return "";  // the stage's closing line follows
  const bool due = e.finished || terminal_ || std::chrono::duration<double>(now - last_).count() >= interval_;
  if (!due) return "";
  last_ = now;
  const double rate = elapsed > 0 ? static_cast<double>(e.done - first_done_) / elapsed : 0;
  const double eta = rate > 0 ? static_cast<double>(e.total - e.done) / rate : -1;
  char line[512];
  const int width = 24;
  std::string bar;
  if (terminal_ && e.total > 0) {
    const int fill = static_cast<int>(width * static_cast<double>(e.done) / static_cast<double>(e.total));
    bar = "[" + std::string(static_cast<size_t>(fill), '#') + std::string(static_cast<size_t>(width - fill), '.') + "] ";
  }
  std::snprintf(line, sizeof line, "%s%s: %s%lld/%lld %s, %.2f/s, %s elapsed%s%s", terminal_ ? "\r" : "", e.stage.c_str(),
                bar.c_str(), static_cast<long long>(e.done), static_cast<long long>(e.total), e.unit.c_str(), rate,
                clock(elapsed).c_str(), e.finished ? "" : ", ETA ", e.finished ? "" : clock(eta).c_str());
  std::string out = line;
  if (terminal_) out += "\x1b[K";  // clear what a longer previous line left
  if (!terminal_ || e.finished) out += "\n";
  return out;
}

}  // namespace qinterp
