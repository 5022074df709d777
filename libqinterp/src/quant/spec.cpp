#include "qinterp/quant/spec.hpp"

#include <cmath>
#include <cstdlib>
#include <set>
#include <sstream>

#include "qinterp/error.hpp"

namespace qinterp::quant {

namespace {

const char* kValid =
    "valid specs: fp32, fp16, bf16, nf4, fp4, int8, rtn8, rtn4, gptq8, gptq4, gptq3, gptq2, with optional "
    "parameters such as nf4:block=64,double_quant=1,compute=fp16 / int8:threshold=6.0 / "
    "rtn4:group=128,sym=0 / gptq4:group=128,act_order=0,damp=0.01,calib=128,seqlen=256 / nf4:decode=q8";

std::string fmt_double(double v) {
  std::ostringstream s;
  s << v;
  return s.str();
}

long parse_int(const std::string& spec, const std::string& key, const std::string& v) {
  char* end = nullptr;
  const long x = std::strtol(v.c_str(), &end, 10);
  if (v.empty() || *end) fail("quantization spec '", spec, "': ", key, "=", v, " is not an integer");
  return x;
}

double parse_real(const std::string& spec, const std::string& key, const std::string& v) {
  char* end = nullptr;
  const double x = std::strtod(v.c_str(), &end);
  if (v.empty() || *end || !std::isfinite(x)) fail("quantization spec '", spec, "': ", key, "=", v, " is not a number");
  return x;
}

bool parse_bool(const std::string& spec, const std::string& key, const std::string& v) {
  if (v == "1" || v == "true") return true;
  if (v == "0" || v == "false") return false;
  fail("quantization spec '", spec, "': ", key, "=", v, " must be 0 or 1");
}

}  // namespace

std::string QuantSpec::str() const {
  const std::string dec = decode_q8 ? ",decode=q8" : "";
  switch (method) {
    case Method::None: return dtype;
    case Method::NF4:
    case Method::FP4:
      return std::string(method == Method::NF4 ? "nf4" : "fp4") + ":block=" + std::to_string(block) +
             ",double_quant=" + (double_quant ? "1" : "0") + ",compute=" + compute + dec;
    case Method::Int8: return "int8:threshold=" + fmt_double(threshold) + ",compute=" + compute;
    case Method::RTN:
      return "rtn" + std::to_string(bits) + ":group=" + std::to_string(group) + ",sym=" + (sym ? "1" : "0") +
             ",compute=" + compute + dec;
    case Method::GPTQ:
      return "gptq" + std::to_string(bits) + ":group=" + std::to_string(group) + ",sym=" + (sym ? "1" : "0") +
             ",act_order=" + (act_order ? "1" : "0") + ",damp=" + fmt_double(damp) + ",calib=" +
             std::to_string(calib) + ",seqlen=" + std::to_string(seqlen) + ",compute=" + compute + dec;
  }
  return "?";
}

QuantSpec parse_quant_spec(const std::string& spec) {
  const size_t colon = spec.find(':');
  const std::string name = spec.substr(0, colon);
  QuantSpec q;
  std::set<std::string> allowed;
  if (name == "fp32" || name == "fp16" || name == "bf16") {
    q.method = Method::None;
    q.dtype = name;
    q.bits = name == "fp32" ? 32 : 16;
  } else if (name == "nf4" || name == "fp4") {
    q.method = name == "nf4" ? Method::NF4 : Method::FP4;
    q.bits = 4;
    allowed = {"block", "double_quant", "compute", "decode"};
  } else if (name == "int8") {
    q.method = Method::Int8;
    q.bits = 8;
    allowed = {"threshold", "compute"};
  } else if ((name.rfind("rtn", 0) == 0 && name.size() == 4) || (name.rfind("gptq", 0) == 0 && name.size() == 5)) {
    const char b = name.back();
    if (b < '2' || b > '8' || b == '5' || b == '6' || b == '7')
      fail("quantization spec '", spec, "': ", name, " has no such bit width (2, 3, 4 or 8); ", kValid);
    q.method = name[0] == 'r' ? Method::RTN : Method::GPTQ;
    q.bits = b - '0';
    allowed = {"group", "sym", "compute"};
    if (q.bits <= 4) allowed.insert("decode");
    if (q.method == Method::GPTQ) allowed.insert({"act_order", "damp", "calib", "seqlen"});
  } else {
    fail("unknown quantization spec '", spec, "'; ", kValid);
  }
  if (colon == std::string::npos) return q;
  if (allowed.empty()) fail("quantization spec '", spec, "': ", name, " takes no parameters; ", kValid);
  std::stringstream ss(spec.substr(colon + 1));
  std::string item;
  std::set<std::string> seen;
  while (std::getline(ss, item, ',')) {
    const size_t eq = item.find('=');
    if (eq == std::string::npos) fail("quantization spec '", spec, "': '", item, "' is not key=value; ", kValid);
    const std::string key = item.substr(0, eq), v = item.substr(eq + 1);
    if (!allowed.count(key)) {
      std::string keys;
      for (const auto& k : allowed) keys += (keys.empty() ? "" : ", ") + k;
      fail("quantization spec '", spec, "': ", name, " has no parameter '", key, "' (it takes: ", keys, ")");
    }
    if (!seen.insert(key).second) fail("quantization spec '", spec, "': parameter '", key, "' given twice");
    if (key == "block") {
      const long b = parse_int(spec, key, v);
      if (b < 32 || b > 4096 || (b & (b - 1)))
        fail("quantization spec '", spec, "': block=", v, " must be a power of two from 32 to 4096");
      q.block = static_cast<int>(b);
    } else if (key == "double_quant") {
      q.double_quant = parse_bool(spec, key, v);
    } else if (key == "compute") {
      if (v != "fp16" && v != "bf16" && v != "fp32")
        fail("quantization spec '", spec, "': compute=", v, " must be fp16, bf16 or fp32");
      q.compute = v;
    } else if (key == "decode") {
      if (v != "exact" && v != "q8") fail("quantization spec '", spec, "': decode=", v, " must be exact or q8");
      q.decode_q8 = v == "q8";
    } else if (key == "threshold") {
      q.threshold = parse_real(spec, key, v);
      if (q.threshold < 0) fail("quantization spec '", spec, "': threshold must be >= 0");
    } else if (key == "group") {
      const long g = parse_int(spec, key, v);
      if (g < 0 || g == 1) fail("quantization spec '", spec, "': group=", v, " must be 0 (per row) or >= 2");
      q.group = static_cast<int>(g);
    } else if (key == "sym") {
      q.sym = parse_bool(spec, key, v);
    } else if (key == "act_order") {
      q.act_order = parse_bool(spec, key, v);
    } else if (key == "damp") {
      q.damp = parse_real(spec, key, v);
      if (q.damp < 0 || q.damp > 1) fail("quantization spec '", spec, "': damp must lie in [0, 1]");
    } else if (key == "calib") {
      q.calib = static_cast<int>(parse_int(spec, key, v));
      if (q.calib < 1) fail("quantization spec '", spec, "': calib must be >= 1");
    } else if (key == "seqlen") {
      q.seqlen = static_cast<int>(parse_int(spec, key, v));
      if (q.seqlen < 1) fail("quantization spec '", spec, "': seqlen must be >= 1");
    }
  }
  return q;
}

std::string spec_for_device(const std::string& spec, const std::string& device) {
  if (spec.empty() || spec == "none" || device.rfind("cpu", 0) != 0) return spec;
  if (!parse_quant_spec(spec).quantized() || spec.find("compute=") != std::string::npos) return spec;
  return spec + (spec.find(':') == std::string::npos ? ":" : ",") + "compute=fp32";
}

}  // namespace qinterp::quant
