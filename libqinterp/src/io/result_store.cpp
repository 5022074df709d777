// ResultStore on the HDF5 C API (Debian's libhdf5, 1.10). Every HDF5 call is checked; failures
// become qinterp::Error with the file, the object and HDF5's own innermost message.
#include "qinterp/io/result_store.hpp"

#include <ATen/ATen.h>
#include <hdf5.h>
#include <torch/headeronly/version.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <set>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <type_traits>
#include <zlib.h>

#include "qinterp/error.hpp"
#include "qinterp/io/mapped_file.hpp"
#include "qinterp/version.hpp"
#include "hdf5_checks.hpp"

namespace qinterp::io {

static_assert(std::is_same<hid_t, int64_t>::value, "HDF5 >= 1.10 uses 64-bit ids");

namespace {

// HDF5's innermost error description (the most specific one), or "".
std::string h5_message() {
  std::string msg;
  H5Ewalk2(
      H5E_DEFAULT, H5E_WALK_UPWARD,
      [](unsigned n, const H5E_error2_t* e, void* out) -> herr_t {
        if (n == 0 && e->desc) *static_cast<std::string*>(out) = e->desc;
        return 0;
      },
      &msg);
  H5Eclear2(H5E_DEFAULT);
  return msg;
}

// Owns one hid_t and closes it with the right function.
struct Id {
  hid_t id = -1;
  herr_t (*close)(hid_t) = nullptr;
  Id() = default;
  Id(hid_t i, herr_t (*c)(hid_t)) : id(i), close(c) {}
  Id(const Id&) = delete;
  Id& operator=(const Id&) = delete;
  Id(Id&& o) noexcept : id(o.id), close(o.close) { o.id = -1; }
  ~Id() {
    if (id >= 0 && close) close(id);
  }
  operator hid_t() const { return id; }
};

std::vector<std::string> split(const std::string& path) {
  std::vector<std::string> parts;
  size_t s = 0;
  while (s <= path.size()) {
    size_t e = path.find('/', s);
    if (e == std::string::npos) e = path.size();
    if (e > s) parts.push_back(path.substr(s, e - s));
    if (parts.size() && (parts.back() == "." || parts.back() == ".."))
      fail("ResultStore: '", path, "' has a '", parts.back(), "' component; paths inside the file name groups "
           "downward only (a/b/c)");
    s = e + 1;
  }
  return parts;
}

// What HDF5 itself would refuse to create as a link name; only damage puts one in a file.
bool valid_link_name(const std::string& n) { return !n.empty() && n != "." && n.find('/') == std::string::npos; }

void silence_hdf5() {
  static bool done = [] {
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);  // errors come back as qinterp::Error, not stderr
    return true;
  }();
  (void)done;
}

hid_t fp16_type() {
  static hid_t t = [] {
    hid_t x = H5Tcopy(H5T_IEEE_F32LE);  // the layout h5py recognises as numpy float16
    H5Tset_fields(x, 15, 10, 5, 0, 10);
    H5Tset_size(x, 2);
    H5Tset_ebias(x, 15);
    H5Tlock(x);
    return x;
  }();
  return t;
}

// HDF5 checksums neither the data of small (contiguous) datasets nor attribute values in the
// 1.8 format these files use, so a damaged byte there would read back as another number. Every
// dataset this store writes carries the CRC-32 (zlib's, as Python's zlib.crc32) of its bytes,
// and every object it sets attributes on the CRC-32 of those attributes; reads check both.
constexpr const char* kDataCrc = "crc32";
constexpr const char* kAttrsCrc = "attrs_crc32";

uint32_t crc_of(const void* p, size_t n, uint32_t crc = 0) {
  return static_cast<uint32_t>(crc32_z(crc, static_cast<const Bytef*>(p), n));
}

// The attributes in a fixed byte form: for each, sorted by name, the name, a NUL, a type letter
// and the value (int64 or float64 as 8 little-endian bytes, a string with its NUL).
uint32_t crc_of(const Attrs& attrs) {
  uint32_t crc = 0;
  for (const auto& [name, value] : attrs) {
    if (name == kAttrsCrc) continue;
    crc = crc_of(name.c_str(), name.size() + 1, crc);
    unsigned char v[9] = {};
    if (auto* i = std::get_if<int64_t>(&value)) {
      v[0] = 'i';
      for (int k = 0; k < 8; ++k) v[1 + k] = static_cast<unsigned char>(static_cast<uint64_t>(*i) >> (8 * k));
      crc = crc_of(v, 9, crc);
    } else if (auto* d = std::get_if<double>(&value)) {
      uint64_t bits;
      std::memcpy(&bits, d, 8);
      v[0] = 'f';
      for (int k = 0; k < 8; ++k) v[1 + k] = static_cast<unsigned char>(bits >> (8 * k));
      crc = crc_of(v, 9, crc);
    } else {
      const std::string& str = std::get<std::string>(value);
      v[0] = 's';
      crc = crc_of(v, 1, crc);
      crc = crc_of(str.c_str(), str.size() + 1, crc);
    }
  }
  return crc;
}

herr_t write_crc_attr(hid_t obj, const char* name, uint32_t crc) {
  if (H5Aexists(obj, name) > 0 && H5Adelete(obj, name) < 0) return -1;
  Id space(H5Screate(H5S_SCALAR), H5Sclose);
  Id a(H5Acreate2(obj, name, H5T_STD_U32LE, space, H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  return a.id < 0 ? -1 : H5Awrite(a, H5T_NATIVE_UINT32, &crc);
}

hid_t h5_type(at::ScalarType s) {
  switch (s) {
    case at::kBool:
    case at::kByte: return H5T_NATIVE_UINT8;
    case at::kChar: return H5T_NATIVE_INT8;
    case at::kInt: return H5T_NATIVE_INT32;
    case at::kLong: return H5T_NATIVE_INT64;
    case at::kHalf: return fp16_type();
    case at::kFloat: return H5T_NATIVE_FLOAT;
    case at::kDouble: return H5T_NATIVE_DOUBLE;
    default: fail("ResultStore: cannot store tensors of dtype ", s, " (use bool, uint8, int8, int32, int64, fp16, fp32, fp64)");
  }
}

// No OS file lock: a user may open a running job's file with h5py and see it as of the last
// flush (HDF5 1.10 would otherwise refuse them until the run ends).
hid_t file_access() {
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  H5Pset_file_locking(fapl, false, true);
  return fapl;
}

bool file_exists(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0;
}

}  // namespace

#define QH5_CHECK(expr, ...)                                              \
  do {                                                                  \
    if ((expr) < 0) {                                                   \
      const std::string h5msg_ = h5_message();                          \
      fail("HDF5 file ", path_, ": ", __VA_ARGS__, h5msg_.empty() ? "" : " (HDF5: " + h5msg_ + ")"); \
    }                                                                   \
  } while (0)

namespace {
// The object header of `path` (absolute): its address and type. False (HDF5's message cleared)
// when HDF5 cannot read it.
bool object_info(hid_t file, const std::string& path, H5O_info_t& info) {
  if (H5Oget_info_by_name2(file, path.c_str(), &info, H5O_INFO_BASIC, H5P_DEFAULT) >= 0) return true;
  h5_message();
  return false;
}

// What the link at `path` (absolute, existing) points to; H5O_TYPE_UNKNOWN if HDF5 cannot say.
H5O_type_t object_type(hid_t file, const std::string& path) {
  H5O_info_t info;
  return object_info(file, path, info) ? info.type : H5O_TYPE_UNKNOWN;
}
}  // namespace

// Before HDF5 walks a group's links: its symbol table must point inside the file (see
// check_symbol_table). Only while the mapped copy matches the file (nothing written yet).
void ResultStore::check_group(const std::string& group) const {
  if (!heaps_ || wrote_) return;
  const std::string at = group.empty() ? "/" : group;
  H5O_info_t info;
  if (!object_info(file_, at, info) || info.type != H5O_TYPE_GROUP) return;  // HDF5 will say what it cannot read
  const auto addr = static_cast<uint64_t>(info.addr);
  if (sound_groups_.count(addr)) return;
  const std::string why = check_symbol_table(*heaps_, addr);
  if (!why.empty()) fail("HDF5 file ", path_, ": group '", at, "': ", why, "; the file is damaged");
  sound_groups_.insert(addr);
}

ResultStore::ResultStore(const std::string& path, Mode mode) : path_(path), read_only_(mode == Mode::Read) {
  silence_hdf5();
  const bool exists = file_exists(path);
  if (mode == Mode::Create || (mode == Mode::Append && !exists)) {
    const size_t slash = path.find_last_of('/');
    const std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
    if (!file_exists(dir)) fail("HDF5 file ", path, ": the folder ", dir, " does not exist (create it first)");
    Id fapl(file_access(), H5Pclose);
    // Keep files readable by any HDF5 >= 1.8 (h5py, MATLAB, ...).
    H5Pset_libver_bounds(fapl, H5F_LIBVER_EARLIEST, H5F_LIBVER_V18);
    file_ = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
    QH5_CHECK(file_, "cannot create the file (is the directory there and writable?)");
    set_attrs("/", {{"qinterp_version", std::string(version())},
                    {"torch_version", std::string(TORCH_VERSION)},
                    {"hdf5_version", std::to_string(H5_VERS_MAJOR) + "." + std::to_string(H5_VERS_MINOR) + "." +
                                         std::to_string(H5_VERS_RELEASE)}});
    return;
  }
  if (!exists) fail("HDF5 file ", path, ": no such file");
  const htri_t is = H5Fis_hdf5(path.c_str());
  h5_message();
  if (is <= 0) fail("HDF5 file ", path, ": not an HDF5 file (no HDF5 signature found)");
  heaps_ = check_global_heaps(path);
  Id fapl(file_access(), H5Pclose);
  file_ = H5Fopen(path.c_str(), read_only_ ? H5F_ACC_RDONLY : H5F_ACC_RDWR, fapl);
  QH5_CHECK(file_, "cannot open it ", read_only_ ? "for reading" : "for writing", " — damaged or truncated?");
}

ResultStore::~ResultStore() { close(); }

void ResultStore::close() {
  if (file_ >= 0) {
    if (!read_only_) H5Fflush(file_, H5F_SCOPE_GLOBAL);
    H5Fclose(file_);
    h5_message();
    file_ = -1;
  }
}

void ResultStore::open_check() const {
  if (file_ < 0) fail("HDF5 file ", path_, ": the store was closed");
}

std::string ResultStore::join(const std::vector<std::string>& parts) {
  std::string out;
  for (const auto& p : parts) {
    if (p.empty() || p == "." || p == ".." || p.find('/') != std::string::npos)
      fail("ResultStore: '", p, "' cannot be a group name (empty, '.', '..' or containing '/')");
    out += (out.empty() ? "" : "/") + p;
  }
  return out;
}

void ResultStore::writable(const char* what) const {
  open_check();
  if (read_only_) fail("HDF5 file ", path_, ": opened read-only, cannot ", what);
  wrote_ = true;  // the mapped copy of the file no longer matches it: heaps_ is not consulted
}

bool ResultStore::exists(const std::string& object) const {
  open_check();
  std::string cur;
  for (const auto& part : split(object)) {
    check_group(cur);  // HDF5 is about to look the name up in it
    cur += "/" + part;
    const htri_t e = H5Lexists(file_, cur.c_str(), H5P_DEFAULT);
    if (e <= 0) {
      h5_message();
      return false;
    }
  }
  return true;
}

int64_t ResultStore::open_group(const std::string& group, bool create) const {
  open_check();
  std::string cur;
  for (const auto& part : split(group)) {
    cur += "/" + part;
    if (!exists(cur)) {  // group paths are a few levels deep: the repeated prefix walk is cheap
      if (!create) fail("HDF5 file ", path_, ": no group '", cur, "'");
      hid_t g = H5Gcreate2(file_, cur.c_str(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
      QH5_CHECK(g, "cannot create group '", cur, "'");
      H5Gclose(g);
    } else if (object_type(file_, cur) == H5O_TYPE_DATASET) {
      fail("HDF5 file ", path_, ": '", cur, "' is a dataset, not a group");
    }
  }
  hid_t g = H5Gopen2(file_, cur.empty() ? "/" : cur.c_str(), H5P_DEFAULT);
  QH5_CHECK(g, "'", cur, "' is not a group");
  return g;
}

std::vector<std::string> ResultStore::list(const std::string& group) const {
  Id g(open_group(group, false), H5Gclose);
  check_group(group);
  std::vector<std::string> raw;
  hsize_t idx = 0;
  QH5_CHECK(H5Literate(g, H5_INDEX_NAME, H5_ITER_INC, &idx,
                      [](hid_t, const char* name, const H5L_info_t*, void* out) -> herr_t {
                        static_cast<std::vector<std::string>*>(out)->push_back(name);
                        return 0;
                      },
                      &raw),
          "cannot list '", group, "'");
  // Whoever walks the tree joins these names to paths: a name no HDF5 file can hold, or a member
  // that is the group itself or one above it, would send the walk round in circles.
  std::vector<std::pair<haddr_t, std::string>> above{{HADDR_UNDEF, "/"}};
  std::string cur;
  for (const auto& part : split(group)) above.push_back({HADDR_UNDEF, cur += "/" + part});
  const std::string at = above.back().second;
  for (auto& [addr, p] : above) {
    H5O_info_t info;
    addr = object_info(file_, p, info) ? info.addr : HADDR_UNDEF;
  }
  std::vector<std::string> names;
  for (const auto& n : raw) {
    // names and strings from the file are handed on as UTF-8 (a damaged byte becomes \xNN), so
    // that they print and convert to Python str
    names.push_back(detail::printable_utf8(n.c_str()));
    if (!valid_link_name(n))
      fail("HDF5 file ", path_, ": group '", at, "' has a member named '", names.back(),
           "', a name no HDF5 file can hold; the file is damaged");
    H5O_info_t info;
    if (!object_info(file_, (at == "/" ? "" : at) + "/" + n, info) || info.type != H5O_TYPE_GROUP) continue;
    for (const auto& [addr, p] : above)
      if (addr != HADDR_UNDEF && info.addr == addr)
        fail("HDF5 file ", path_, ": '", (at == "/" ? "" : at), "/", names.back(), "' leads back to '", p,
             "', a loop; the file is damaged");
  }
  std::sort(names.begin(), names.end());
  return names;
}

void ResultStore::remove_if_exists(const std::string& object) {
  if (exists(object)) QH5_CHECK(H5Ldelete(file_, ("/" + object).c_str(), H5P_DEFAULT), "cannot replace '", object, "'");
}

namespace {
std::string parent_of(const std::string& p) {
  auto parts = split(p);
  std::string out;
  for (size_t i = 0; i + 1 < parts.size(); ++i) out += "/" + parts[i];
  return out;
}
std::string leaf_of(const std::string& p) {
  auto parts = split(p);
  return parts.empty() ? "" : parts.back();
}
}  // namespace

void ResultStore::set_attrs(const std::string& object, const Attrs& attrs) {
  writable("write attributes");
  if (split(object).size() && !exists(object)) Id(open_group(object, true), H5Gclose);
  Id obj(H5Oopen(file_, split(object).empty() ? "/" : ("/" + object).c_str(), H5P_DEFAULT), H5Oclose);
  QH5_CHECK(obj.id, "cannot open '", object, "' for attributes");
  for (const auto& [name, value] : attrs) {
    if (H5Aexists(obj, name.c_str()) > 0) H5Adelete(obj, name.c_str());
    h5_message();
    Id space(H5Screate(H5S_SCALAR), H5Sclose);
    if (auto* i = std::get_if<int64_t>(&value)) {
      Id a(H5Acreate2(obj, name.c_str(), H5T_STD_I64LE, space, H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
      QH5_CHECK(a.id, "cannot create attribute '", name, "' on '", object, "'");
      QH5_CHECK(H5Awrite(a, H5T_NATIVE_INT64, i), "cannot write attribute '", name, "'");
    } else if (auto* d = std::get_if<double>(&value)) {
      Id a(H5Acreate2(obj, name.c_str(), H5T_IEEE_F64LE, space, H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
      QH5_CHECK(a.id, "cannot create attribute '", name, "' on '", object, "'");
      QH5_CHECK(H5Awrite(a, H5T_NATIVE_DOUBLE, d), "cannot write attribute '", name, "'");
    } else {
      const std::string& s = std::get<std::string>(value);
      Id t(H5Tcopy(H5T_C_S1), H5Tclose);
      H5Tset_size(t, H5T_VARIABLE);
      H5Tset_cset(t, H5T_CSET_UTF8);
      Id a(H5Acreate2(obj, name.c_str(), t, space, H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
      QH5_CHECK(a.id, "cannot create attribute '", name, "' on '", object, "'");
      const char* p = s.c_str();
      QH5_CHECK(H5Awrite(a, t, &p), "cannot write attribute '", name, "'");
    }
  }
  // Over what a reader will see: the object's attributes as read back, old ones included.
  QH5_CHECK(write_crc_attr(obj, kAttrsCrc, crc_of(read_attrs(object))), "cannot write attribute '", kAttrsCrc,
            "' on '", object, "'");
  flush();
}

namespace {
// Whether an HDF5 numeric type is one a reader can convert safely: Debian's HDF5 1.10 accepts a
// damaged float of thousands of bytes and then overruns its buffers converting it (newer HDF5
// refuses such types when the object is opened).
bool sane_number_type(hid_t t) {
  const size_t size = H5Tget_size(t), prec = H5Tget_precision(t);
  const int off = H5Tget_offset(t);
  if (off < 0 || prec == 0 || prec + static_cast<size_t>(off) > 8 * size) return false;
  switch (H5Tget_class(t)) {
    case H5T_INTEGER: return size == 1 || size == 2 || size == 4 || size == 8;
    case H5T_FLOAT: return size == 2 || size == 4 || size == 8;
    default: return false;
  }
}

// The dataset's storage must be able to hold what its shape says, before HDF5 is asked to read
// it: HDF5 1.10 reads a chunked dataset whose chunks have another rank than its shape, or whose
// shape was inflated to billions of elements, by building a chunk map without end (found by
// fuzzing). qinterp writes every element it declares, so the logical size is bounded by what is
// stored: exactly for contiguous and compact layouts, within deflate's ratio (at most ~1032:1)
// for chunked ones.
void check_extent(const std::string& path, hid_t ds, const std::string& dataset, const std::vector<hsize_t>& dims,
                  const std::vector<hsize_t>& maxdims, size_t elem) {
  uint64_t numel = 1;
  for (hsize_t d : dims)
    if (d && numel > (uint64_t{1} << 62) / d) fail("HDF5 file ", path, ": dataset '", dataset, "' has an impossible shape");
    else numel *= d;
  if (numel == 0) return;
  const long double bytes = static_cast<long double>(numel) * static_cast<long double>(elem);
  const hsize_t stored_bytes = H5Dget_storage_size(ds);
  const long double stored = static_cast<long double>(stored_bytes);
  Id dcpl(H5Dget_create_plist(ds), H5Pclose);
  if (dcpl.id < 0) fail("HDF5 file ", path, ": cannot read how '", dataset, "' is stored; the file is damaged");
  const H5D_layout_t layout = H5Pget_layout(dcpl);
  if (layout == H5D_CHUNKED) {
    std::vector<hsize_t> chunk(dims.size() + 1);
    const int cr = H5Pget_chunk(dcpl, static_cast<int>(chunk.size()), chunk.data());
    bool ok = cr == static_cast<int>(dims.size());
    for (int i = 0; ok && i < cr; ++i) ok = chunk[static_cast<size_t>(i)] > 0;
    if (!ok) fail("HDF5 file ", path, ": dataset '", dataset, "' has chunks of rank ", cr, " for a shape of rank ",
                  dims.size(), "; the file is damaged");
    // HDF5 never writes a chunk longer than a fixed dimension (H5Dcreate refuses it), and 1.10
    // reads one by copying a whole chunk's worth out of the shorter decompressed data. Along a
    // growing dimension a chunk may be longer than the data (a dump grows into it).
    for (int i = 0; i < cr; ++i)
      if (maxdims[static_cast<size_t>(i)] != H5S_UNLIMITED && chunk[static_cast<size_t>(i)] > maxdims[static_cast<size_t>(i)])
        fail("HDF5 file ", path, ": dataset '", dataset, "' has chunks of ", chunk[static_cast<size_t>(i)],
             " along dimension ", i, ", which is fixed at ", maxdims[static_cast<size_t>(i)], "; the file is damaged");
    long double chunk_bytes = static_cast<long double>(elem);
    for (int i = 0; i < cr; ++i) chunk_bytes *= static_cast<long double>(chunk[static_cast<size_t>(i)]);
    if (chunk_bytes > 2000.0L * stored + (1 << 20))
      fail("HDF5 file ", path, ": dataset '", dataset, "' has chunks of ", static_cast<double>(chunk_bytes),
           " bytes but stores ", stored_bytes, " bytes in all; the file is damaged");
    if (bytes > 2000.0L * stored + (1 << 20))
      fail("HDF5 file ", path, ": dataset '", dataset, "' claims ", numel, " elements of ", elem,
           " bytes but stores only ", stored_bytes, " bytes (compressed); the file is damaged");
  } else if (stored != bytes) {
    fail("HDF5 file ", path, ": dataset '", dataset, "' claims ", numel, " elements of ", elem, " bytes but stores ",
         stored_bytes, " bytes; the file is damaged");
  }
}
}  // namespace

Attrs ResultStore::attrs(const std::string& object) const {
  Attrs out = read_attrs(object);
  const auto crc = out.find(kAttrsCrc);
  if (crc != out.end()) {
    const auto* stored = std::get_if<int64_t>(&crc->second);
    const uint32_t now = crc_of(out);
    if (!stored || *stored != now)
      fail("HDF5 file ", path_, ": the attributes of '", object.empty() ? "/" : object,
           "' do not match their checksum; the file is damaged, or they were changed outside qinterp (deleting "
           "attribute '", kAttrsCrc, "' accepts that)");
    out.erase(crc);
  }
  out.erase(kDataCrc);
  return out;
}

Attrs ResultStore::read_attrs(const std::string& object) const {
  if (split(object).size() && !exists(object)) fail("HDF5 file ", path_, ": no object '", object, "'");
  Id obj(H5Oopen(file_, split(object).empty() ? "/" : ("/" + object).c_str(), H5P_DEFAULT), H5Oclose);
  QH5_CHECK(obj.id, "cannot open '", object, "'");
  const HeapIndex* heaps = wrote_ ? nullptr : heaps_.get();
  H5O_info_t info{};
  if (heaps && H5Oget_info2(obj, &info, H5O_INFO_BASIC) < 0) heaps = nullptr;
  if (heaps) {  // before HDF5 decodes them all, string heap references included (see check_attributes)
    const auto [name, why] = check_attributes(*heaps, static_cast<uint64_t>(info.addr));
    if (!why.empty())
      fail("HDF5 file ", path_, ": attribute '", detail::printable_utf8(name.c_str()), "' of '",
           object.empty() ? "/" : object, "': ", why, "; the file is damaged");
  }
  struct Ctx {
    const ResultStore* self;
    Attrs out;
    std::string bad, why;  // an attribute that cannot be read safely (errors cannot unwind through HDF5)
  } ctx{this, {}, {}, {}};
  hsize_t idx = 0;
  const herr_t walked = H5Aiterate2(obj, H5_INDEX_NAME, H5_ITER_INC, &idx,
              [](hid_t loc, const char* name, const H5A_info_t*, void* p) -> herr_t {
                auto* c = static_cast<Ctx*>(p);
                // Leaving out an attribute that cannot be read would hand back part of them.
                auto unreadable = [&]() -> herr_t {
                  c->bad = name;
                  c->why = "it cannot be read";
                  return -1;
                };
                Id a(H5Aopen(loc, name, H5P_DEFAULT), H5Aclose);
                if (a.id < 0) return unreadable();
                Id t(H5Aget_type(a), H5Tclose);
                Id space(H5Aget_space(a), H5Sclose);
                if (t.id < 0 || space.id < 0) return unreadable();
                if (H5Sget_simple_extent_npoints(space) != 1) return 0;  // only scalars are ours
                const H5T_class_t cls = H5Tget_class(t);
                if ((cls == H5T_INTEGER || cls == H5T_FLOAT) && !sane_number_type(t)) {
                  c->bad = name;
                  c->why = "its number type is damaged (" + std::to_string(H5Tget_size(t)) + " bytes)";
                  return -1;
                }
                if (cls == H5T_STRING && H5Tis_variable_str(t) <= 0 && H5Tget_size(t) > (1u << 20)) {
                  c->bad = name;
                  c->why = "it claims a string of " + std::to_string(H5Tget_size(t)) + " bytes";
                  return -1;
                }
                const std::string key = detail::printable_utf8(name);
                switch (cls) {
                  case H5T_INTEGER: {
                    int64_t v = 0;
                    if (H5Aread(a, H5T_NATIVE_INT64, &v) < 0) return unreadable();
                    c->out[key] = v;
                    break;
                  }
                  case H5T_FLOAT: {
                    double v = 0;
                    if (H5Aread(a, H5T_NATIVE_DOUBLE, &v) < 0) return unreadable();
                    c->out[key] = v;
                    break;
                  }
                  case H5T_STRING: {
                    if (H5Tis_variable_str(t) > 0) {
                      char* s = nullptr;
                      Id mt(H5Tcopy(H5T_C_S1), H5Tclose);
                      H5Tset_size(mt, H5T_VARIABLE);
                      H5Tset_cset(mt, H5Tget_cset(t));
                      if (H5Aread(a, mt, &s) < 0) return unreadable();
                      c->out[key] = s ? detail::printable_utf8(s) : std::string();
                      if (s) H5free_memory(s);
                    } else {
                      std::string s(H5Tget_size(t), '\0');
                      if (H5Aread(a, t, s.data()) < 0) return unreadable();
                      c->out[key] = detail::printable_utf8(s.c_str());
                    }
                    break;
                  }
                  default: break;
                }
                return 0;
              },
              &ctx);
  const std::string msg = h5_message();
  if (!ctx.bad.empty())
    fail("HDF5 file ", path_, ": attribute '", ctx.bad, "' of '", object.empty() ? "/" : object, "': ", ctx.why,
         "; the file is damaged", msg.empty() ? "" : " (HDF5: " + msg + ")");
  if (walked < 0)
    fail("HDF5 file ", path_, ": cannot read the attributes of '", object.empty() ? "/" : object,
         "'; the file is damaged", msg.empty() ? "" : " (HDF5: " + msg + ")");
  return ctx.out;
}

void ResultStore::write(const std::string& dataset, const at::Tensor& t_in) {
  write_unflushed(dataset, t_in);
  flush();
}

void ResultStore::write_unflushed(const std::string& dataset, const at::Tensor& t_in) {
  writable("write datasets");
  if (!t_in.defined()) fail("ResultStore: cannot write an undefined tensor to '", dataset, "'");
  at::Tensor t = t_in.detach().to(at::kCPU).contiguous();
  if (t.scalar_type() == at::kBFloat16) t = t.to(at::kFloat);  // HDF5 has no bfloat16 readers know
  const hid_t type = h5_type(t.scalar_type());
  if (split(dataset).empty()) fail("ResultStore: a dataset needs a name");
  // Replacing a dataset is what a second write means; replacing a group would delete its contents.
  if (exists(dataset) && object_type(file_, "/" + dataset) == H5O_TYPE_GROUP)
    fail("HDF5 file ", path_, ": '", dataset, "' is a group; a dataset cannot replace it (its contents would be lost)");
  remove_if_exists(dataset);
  Id parent(open_group(parent_of(dataset), true), H5Gclose);
  std::vector<hsize_t> dims(t.sizes().begin(), t.sizes().end());
  Id space(t.dim() == 0 ? H5Screate(H5S_SCALAR) : H5Screate_simple(t.dim(), dims.data(), nullptr), H5Sclose);
  Id dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
  const int64_t bytes = t.numel() * static_cast<int64_t>(t.element_size());
  if (t.dim() > 0 && bytes > 4096 && t.numel() > 0) {
    // Chunks of about 256 KB: whole trailing dims, as many leading rows as fit.
    std::vector<hsize_t> chunk(dims);
    int64_t row = bytes / std::max<int64_t>(dims[0], 1);
    chunk[0] = static_cast<hsize_t>(std::clamp<int64_t>((256 * 1024) / std::max<int64_t>(row, 1), 1, dims[0]));
    for (size_t i = 1; i < chunk.size(); ++i) chunk[i] = std::max<hsize_t>(1, std::min<hsize_t>(chunk[i], 65536));
    H5Pset_chunk(dcpl, t.dim(), chunk.data());
    H5Pset_shuffle(dcpl);
    H5Pset_deflate(dcpl, 4);
  }
  Id ds(H5Dcreate2(parent, leaf_of(dataset).c_str(), type, space, H5P_DEFAULT, dcpl, H5P_DEFAULT), H5Dclose);
  QH5_CHECK(ds.id, "cannot create dataset '", dataset, "'");
  if (t.numel() > 0) QH5_CHECK(H5Dwrite(ds, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, t.data_ptr()), "cannot write '", dataset, "'");
  QH5_CHECK(write_crc_attr(ds, kDataCrc, crc_of(t.data_ptr(), static_cast<size_t>(t.nbytes()))),
            "cannot write the checksum of '", dataset, "'");
  if (t_in.scalar_type() == at::kBool) {
    Id as(H5Screate(H5S_SCALAR), H5Sclose);
    Id st(H5Tcopy(H5T_C_S1), H5Tclose);
    H5Tset_size(st, H5T_VARIABLE);
    Id a(H5Acreate2(ds, "dtype", st, as, H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
    const char* b = "bool";
    H5Awrite(a, st, &b);
  }
}

int64_t ResultStore::open_dataset(const std::string& dataset) const {
  if (!exists(dataset)) fail("HDF5 file ", path_, ": no dataset '", dataset, "'");
  if (heaps_ && !wrote_) {  // HDF5 divides by the chunk dimensions as it opens the dataset
    H5O_info_t info{};
    if (object_info(file_, "/" + dataset, info)) {
      const std::string why = check_layout(*heaps_, static_cast<uint64_t>(info.addr));
      if (!why.empty()) fail("HDF5 file ", path_, ": dataset '", dataset, "': ", why, "; the file is damaged");
    }
  }
  const hid_t ds = H5Dopen2(file_, ("/" + dataset).c_str(), H5P_DEFAULT);
  QH5_CHECK(ds, "'", dataset, "' is not a dataset");
  return ds;
}

at::Tensor ResultStore::read(const std::string& dataset) const {
  Id ds(open_dataset(dataset), H5Dclose);
  Id t(H5Dget_type(ds), H5Tclose);
  Id space(H5Dget_space(ds), H5Sclose);
  const int rank = H5Sget_simple_extent_ndims(space);
  QH5_CHECK(rank, "cannot read the shape of '", dataset, "'");
  std::vector<hsize_t> dims(static_cast<size_t>(rank)), maxdims(static_cast<size_t>(rank));
  if (rank) H5Sget_simple_extent_dims(space, dims.data(), maxdims.data());
  std::vector<int64_t> shape(dims.begin(), dims.end());
  const size_t size = H5Tget_size(t);
  const H5T_class_t cls = H5Tget_class(t);
  if ((cls == H5T_INTEGER || cls == H5T_FLOAT) && !sane_number_type(t))
    fail("HDF5 file ", path_, ": dataset '", dataset, "' has a damaged number type (", size, " bytes, ",
         H5Tget_precision(t), " bits); the file is damaged");
  at::ScalarType st;
  switch (cls) {
    case H5T_FLOAT: st = size == 2 ? at::kHalf : size == 4 ? at::kFloat : at::kDouble; break;
    case H5T_INTEGER:
      if (size == 1) st = H5Tget_sign(t) == H5T_SGN_NONE ? at::kByte : at::kChar;
      else if (size <= 4 && H5Tget_sign(t) != H5T_SGN_NONE) st = at::kInt;
      else st = at::kLong;
      break;
    default: fail("HDF5 file ", path_, ": dataset '", dataset, "' is not numeric");
  }
  check_extent(path_, ds, dataset, dims, maxdims, size);  // the file's element size, not memory's
  at::Tensor out;
  try {
    out = at::empty(shape, at::TensorOptions().dtype(st));
  } catch (const c10::Error&) {
    fail("HDF5 file ", path_, ": cannot allocate dataset '", dataset, "' of shape ", at::IntArrayRef(shape),
         " in memory");
  }
  if (out.numel() > 0)
    QH5_CHECK(H5Dread(ds, h5_type(st), H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data_ptr()), "cannot read '", dataset, "'");
  const Attrs da = read_attrs(dataset);
  const auto crc = da.find(kDataCrc);
  if (crc != da.end()) {  // written by this store: the bytes read are the bytes written
    const auto* stored = std::get_if<int64_t>(&crc->second);
    if (!stored || *stored != crc_of(out.data_ptr(), static_cast<size_t>(out.nbytes())))
      fail("HDF5 file ", path_, ": dataset '", dataset,
           "' does not match its checksum; the file is damaged, or the data was changed outside qinterp (deleting its "
           "attribute '", kDataCrc, "' accepts that)");
  }
  if (st == at::kByte && da.count("dtype")) out = out.ne(0);
  h5_message();
  return out;
}

// The name of a save's copy: "<group>.partial", then "<group>.partial1", ... (see write_group).
namespace {
std::string partial_name(const std::string& group, int k) {
  return group + ".partial" + (k ? std::to_string(k) : std::string());
}
}  // namespace

// Written beside the target as "<group>.partial", then swapped in: a run killed at any point
// leaves either the old group or the new one whole (load_state falls back to the .partial copy
// when it was killed between the swap's two steps; its attributes are written last).
void ResultStore::write_group(const std::string& group, const Tensors& ts, const Attrs& attrs) {
  writable("write results");
  if (split(group).empty()) fail("ResultStore: a result needs a group name");
  if (exists(group) && object_type(file_, "/" + group) == H5O_TYPE_DATASET)
    fail("HDF5 file ", path_, ": '", group, "' is a dataset; a result cannot replace it");
  // A run killed while writing the copy can leave it with a half-written object header, which
  // HDF5 cannot even unlink ("bad object header version number"): then the copy goes beside it,
  // under the next free name, and the damaged one stays as an orphan.
  std::string tmp = partial_name(group, 0);
  for (int k = 1; exists(tmp); ++k) {
    if (H5Ldelete(file_, ("/" + tmp).c_str(), H5P_DEFAULT) >= 0) break;
    h5_message();
    if (k > 100) fail("HDF5 file ", path_, ": cannot replace '", group, ".partial' or any of 100 fresh names");
    tmp = partial_name(group, k);
  }
  Id(open_group(tmp, true), H5Gclose);
  for (const auto& [name, t] : ts) {
    if (name.empty() || name.find('/') != std::string::npos) fail("ResultStore: '", name, "' cannot be a dataset name");
    if (t.defined()) write_unflushed(tmp + "/" + name, t);  // one flush below: the copy is not live yet
  }
  if (!attrs.empty()) set_attrs(tmp, attrs);
  flush();
  remove_if_exists(group);
  QH5_CHECK(H5Lmove(file_, ("/" + tmp).c_str(), file_, ("/" + group).c_str(), H5P_DEFAULT, H5P_DEFAULT),
            "cannot move '", tmp, "' to '", group, "'");
  flush();
}

void ResultStore::write_tensors(const std::string& group, const Tensors& ts) { write_group(group, ts, {}); }

Tensors ResultStore::read_tensors(const std::string& group) const {
  Tensors out;
  for (const auto& name : list(group)) {
    // a member HDF5 cannot open is damage, not absence: leaving it out would hand back part of a result
    Id obj(H5Oopen(file_, ("/" + group + "/" + name).c_str(), H5P_DEFAULT), H5Oclose);
    QH5_CHECK(obj.id, "cannot open '", group, "/", name, "'; the file is damaged");
    if (H5Iget_type(obj) == H5I_DATASET) out[name] = read(group + "/" + name);
  }
  return out;
}

void ResultStore::remove(const std::string& object) {
  writable("remove objects");
  remove_if_exists(object);
  for (int k = 0; k <= 100; ++k) {  // copies a killed save left beside it
    const std::string tmp = partial_name(object, k);
    try {
      remove_if_exists(tmp);
    } catch (const Error&) {  // damaged beyond unlinking: left as an orphan, as save_state does
    }
  }
  flush();
}

void ResultStore::save_state(const std::string& group, const State& s, const Attrs& extra) {
  Attrs a = extra;
  a["kind"] = s.kind;
  write_group(group, s.tensors, a);
}

State ResultStore::load_state(const std::string& group_in) const {
  std::string group = group_in;
  if (!exists(group)) {  // killed mid-swap: the complete copy is the one whose attributes read
    for (int k = 0; k <= 100; ++k) {
      const std::string tmp = partial_name(group_in, k);
      if (!exists(tmp)) continue;
      try {
        if (attrs(tmp).count("kind")) {
          group = tmp;
          break;
        }
      } catch (const Error&) {  // a damaged leftover of an earlier kill
      }
    }
  }
  Attrs a = attrs(group);
  auto it = a.find("kind");
  if (it == a.end() || !std::holds_alternative<std::string>(it->second))
    fail("HDF5 file ", path_, ": '", group, "' is not a saved analysis state (no 'kind' attribute)");
  return State{std::get<std::string>(it->second), read_tensors(group)};
}

namespace {
// One link of the tree drop_unreadable_objects walks: a hard link HDF5 can open (and, for a
// group, whether everything below it can be opened too), a soft link, or an unreadable object.
struct LinkNode {
  std::string name;
  bool soft = false, readable = true, group = false, clean = true;
  std::vector<LinkNode> kids;
};

// "<name>.partial" or "<name>.partialK": a save's copy (see write_group), never a result.
bool is_partial_copy(const std::string& name) {
  const size_t at = name.rfind(".partial");
  if (at == std::string::npos || at == 0) return false;
  return std::all_of(name.begin() + static_cast<std::ptrdiff_t>(at + 8), name.end(), [](char c) { return c >= '0' && c <= '9'; });
}

herr_t collect_link(hid_t, const char* name, const H5L_info_t* info, void* out) {
  LinkNode n;
  n.name = name;
  n.soft = info->type == H5L_TYPE_SOFT;
  static_cast<std::vector<LinkNode>*>(out)->push_back(std::move(n));
  return 0;
}

// Fills n.kids from the group at `path`; false when the group's links cannot be listed. An
// unreadable object that is not a save's copy sets `other_damage`: that is damage to report.
bool scan_group(hid_t file, const std::string& path, LinkNode& n, bool& other_damage,
                const std::function<bool(const std::string&)>& listable, std::set<haddr_t>& seen) {
  if (!listable(path)) return false;
  Id g(H5Gopen2(file, path.c_str(), H5P_DEFAULT), H5Gclose);
  hsize_t idx = 0;
  if (g.id < 0 || H5Literate(g, H5_INDEX_NAME, H5_ITER_NATIVE, &idx, collect_link, &n.kids) < 0) {
    h5_message();
    return false;
  }
  for (LinkNode& k : n.kids) {
    if (k.soft) continue;
    const std::string p = (path == "/" ? "" : path) + "/" + k.name;
    H5O_info_t info;
    if (!valid_link_name(k.name)) {
      k.readable = false;
      other_damage = true;
    } else if (!object_info(file, p, info)) {
      k.readable = false;
      if (!is_partial_copy(k.name)) other_damage = true;
    } else if (info.type == H5O_TYPE_GROUP) {
      k.group = true;
      // A store links each group once: a second link to one (a loop, if it is above) is damage.
      if (!seen.insert(info.addr).second || !scan_group(file, p, k, other_damage, listable, seen))
        other_damage = true;
    }
    if (!k.readable || !k.clean) n.clean = false;
  }
  return true;
}

// Every attribute of src copied onto dst, bytes and types as they are.
bool copy_attributes(hid_t src, hid_t dst) {
  H5O_info_t info;
  if (H5Oget_info2(src, &info, H5O_INFO_NUM_ATTRS) < 0) return false;
  for (hsize_t i = 0; i < info.num_attrs; ++i) {
    Id a(H5Aopen_by_idx(src, ".", H5_INDEX_NAME, H5_ITER_NATIVE, i, H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
    if (a.id < 0) return false;
    Id type(H5Aget_type(a), H5Tclose), space(H5Aget_space(a), H5Sclose);
    const ssize_t len = H5Aget_name(a, 0, nullptr);
    if (type.id < 0 || space.id < 0 || len < 0) return false;
    std::string name(static_cast<size_t>(len), '\0');
    H5Aget_name(a, static_cast<size_t>(len) + 1, name.data());
    const hssize_t points = H5Sget_simple_extent_npoints(space);
    std::vector<unsigned char> buf(static_cast<size_t>(std::max<hssize_t>(points, 1)) * H5Tget_size(type));
    if (H5Aread(a, type, buf.data()) < 0) return false;
    Id b(H5Acreate2(dst, name.c_str(), type, space, H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
    const bool ok = b.id >= 0 && H5Awrite(b, type, buf.data()) >= 0;
    if (H5Tdetect_class(type, H5T_VLEN) > 0 || (H5Tget_class(type) == H5T_STRING && H5Tis_variable_str(type) > 0))
      H5Dvlen_reclaim(type, space, H5P_DEFAULT, buf.data());
    if (!ok) return false;
  }
  return true;
}

// Copies the members of src's group `path` that can be read into dst; the paths of the others
// are added to `dropped`. Clean subtrees go in one H5Ocopy.
bool copy_readable(hid_t src, hid_t dst, const std::string& path, const LinkNode& n, std::vector<std::string>& dropped) {
  for (const LinkNode& k : n.kids) {
    const std::string p = (path == "/" ? "" : path) + "/" + k.name;
    if (k.soft) {
      H5L_info_t li;
      if (H5Lget_info(src, p.c_str(), &li, H5P_DEFAULT) < 0) return false;
      std::string target(li.u.val_size, '\0');
      if (H5Lget_val(src, p.c_str(), target.data(), target.size(), H5P_DEFAULT) < 0) return false;
      if (H5Lcreate_soft(target.c_str(), dst, p.c_str(), H5P_DEFAULT, H5P_DEFAULT) < 0) return false;
    } else if (!k.readable) {
      dropped.push_back(p);
    } else if (!k.group || k.clean) {
      if (H5Ocopy(src, p.c_str(), dst, p.c_str(), H5P_DEFAULT, H5P_DEFAULT) < 0) return false;
    } else {
      Id sg(H5Gopen2(src, p.c_str(), H5P_DEFAULT), H5Gclose);
      Id gcpl(sg.id >= 0 ? H5Gget_create_plist(sg) : -1, H5Pclose);
      if (gcpl.id < 0) return false;
      Id dg(H5Gcreate2(dst, p.c_str(), H5P_DEFAULT, gcpl, H5P_DEFAULT), H5Gclose);
      if (dg.id < 0 || !copy_attributes(sg, dg) || !copy_readable(src, dst, p, k, dropped)) return false;
    }
  }
  return true;
}
}  // namespace

std::vector<std::string> ResultStore::drop_unreadable_objects(const std::string& path) {
  // The child reports its dropped paths (or its error) through a pipe: a tag byte ('D' dropped,
  // 'E' error), then (u32 length, bytes) records.
  int fds[2];
  if (::pipe(fds) != 0) fail("HDF5 file ", path, ": cannot rewrite it (pipe: ", std::strerror(errno), ")");
  const pid_t pid = ::fork();
  if (pid < 0) {
    ::close(fds[0]);
    ::close(fds[1]);
    fail("HDF5 file ", path, ": cannot rewrite it (fork: ", std::strerror(errno), ")");
  }
  if (pid == 0) {  // the child: no Python, no destructors of the parent's objects; _exit only
    ::close(fds[0]);
    // A crash here ends the child quietly: the parent's handlers (Python's faulthandler) would
    // print the parent's stack as if the parent had crashed.
    for (int sig : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT}) ::signal(sig, SIG_DFL);
    std::string out;
    auto record = [&out](const std::string& x) {
      const uint32_t n = static_cast<uint32_t>(x.size());
      out.append(reinterpret_cast<const char*>(&n), 4);
      out += x;
    };
    try {
      const auto dropped = drop_unreadable_objects_here(path);
      out = "D";
      for (const auto& d : dropped) record(d);
    } catch (const std::exception& e) {
      out = "E";
      record(e.what());
    }
    for (size_t at = 0; at < out.size();) {
      const ssize_t w = ::write(fds[1], out.data() + at, out.size() - at);
      if (w <= 0) ::_exit(3);
      at += static_cast<size_t>(w);
    }
    ::_exit(0);
  }
  ::close(fds[1]);
  // A generous limit: the copy runs at well over 20 MB/s.
  struct stat st {};
  const double limit_s = 120.0 + (::stat(path.c_str(), &st) == 0 ? static_cast<double>(st.st_size) / 20e6 : 0.0);
  const auto start = std::chrono::steady_clock::now();
  std::string in;
  bool timed_out = false;
  for (;;) {
    const double left = limit_s - std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (left <= 0) {
      timed_out = true;
      break;
    }
    pollfd pfd{fds[0], POLLIN, 0};
    const int r = ::poll(&pfd, 1, static_cast<int>(std::min(left, 1.0) * 1000) + 1);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) continue;
    char buf[4096];
    const ssize_t n = ::read(fds[0], buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;  // the child closed its end: finished, or died
    in.append(buf, static_cast<size_t>(n));
  }
  ::close(fds[0]);
  if (timed_out) ::kill(pid, SIGKILL);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  std::vector<std::string> recs;
  for (size_t at = 1; at + 4 <= in.size();) {
    uint32_t n = 0;
    std::memcpy(&n, in.data() + at, 4);
    if (n > in.size() - at - 4) break;
    recs.emplace_back(in.data() + at + 4, n);
    at += 4 + n;
  }
  const bool clean_exit = !timed_out && WIFEXITED(status) && WEXITSTATUS(status) == 0 && !in.empty();
  if (!clean_exit) {  // crashed or hung on damage: the file is as it was (the rename is the last step)
    std::remove((path + ".rewrite").c_str());
    return {};
  }
  if (in[0] == 'E') throw Error(recs.empty() ? "HDF5 file " + path + ": cannot rewrite it" : recs[0]);
  return recs;
}

std::vector<std::string> ResultStore::drop_unreadable_objects_here(const std::string& path) {
  silence_hdf5();
  std::vector<std::string> dropped;
  const std::string tmp = path + ".rewrite";
  bool ok = false;
  {
    const ResultStore src(path, Mode::Read);  // its checks run before HDF5 lists a group
    const auto listable = [&src](const std::string& g) {
      try {
        src.check_group(g);
        return true;
      } catch (const Error&) {
        return false;
      }
    };
    LinkNode root;
    bool other_damage = false;
    H5O_info_t root_info;
    std::set<haddr_t> seen;
    if (!object_info(src.file_, "/", root_info)) return dropped;  // damage to report
    seen.insert(root_info.addr);
    if (!scan_group(src.file_, "/", root, other_damage, listable, seen) || root.clean || other_damage) {
      h5_message();
      return dropped;  // nothing to drop, or damage beyond a save's copy: the read-back check names it
    }
    // H5Ocopy decodes every message of what it copies, and HDF5's error paths there can crash on
    // damage; so everything that is kept must first read back through the store's checks.
    try {
      src.attrs("");
      std::function<void(const std::string&, const LinkNode&)> read_all = [&](const std::string& at, const LinkNode& g) {
        for (const LinkNode& k : g.kids) {
          if (k.soft || !k.readable) continue;
          const std::string p = at + (at.empty() ? "" : "/") + k.name;
          if (k.group) {
            src.attrs(p);
            read_all(p, k);
            continue;
          }
          bool big = false;
          {
            Id ds(src.open_dataset(p), H5Dclose);
            big = H5Dget_storage_size(ds) > (hsize_t{1} << 30);
          }
          if (big)
            src.attrs(p);  // over 1 GiB: not read into memory
          else
            src.read(p);
        }
      };
      read_all("", root);
    } catch (const Error&) {
      h5_message();
      return dropped;  // damage beyond a save's copy: the read-back check names it
    }
    Id out_fapl(file_access(), H5Pclose);
    H5Pset_libver_bounds(out_fapl, H5F_LIBVER_EARLIEST, H5F_LIBVER_V18);
    Id fcpl(H5Fget_create_plist(src.file_), H5Pclose);
    Id out(fcpl.id >= 0 ? H5Fcreate(tmp.c_str(), H5F_ACC_TRUNC, fcpl, out_fapl) : -1, H5Fclose);
    if (out.id >= 0) {
      Id sr(H5Gopen2(src.file_, "/", H5P_DEFAULT), H5Gclose), dr(H5Gopen2(out, "/", H5P_DEFAULT), H5Gclose);
      ok = sr.id >= 0 && dr.id >= 0 && copy_attributes(sr, dr) && copy_readable(src.file_, out, "/", root, dropped) &&
           H5Fflush(out, H5F_SCOPE_GLOBAL) >= 0;
    }
  }
  for (auto& d : dropped) d = detail::printable_utf8(d.c_str());  // names from a damaged file
  if (ok && std::getenv("QINTERP_CRASH_IN_REWRITE")) ::raise(SIGKILL);  // fault injection: HDF5 crashing mid-copy
  const std::string why = h5_message();
  if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    fail("HDF5 file ", path, ": cannot rewrite it without the unreadable objects a killed run left",
         why.empty() ? "" : " (HDF5: " + why + ")");
  }
  return dropped;
}

namespace {
// Fault injection for the resume tests: QINTERP_CRASH_AT_FLUSH=N ends the process as a kill would
// (no destructors, nothing closed) right after the N-th flush, i.e. in the N-th state the file
// reaches on disk, so that a test can stop a run in every one of them in turn.
void crash_point() {
  static const long at = [] {
    const char* e = std::getenv("QINTERP_CRASH_AT_FLUSH");
    return e ? std::atol(e) : 0L;
  }();
  static long count = 0;
  if (at > 0 && ++count == at) std::_Exit(86);
}
}  // namespace

void ResultStore::flush() {
  open_check();
  if (read_only_) return;
  QH5_CHECK(H5Fflush(file_, H5F_SCOPE_GLOBAL), "flush failed");
  crash_point();
}

// ---------------------------------------------------------------------------------------------
// raw activation dump

ActivationDump ResultStore::dump(const std::string& group, int64_t neurons, bool fp16) {
  writable("dump activations");
  if (neurons < 1) fail("ResultStore::dump: neurons must be >= 1, got ", neurons);
  const std::string acts = group + "/activations", toks = group + "/tokens";
  const hid_t type = fp16 ? fp16_type() : H5T_NATIVE_FLOAT;
  if (exists(acts)) {
    Id ds(H5Dopen2(file_, ("/" + acts).c_str(), H5P_DEFAULT), H5Dclose);
    QH5_CHECK(ds.id, "cannot open '", acts, "'");
    Id space(H5Dget_space(ds), H5Sclose);
    hsize_t dims[2] = {0, 0};
    if (H5Sget_simple_extent_ndims(space) != 2) fail("HDF5 file ", path_, ": '", acts, "' is not [tokens, neurons]");
    H5Sget_simple_extent_dims(space, dims, nullptr);
    if (static_cast<int64_t>(dims[1]) != neurons)
      fail("HDF5 file ", path_, ": '", acts, "' holds ", dims[1], " neurons, not ", neurons);
    Id t(H5Dget_type(ds), H5Tclose);
    if (H5Tget_size(t) != (fp16 ? 2u : 4u))
      fail("HDF5 file ", path_, ": '", acts, "' is ", H5Tget_size(t) == 2 ? "fp16" : "fp32", "; cannot append ",
           fp16 ? "fp16" : "fp32");
    Id tk(H5Dopen2(file_, ("/" + toks).c_str(), H5P_DEFAULT), H5Dclose);
    QH5_CHECK(tk.id, "'", acts, "' has no token table '", toks, "'");
    Id ts(H5Dget_space(tk), H5Sclose);
    hsize_t tdims[2] = {0, 0};
    H5Sget_simple_extent_dims(ts, tdims, nullptr);
    // A run killed between the two appends leaves one dataset longer: trust the shorter.
    const hsize_t rows = std::min(dims[0], tdims[0]);
    if (dims[0] != rows) H5Dset_extent(ds, std::array<hsize_t, 2>{rows, dims[1]}.data());
    if (tdims[0] != rows) H5Dset_extent(tk, std::array<hsize_t, 2>{rows, 2}.data());
    return ActivationDump(this, group, neurons, fp16, static_cast<int64_t>(rows));
  }
  Id parent(open_group(group, true), H5Gclose);
  {
    hsize_t dims[2] = {0, static_cast<hsize_t>(neurons)}, maxd[2] = {H5S_UNLIMITED, static_cast<hsize_t>(neurons)};
    hsize_t chunk[2] = {128, static_cast<hsize_t>(std::min<int64_t>(neurons, 1024))};
    Id space(H5Screate_simple(2, dims, maxd), H5Sclose);
    Id dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
    // No filter on the dump: each append rewrites the last partly filled chunk, and a compressed
    // chunk that changes size moves, so a kill mid-append could corrupt rows already committed.
    H5Pset_chunk(dcpl, 2, chunk);
    Id ds(H5Dcreate2(parent, "activations", type, space, H5P_DEFAULT, dcpl, H5P_DEFAULT), H5Dclose);
    QH5_CHECK(ds.id, "cannot create '", acts, "'");
  }
  {
    hsize_t dims[2] = {0, 2}, maxd[2] = {H5S_UNLIMITED, 2}, chunk[2] = {4096, 2};
    Id space(H5Screate_simple(2, dims, maxd), H5Sclose);
    Id dcpl(H5Pcreate(H5P_DATASET_CREATE), H5Pclose);
    H5Pset_chunk(dcpl, 2, chunk);
    Id ds(H5Dcreate2(parent, "tokens", H5T_STD_I64LE, space, H5P_DEFAULT, dcpl, H5P_DEFAULT), H5Dclose);
    QH5_CHECK(ds.id, "cannot create '", toks, "'");
  }
  set_attrs(group, {{"columns_of_tokens", std::string("example,position")}, {"dtype", std::string(fp16 ? "float16" : "float32")}});
  return ActivationDump(this, group, neurons, fp16, 0);
}

void ActivationDump::truncate(int64_t rows) {
  const std::string& path_ = store_->path();  // the file, for QH5_CHECK
  store_->writable("truncate a dump");
  if (rows < 0 || rows > rows_) fail("HDF5 file ", path_, ": cannot truncate dump '", group_, "' of ", rows_, " rows to ", rows);
  for (const char* name : {"activations", "tokens"}) {
    const std::string full = "/" + group_ + "/" + name;
    Id ds(H5Dopen2(store_->file_, full.c_str(), H5P_DEFAULT), H5Dclose);
    QH5_CHECK(ds.id, "cannot open '", full, "'");
    const hsize_t d[2] = {static_cast<hsize_t>(rows), std::string(name) == "tokens" ? 2u : static_cast<hsize_t>(neurons_)};
    QH5_CHECK(H5Dset_extent(ds, d), "cannot truncate '", full, "'");
  }
  rows_ = rows;
  store_->flush();
}

void ActivationDump::append_masked(const at::Tensor& act, const at::Tensor& mask, int64_t first_example) {
  if (act.dim() != 3 || !mask.defined() || mask.dim() != 2 || mask.size(0) != act.size(0) || mask.size(1) != act.size(1))
    fail("ActivationDump: append_masked takes act [B, S, N] and mask [B, S], got ", act.sizes(), " and ",
         mask.defined() ? mask.sizes() : at::IntArrayRef{});
  at::Tensor m = mask.to(at::kCPU).ne(0);
  at::Tensor nz = m.nonzero();  // [T, 2] (b, s) in row-major order = the order of act[m]
  at::Tensor x = act.index({mask.to(act.device()).ne(0)});
  append(x, nz.select(1, 0) + first_example, nz.select(1, 1));
}

void ActivationDump::append(const at::Tensor& act, const at::Tensor& example, const at::Tensor& position) {
  const std::string& path_ = store_->path();  // the file, for QH5_CHECK
  if (act.dim() != 2 || act.size(1) != neurons_)
    fail("HDF5 file ", path_, ": dump '", path(), "' takes [tokens, ", neurons_, "] activations, got ", act.sizes());
  const int64_t t = act.size(0);
  if (!example.defined() || !position.defined() || example.dim() != 1 || position.dim() != 1 || example.size(0) != t ||
      position.size(0) != t)
    fail("HDF5 file ", path_, ": dump '", path(), "' needs example and position ids [", t, "] for each token");
  if (t == 0) return;
  at::Tensor x = act.detach().to(at::kCPU, fp16_ ? at::kHalf : at::kFloat).contiguous();
  at::Tensor ids = at::stack({example.to(at::kCPU, at::kLong), position.to(at::kCPU, at::kLong)}, 1).contiguous();
  const hsize_t start[2] = {static_cast<hsize_t>(rows_), 0};
  auto grow = [&](const std::string& name, hsize_t cols, hid_t mtype, const void* data) {
    const std::string full = "/" + path() + "/" + name;
    Id ds(H5Dopen2(store_->file_, full.c_str(), H5P_DEFAULT), H5Dclose);
    QH5_CHECK(ds.id, "cannot open '", full, "'");
    const hsize_t newd[2] = {static_cast<hsize_t>(rows_ + t), cols}, count[2] = {static_cast<hsize_t>(t), cols};
    QH5_CHECK(H5Dset_extent(ds, newd), "cannot grow '", full, "'");
    Id fs(H5Dget_space(ds), H5Sclose);
    H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, nullptr, count, nullptr);
    Id ms(H5Screate_simple(2, count, nullptr), H5Sclose);
    QH5_CHECK(H5Dwrite(ds, mtype, ms, fs, H5P_DEFAULT, data), "cannot append to '", full, "'");
  };
  grow("activations", static_cast<hsize_t>(neurons_), fp16_ ? fp16_type() : H5T_NATIVE_FLOAT, x.data_ptr());
  grow("tokens", 2, H5T_NATIVE_INT64, ids.data_ptr());
  rows_ += t;
  store_->flush();
}

}  // namespace qinterp::io
