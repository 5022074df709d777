// Raw checks of an HDF5 file's bytes for the damage that makes HDF5 1.10 itself crash, hang or
// read out of bounds (found by fuzzing); see hdf5_checks.hpp.
#include "hdf5_checks.hpp"

#include <cstring>
#include <utility>
#include <vector>

#include "qinterp/error.hpp"

namespace qinterp::io {

namespace {
uint64_t le(const uint8_t* p, int bytes) {
  uint64_t v = 0;
  for (int k = bytes - 1; k >= 0; --k) v = v << 8 | p[k];
  return v;
}

// Whether the mapped file is one the raw checks below can read: superblock at byte 0 (no user
// block) with 8-byte offsets and lengths -- what HDF5 and h5py write by default.
bool standard_superblock(const uint8_t* d, uint64_t n) {
  if (n < 16 || std::memcmp(d, "\x89HDF\r\n\x1a\n", 8) != 0) return false;
  const int sizes = d[8] <= 1 ? 13 : 9;  // superblock v0/1: sizes of offsets and lengths at 13/14
  return d[sizes] == 8 && d[sizes + 1] == 8;
}

// The messages of the version 1 object header at `addr` (type, first byte, size), continuation
// chunks followed. Returns false when the file or the header is not one this reader knows
// (version 2 headers, offsets or lengths other than 8 bytes, a chunk outside the file), in which
// case the callers check nothing and HDF5 reads the object unchecked.
template <class F>
bool for_each_message(const HeapIndex& h, uint64_t addr, F&& f) {
  const uint8_t* d = h.file.data();
  const uint64_t n = h.file.size();
  if (!standard_superblock(d, n) || addr > n - 16 || d[addr] != 1) return false;
  std::vector<std::pair<uint64_t, uint64_t>> chunks = {{addr + 16, le(d + addr + 8, 4)}};
  for (size_t c = 0; c < chunks.size(); ++c) {
    const uint64_t start = chunks[c].first, len = chunks[c].second;
    if (c >= 64 || start > n || len > n - start) return false;
    for (uint64_t p = start; p + 8 <= start + len;) {
      const uint64_t type = le(d + p, 2), size = le(d + p + 2, 2), data = p + 8;
      if (data + size > start + len) return false;
      p = data + size;
      if (type == 0x10 && size >= 16) chunks.emplace_back(le(d + data, 8), le(d + data + 8, 8));
      if (!f(type, d + data, size)) return true;  // the callback found what it wanted
    }
  }
  return true;
}

}  // namespace

// Walks every global heap collection ("GCOL": where variable-length strings, i.e. our string
// attributes, live) the way HDF5 decodes it, and refuses the file if a walk would not advance or
// would leave its collection. HDF5 itself (1.10 to 2.0, h5py's too) loops forever on a free-space
// entry of size 0 (found by fuzzing; one flipped bit in an object's size leads there). A
// candidate must also carry version 1 and three zero bytes, so raw data that happens to spell
// "GCOL" is not taken for one. Cost: one memmem pass over the file (mapped), ~0.15 s per GB warm.
std::shared_ptr<const HeapIndex> check_global_heaps(const std::string& path) {
  auto index = std::make_shared<HeapIndex>(path);
  const uint8_t* d = index->file.data();
  const size_t n = index->file.size();
  if (!standard_superblock(d, n)) return index;  // others are left to HDF5
  for (size_t at = 0; at + 16 <= n;) {
    const void* hit = memmem(d + at, n - at, "GCOL\x01\x00\x00\x00", 8);
    if (!hit) break;
    const size_t start = static_cast<size_t>(static_cast<const uint8_t*>(hit) - d);
    at = start + 1;
    if (start + 16 > n) break;
    const uint64_t size = le(d + start + 8, 8);
    if (size < 16 || size > n - start)
      fail("HDF5 file ", path, ": the global heap at byte ", start, " claims ", size, " bytes; the file is damaged");
    const size_t end = start + static_cast<size_t>(size);
    auto& objects = index->objects[start];
    for (size_t p = start + 16; p < end;) {
      if (p + 16 > end) break;  // too small for an object header: free space, as HDF5 reads it
      const uint64_t idx = le(d + p, 2), osize = le(d + p + 8, 8);
      const uint64_t need = idx ? 16 + ((osize + 7) & ~uint64_t{7}) : osize;
      if (need == 0 || osize > end - p || need > end - p)
        fail("HDF5 file ", path, ": global heap object ", idx, " at byte ", p, " has size ", osize,
             ", which does not fit its collection; the file is damaged");
      if (idx) objects[idx] = osize;
      p += static_cast<size_t>(need);
    }
  }
  return index;
}

// HDF5 reads a variable-length string attribute through a reference stored in the object
// header: (length u32, heap collection address u64, object index u32). HDF5 1.10 trusts the
// index (a damaged one segfaults it), the length and the string type's element size (huge ones
// hang it). This finds attribute `name` in the object header at `addr` and checks its type and
// reference against the heaps. Returns what is wrong, or "" when it is sound or cannot be told.
std::string check_vlen_reference(const HeapIndex& h, uint64_t addr, const char* name) {
  const size_t name_len = std::strlen(name);
  std::string why;
  for_each_message(h, addr, [&](uint64_t type, const uint8_t* m, uint64_t size) {
    if (type != 0x0C || size < 8) return true;
    const uint8_t ver = m[0], flags = m[1];
    if (ver < 1 || ver > 3 || (ver > 1 && (flags & 3))) return true;  // shared type or space: not read here
    const uint64_t nsz = le(m + 2, 2), tsz = le(m + 4, 2), ssz = le(m + 6, 2);
    auto pad = [&](uint64_t v) { return ver == 1 ? (v + 7) & ~uint64_t{7} : v; };
    uint64_t q = ver == 3 ? 9 : 8;
    if (nsz != name_len + 1 || q + nsz > size || std::memcmp(m + q, name, name_len) != 0) return true;
    const uint64_t dt = q + pad(nsz);
    q = dt + pad(tsz) + pad(ssz);
    if (dt + 2 > size || (m[dt] & 0x0F) != 9 || (m[dt + 1] & 0x0F) != 1) return false;  // not a vlen string
    if (tsz < 16 || dt + 16 > size || le(m + dt + 12, 4) != 1) {
      why = "its string type is damaged";
      return false;
    }
    if (q + 16 > size) {
      why = "its stored reference is cut short";
      return false;
    }
    const uint64_t slen = le(m + q, 4), heap = le(m + q + 4, 8), idx = le(m + q + 12, 4);
    if (slen == 0) return false;
    auto hc = h.objects.find(heap);
    if (hc == h.objects.end()) {
      why = "it points to a global heap at byte " + std::to_string(heap) + " that the file does not have";
      return false;
    }
    auto obj = hc->second.find(idx);
    if (obj == hc->second.end())
      why = "it points to global heap object " + std::to_string(idx) + ", which does not exist";
    else if (obj->second < slen)
      why = "it claims " + std::to_string(slen) + " bytes, its global heap object holds " + std::to_string(obj->second);
    return false;
  });
  return why;
}

// A dataset's layout message (version 1-3): a chunked layout needs a rank of at least 1 and no
// chunk dimension of 0 -- HDF5 1.10 divides by them when it opens the dataset (SIGFPE).
std::string check_layout(const HeapIndex& h, uint64_t addr) {
  std::string why;
  for_each_message(h, addr, [&](uint64_t type, const uint8_t* m, uint64_t size) {
    if (type != 0x08 || size < 2) return true;
    const uint8_t ver = m[0];
    uint64_t ndims = 0, dims_at = 0;
    if (ver == 3) {
      if (size < 3 || m[1] != 2) return false;  // compact or contiguous: nothing to divide by
      ndims = m[2];
      dims_at = 3 + 8;
    } else if (ver == 1 || ver == 2) {
      if (size < 8 || m[2] != 2) return false;
      ndims = m[1];
      dims_at = 8 + 8;
    } else {
      return false;
    }
    if (ndims < (ver == 3 ? 2u : 1u)) {  // version 3 counts the element size as a dimension
      why = "its chunks have no dimensions";
    } else if (dims_at + 4 * ndims > size) {
      why = "its layout message is cut short";
    } else {
      for (uint64_t i = 0; i < ndims && why.empty(); ++i)
        if (le(m + dims_at + 4 * i, 4) == 0) why = "a chunk dimension is 0";
    }
    return false;
  });
  return why;
}

// A group's symbol table message (old-style groups, what HDF5 1.8-compatible files use): the
// addresses of its B-tree ("TREE") and local heap ("HEAP": the link names). HDF5 1.10 reads the
// heap wherever the message says, even past the end of the file (memcpy out of bounds: found by
// fuzzing, an address of all ones). Returns what is wrong, or "".
std::string check_symbol_table(const HeapIndex& h, uint64_t addr) {
  const uint8_t* d = h.file.data();
  const uint64_t n = h.file.size();
  std::string why;
  for_each_message(h, addr, [&](uint64_t type, const uint8_t* m, uint64_t size) {
    if (type != 0x11) return true;
    if (size < 16) {
      why = "its symbol table message is cut short";
      return false;
    }
    const uint64_t tree = le(m, 8), heap = le(m + 8, 8);
    if (tree > n - 8 || std::memcmp(d + tree, "TREE", 4) != 0) {
      why = "its link index (B-tree) address " + std::to_string(tree) + " does not point to one";
    } else if (heap > n - 32 || std::memcmp(d + heap, "HEAP", 4) != 0) {
      why = "its link names (local heap) address " + std::to_string(heap) + " does not point to one";
    } else {
      const uint64_t seg_size = le(d + heap + 8, 8), seg = le(d + heap + 24, 8);
      if (seg > n || seg_size > n - seg) why = "its local heap's data lies outside the file";
    }
    return false;
  });
  return why;
}

}  // namespace qinterp::io
