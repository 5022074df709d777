#include "qinterp/io/safetensors.hpp"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "qinterp/io/paths.hpp"

using nlohmann::json;

namespace qinterp::io {

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

namespace {
// Header lengths above this are certainly corrupt (real headers are a few MB at most).
constexpr uint64_t kMaxHeader = 100ull << 20;
}

SafetensorsFile::SafetensorsFile(const std::string& path) : file_(path) {
  const size_t size = file_.size();
  if (size < 8) fail(path, ": not a safetensors file (", size, " bytes, header length needs 8)");
  uint64_t n = 0;
  std::memcpy(&n, file_.data(), 8);
  if (n > kMaxHeader || n > size - 8)
    fail(path, ": header length ", n, " exceeds the file (", size, " bytes)");
  json h;
  try {
    h = json::parse(file_.data() + 8, file_.data() + 8 + n);
  } catch (const json::exception& e) {
    fail(path, ": header is not valid JSON (", e.what(), ")");
  }
  if (!h.is_object()) fail(path, ": header is not a JSON object");
  const uint8_t* base = file_.data() + 8 + n;
  const uint64_t data_size = size - 8 - n;
  for (auto it = h.begin(); it != h.end(); ++it) {
    const std::string& name = it.key();
    const json& e = it.value();
    if (name == "__metadata__") {
      if (!e.is_object()) fail(path, ": __metadata__ is not an object");
      for (auto m = e.begin(); m != e.end(); ++m)
        metadata_[m.key()] = m.value().is_string() ? m.value().get<std::string>() : m.value().dump();
      continue;
    }
    auto bad = [&](const std::string& why) { fail(path, ": tensor '", name, "': ", why); };
    if (!e.is_object() || !e.contains("dtype") || !e.contains("shape") || !e.contains("data_offsets"))
      bad("entry needs dtype, shape and data_offsets");
    TensorView v;
    v.name = name;
    if (!e["dtype"].is_string() || !dtype_from_name(e["dtype"].get<std::string>(), &v.dtype))
      bad("unknown dtype " + e["dtype"].dump());
    if (!e["shape"].is_array()) bad("shape is not an array");
    uint64_t numel = 1;
    for (const auto& d : e["shape"]) {
      if (!d.is_number_integer() || d.get<int64_t>() < 0) bad("shape has a non-integer or negative dim");
      const uint64_t dim = d.get<uint64_t>();
      if (dim != 0 && numel > (uint64_t{1} << 62) / dim) bad("shape is impossibly large");
      numel *= dim;
      v.shape.push_back(static_cast<int64_t>(dim));
    }
    const json& off = e["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      bad("data_offsets must be two non-negative integers");
    const uint64_t b = off[0].get<uint64_t>(), en = off[1].get<uint64_t>();
    if (b > en || en > data_size)
      bad("data_offsets [" + std::to_string(b) + ", " + std::to_string(en) +
          "] lie outside the data region of " + std::to_string(data_size) + " bytes");
    if (en - b != numel * dtype_size(v.dtype))
      bad("data_offsets span " + std::to_string(en - b) + " bytes but shape and dtype need " +
          std::to_string(numel * dtype_size(v.dtype)));
    v.data = base + b;
    v.nbytes = en - b;
    tensors_.emplace(name, std::move(v));
  }
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<const TensorView*> v;
  for (const auto& kv : tensors_) v.push_back(&kv.second);
  std::sort(v.begin(), v.end(), [](auto* a, auto* b) { return a->data < b->data; });
  std::vector<std::string> out;
  for (auto* t : v) out.push_back(t->name);
  return out;
}

const TensorView& SafetensorsFile::get(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) fail(path(), ": no tensor named '", name, "'");
  return it->second;
}

SafetensorsCheckpoint::SafetensorsCheckpoint(const std::string& path) : path_(path) {
  std::string file = path, index;
  if (paths::is_dir(path)) {
    if (paths::exists(paths::join(path, "model.safetensors.index.json")))
      index = paths::join(path, "model.safetensors.index.json");
    else if (paths::exists(paths::join(path, "model.safetensors")))
      file = paths::join(path, "model.safetensors");
    else
      fail(path, ": directory has neither model.safetensors nor model.safetensors.index.json");
  } else if (paths::ends_with(path, ".json")) {
    index = path;
  }
  if (index.empty()) {
    shards_.push_back(std::make_unique<SafetensorsFile>(file));
    for (const auto& n : shards_[0]->names()) where_[n] = 0;
    return;
  }
  json j;
  {
    std::ifstream in(index);
    if (!in) fail(index, ": cannot open");
    try {
      in >> j;
    } catch (const json::exception& e) {
      fail(index, ": not valid JSON (", e.what(), ")");
    }
  }
  if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
    fail(index, ": missing the \"weight_map\" object");
  std::map<std::string, size_t> shard_ix;
  for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
    if (!it.value().is_string()) fail(index, ": weight_map entry '", it.key(), "' is not a file name");
    const std::string shard = it.value().get<std::string>();
    if (shard.find('/') != std::string::npos || shard.find("..") != std::string::npos)
      fail(index, ": shard name '", shard, "' must be a plain file name");
    auto s = shard_ix.find(shard);
    if (s == shard_ix.end()) {
      shards_.push_back(std::make_unique<SafetensorsFile>(paths::join(paths::parent(index), shard)));
      s = shard_ix.emplace(shard, shards_.size() - 1).first;
    }
    if (!shards_[s->second]->has(it.key()))
      fail(index, ": tensor '", it.key(), "' is mapped to ", shard, " which does not contain it");
    where_[it.key()] = s->second;
  }
}

std::vector<std::string> SafetensorsCheckpoint::names() const {
  std::vector<std::string> out;
  for (const auto& kv : where_) out.push_back(kv.first);
  return out;
}

const TensorView& SafetensorsCheckpoint::get(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) fail(path_, ": no tensor named '", name, "'");
  return shards_[it->second]->get(name);
}

std::map<std::string, std::string> SafetensorsCheckpoint::metadata() const {
  return shards_.empty() ? std::map<std::string, std::string>{} : shards_[0]->metadata();
}

void write_safetensors(const std::string& path, const std::vector<TensorView>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  json h = json::object();
  if (!metadata.empty()) h["__metadata__"] = metadata;
  uint64_t off = 0;
  for (const auto& t : tensors) {
    if (t.nbytes != static_cast<uint64_t>(t.numel()) * dtype_size(t.dtype))
      fail(path, ": tensor '", t.name, "' has ", t.nbytes, " bytes but its shape and dtype need ",
           t.numel() * dtype_size(t.dtype));
    h[t.name] = {{"dtype", dtype_name(t.dtype)}, {"shape", t.shape}, {"data_offsets", {off, off + t.nbytes}}};
    off += t.nbytes;
  }
  std::string hs = h.dump();
  hs.append((8 - hs.size() % 8) % 8, ' ');  // keep the data 8-byte aligned, as the reference does
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) fail(tmp, ": cannot create");
    const uint64_t n = hs.size();
    out.write(reinterpret_cast<const char*>(&n), 8);
    out.write(hs.data(), static_cast<std::streamsize>(hs.size()));
    for (const auto& t : tensors) out.write(static_cast<const char*>(t.data), static_cast<std::streamsize>(t.nbytes));
    out.flush();
    if (!out) {
      out.close();
      std::remove(tmp.c_str());
      fail(tmp, ": write failed (disk full?)");
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    fail(path, ": cannot move the written file into place (", std::strerror(errno), ")");
  }
}

}  // namespace qinterp::io
