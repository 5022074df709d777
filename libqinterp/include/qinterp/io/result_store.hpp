// ResultStore: one HDF5 file per run, readable with h5py.
//
// Layout (DESIGN.md): groups model / precision / task / analysis, e.g.
//   /stories260K/nf4/boolq/blocks.2.mlp.hook_act/DeadNeurons/{dead, count, min, ...}
// Results are datasets (0-dim for scalars), chunked and deflate-compressed when larger than a
// few KB. Attributes (strings, integers, floats) hold model, spec, seed and versions.
// Saved accumulator state lives in a group with attribute `kind` and one dataset per tensor, so
// a run can resume. Raw activations, when asked for, go to one chunked, growable
// [tokens, neurons] dataset per hook (fp16 or fp32) with a token table [tokens, 2] int64
// (example index, position) beside it — never one group per neuron.
//
// Durability: every write call ends with an HDF5 flush, so a killed run leaves a file holding
// everything written before the last completed call. The file is not locked: h5py may open it
// while a run is going and sees it as of the last flush. Opening a file that is not HDF5, or
// reading a path that does not exist, throws qinterp::Error naming the file and the object.
// Dtypes: bool (stored as uint8 with attribute dtype=bool), uint8, int32, int64, float16,
// float32, float64; tensors on a GPU are copied to the host.
// Checksums: each dataset written by write() or a result carries `crc32`, the CRC-32 of its bytes
// (Python's zlib.crc32 of `ds[()].tobytes()`), and each object given attributes `attrs_crc32`
// over them (result_store.cpp: crc_of). read() and attrs() check them where present and throw
// naming the object when they differ; attrs() does not return them. The activation dumps, which
// grow in place, carry none.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <variant>
#include <vector>

#include "qinterp/state.hpp"

namespace qinterp::io {

using AttrValue = std::variant<int64_t, double, std::string>;
using Attrs = std::map<std::string, AttrValue>;

class ResultStore;

// A growable [tokens, neurons] activation dump with its token table; see ResultStore::dump.
class ActivationDump {
 public:
  // act [T, N] (or [B, S, N] with mask [B, S]); example [T] and position [T] int64 name each
  // real token. With a mask, example/position may be omitted: rows are numbered by
  // (first_example + b, s).
  void append(const at::Tensor& act, const at::Tensor& example, const at::Tensor& position);
  void append_masked(const at::Tensor& act, const at::Tensor& mask, int64_t first_example);
  int64_t rows() const { return rows_; }
  // Drops rows past `rows` (a resumed run rewinds to what its saved state had counted).
  void truncate(int64_t rows);
  const std::string& path() const { return group_; }  // the group inside the file

 private:
  friend class ResultStore;
  ActivationDump(ResultStore* store, std::string group, int64_t neurons, bool fp16, int64_t rows)
      : store_(store), group_(std::move(group)), neurons_(neurons), fp16_(fp16), rows_(rows) {}
  ResultStore* store_;
  std::string group_;
  int64_t neurons_;
  bool fp16_;
  int64_t rows_;
};

class ResultStore {
 public:
  enum class Mode { Create, Append, Read };  // Create truncates; Append creates if missing
  explicit ResultStore(const std::string& path, Mode mode = Mode::Append);
  ~ResultStore();
  ResultStore(const ResultStore&) = delete;
  ResultStore& operator=(const ResultStore&) = delete;

  const std::string& path() const { return path_; }

  // "a/b/c" from parts; each part may not contain '/' or be empty or "." / "..".
  static std::string join(const std::vector<std::string>& parts);

  bool exists(const std::string& object) const;
  // Member names, sorted. Names and string attributes come back as UTF-8: a byte that is not
  // (only a damaged or foreign file has one) is written \xNN.
  std::vector<std::string> list(const std::string& group) const;

  void set_attrs(const std::string& object, const Attrs& attrs);  // creates groups as needed
  Attrs attrs(const std::string& object) const;

  // Writes (replacing) one dataset; groups on the way are created.
  void write(const std::string& dataset, const at::Tensor& t);
  at::Tensor read(const std::string& dataset) const;

  // A result or a state: one dataset per entry under `group`, replacing what was there as a whole
  // (written aside, then swapped in, so a killed run never leaves half a group).
  void write_tensors(const std::string& group, const Tensors& ts);
  Tensors read_tensors(const std::string& group) const;
  void save_state(const std::string& group, const State& s, const Attrs& extra = {});
  State load_state(const std::string& group) const;

  // Removes a group or dataset (and copies of it a killed save left); nothing when it is absent.
  void remove(const std::string& object);

  // Opens (or creates) the raw activation dump `group`/activations + `group`/tokens.
  ActivationDump dump(const std::string& group, int64_t neurons, bool fp16 = true);

  void flush();
  // Flushes and closes the file (the destructor does it too); later calls throw Error.
  void close();

  // A run killed while HDF5 wrote a save's copy ("<group>.partial") can leave a link to an object
  // header HDF5 cannot read, nor unlink: the store then writes beside it and leaves it orphaned,
  // but whoever walks the file (h5py's visititems, h5ls -r) stops at it. This rewrites the closed
  // file `path` without such copies (everything else copied as it is, then renamed over the
  // original) and returns their paths. The file is not touched when there are none, or when some
  // other object is unreadable: that is damage for the caller's read-back to report. The work runs
  // in a child process: HDF5 1.10 can crash or hang on damage it meets while copying, and then the
  // file is left as it was.
  static std::vector<std::string> drop_unreadable_objects(const std::string& path);

 private:
  static std::vector<std::string> drop_unreadable_objects_here(const std::string& path);
  int64_t open_dataset(const std::string& dataset) const;  // hid_t, after the layout check
  friend class ActivationDump;
  std::string path_;
  int64_t file_ = -1;  // hid_t
  bool read_only_ = false;
  // The file as opened, mapped, and its global heap objects: string attributes are checked
  // against them before HDF5 reads them (result_store.cpp says why). Only until the first write.
  std::shared_ptr<const struct HeapIndex> heaps_;
  void check_group(const std::string& group) const;
  // groups (object header addresses) check_group found sound: each is walked once, not at every
  // lookup in it (the walk reads the whole link index)
  mutable std::set<uint64_t> sound_groups_;
  mutable bool wrote_ = false;
  int64_t open_group(const std::string& group, bool create) const;
  void remove_if_exists(const std::string& object);
  void writable(const char* what) const;
  void open_check() const;
  void write_group(const std::string& group, const Tensors& ts, const Attrs& attrs);
  void write_unflushed(const std::string& dataset, const at::Tensor& t);
  Attrs read_attrs(const std::string& object) const;  // as stored, checksum unchecked
};

}  // namespace qinterp::io

namespace qinterp {
using io::ResultStore;
}
