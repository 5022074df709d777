// Raw checks of an HDF5 file's bytes for the damage that makes HDF5 1.10 itself crash, hang or
// read out of bounds (found by fuzzing); see hdf5_checks.hpp.
#include "hdf5_checks.hpp"

#include <H5public.h>

#include <cstring>
#include <set>
#include <utility>
#include <vector>

#include "qinterp/error.hpp"

namespace qinterp::io {

namespace {
// Datatype message versions HDF5 can decode: 4 came with 1.12.
constexpr unsigned kMaxDatatypeVersion = H5_VERS_MAJOR > 1 || H5_VERS_MINOR >= 12 ? 4 : 3;

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

// The messages of the version 1 object header at `addr` (type, first byte, size, flags), continuation
// chunks followed. Returns false when the file or the header is not one this reader knows
// (version 2 headers, offsets or lengths other than 8 bytes) or a chunk lies outside the file;
// the callers then check nothing and HDF5 reads the object unchecked.
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
      const uint8_t flags = d[p + 4];
      if (data + size > start + len) break;  // a message past its chunk: HDF5 refuses it itself
      p = data + size;
      if (type == 0x10 && size >= 16) chunks.emplace_back(le(d + data, 8), le(d + data + 8, 8));
      if (!f(type, d + data, size, flags)) return true;  // the callback found what it wanted
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
  for_each_message(h, addr, [&](uint64_t type, const uint8_t* m, uint64_t size, uint8_t) {
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
  for_each_message(h, addr, [&](uint64_t type, const uint8_t* m, uint64_t size, uint8_t) {
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

namespace {
// A local heap's free list as HDF5 1.10 walks it (offset of the next block, then this block's
// size, at each block): a block that points back to one before it makes HDF5 allocate forever.
bool free_list_sound(const uint8_t* data, uint64_t size, uint64_t at) {
  constexpr uint64_t kNone = 1;  // H5HL_FREE_NULL
  std::set<uint64_t> seen;
  while (at != kNone) {
    if (at >= size || size - at < 16 || !seen.insert(at).second) return false;
    const uint64_t next = le(data + at, 8), len = le(data + at + 8, 8);
    if (next == 0 || len > size - at) return false;
    at = next;
  }
  return true;
}

// The version 1 B-tree of a group's links below the node at `tree` ("TREE", type 0): each child a
// node one level down or, at level 0, a symbol table node ("SNOD") whose entries' names lie in the
// local heap's data [seg, seg + seg_size). HDF5 1.10 follows the child addresses and name offsets
// as they are (a damaged one: memcpy out of the file's bounds, found by fuzzing).
std::string check_group_nodes(const HeapIndex& h, uint64_t tree, int level, uint64_t seg, uint64_t seg_size) {
  const uint8_t* d = h.file.data();
  const uint64_t n = h.file.size();
  if (tree > n - 24 || std::memcmp(d + tree, "TREE", 4) != 0 || d[tree + 4] != 0)
    return "its link index has a node at " + std::to_string(tree) + " that is not one";
  const int node_level = d[tree + 5];
  const uint64_t entries = le(d + tree + 6, 2);
  if ((level >= 0 && node_level != level) || node_level > 16)
    return "its link index has a node at the wrong level";
  if (24 + 16 * entries + 8 > n - tree) return "its link index has a node that runs past the end of the file";
  for (uint64_t i = 0; i < entries; ++i) {
    const uint64_t child = le(d + tree + 24 + 16 * i + 8, 8);
    if (node_level > 0) {
      const std::string why = check_group_nodes(h, child, node_level - 1, seg, seg_size);
      if (!why.empty()) return why;
      continue;
    }
    if (child > n - 8 || std::memcmp(d + child, "SNOD", 4) != 0 || d[child + 4] != 1)
      return "its link index points to a symbol table node at " + std::to_string(child) + " that is not one";
    const uint64_t symbols = le(d + child + 6, 2);
    if (40 * symbols > n - child - 8) return "its symbol table node at " + std::to_string(child) + " runs past the end of the file";
    for (uint64_t k = 0; k < symbols; ++k) {
      const uint8_t* e = d + child + 8 + 40 * k;
      const uint64_t name = le(e, 8), header = le(e + 8, 8);
      auto in_heap = [&](uint64_t off) { return off < seg_size && std::memchr(d + seg + off, 0, seg_size - off); };
      if (!in_heap(name)) return "a link name offset (" + std::to_string(name) + ") lies outside its local heap's data";
      if (le(e + 16, 4) == 2) {  // a soft link: no object header; its target's name is in the heap too
        if (!in_heap(le(e + 24, 4))) return "a soft link's target lies outside its local heap's data";
        continue;
      }
      // HDF5 reads the member's object header, continuation chunks and all, as soon as anything
      // asks about the member (a chunk past the end of the file: memcpy out of bounds).
      // Another version byte is refused by HDF5 itself (a killed save's copy has one).
      const auto no_message = [](uint64_t, const uint8_t*, uint64_t, uint8_t) { return true; };
      if (header > n - 16 || (d[header] == 1 && !for_each_message(h, header, no_message)))
        return "a link points to byte " + std::to_string(header) + ", where there is no sound object header";
    }
  }
  return "";
}
}  // namespace

// A group's symbol table message (old-style groups, what HDF5 1.8-compatible files use): the
// addresses of its B-tree ("TREE") and local heap ("HEAP": the link names). HDF5 1.10 reads the
// heap wherever the message says, even past the end of the file (memcpy out of bounds: found by
// fuzzing, an address of all ones). Returns what is wrong, or "".
std::string check_symbol_table(const HeapIndex& h, uint64_t addr) {
  const uint8_t* d = h.file.data();
  const uint64_t n = h.file.size();
  std::string why;
  for_each_message(h, addr, [&](uint64_t type, const uint8_t* m, uint64_t size, uint8_t) {
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
      if (seg > n || seg_size > n - seg)
        why = "its local heap's data lies outside the file";
      else if (!free_list_sound(d + seg, seg_size, le(d + heap + 16, 8)))
        why = "its local heap's free list is damaged";
      else
        why = check_group_nodes(h, tree, -1, seg, seg_size);
    }
    return false;
  });
  return why;
}

namespace {
// A NUL-terminated name at m[0, size), padded to a multiple of 8 when `pad`: its encoded length, or 0.
uint64_t name_length(const uint8_t* m, uint64_t size, bool pad) {
  const void* nul = std::memchr(m, 0, size);
  if (!nul) return 0;
  uint64_t len = static_cast<uint64_t>(static_cast<const uint8_t*>(nul) - m) + 1;
  if (pad) len = (len + 7) & ~uint64_t{7};
  return len <= size ? len : 0;
}

// What is wrong with the datatype encoded at m[0, size), or ""; *used gets its encoded length.
// The layout of every class is followed (members, bases, names, values) as HDF5 decodes it, so
// that nothing is read past the message; field values HDF5 checks itself are left to it.
std::string check_datatype(const uint8_t* m, uint64_t size, int depth, uint64_t* used) {
  if (size < 8) return "its datatype is cut short";
  if (depth > 8) return "its datatype nests too deeply";
  const unsigned cls = m[0] & 0x0F, ver = m[0] >> 4;
  if (ver < 1 || ver > kMaxDatatypeVersion) return "its datatype has version " + std::to_string(ver);
  const uint64_t bits = le(m + 1, 3), bytes = le(m + 4, 4);
  if (bytes == 0) return "its datatype has size 0";
  uint64_t at = 8;
  auto need = [&](uint64_t n) { return n <= size - at; };
  auto nested = [&](std::string* why) {
    uint64_t n = 0;
    *why = check_datatype(m + at, size - at, depth + 1, &n);
    at += n;
    return why->empty();
  };
  std::string why;
  switch (cls) {
    case 0:  // fixed point: bit offset and precision within the size
    case 1:  // floating point: the same, and the exponent and mantissa within the precision
    case 4: {  // bit field
      const uint64_t props = cls == 1 ? 12 : 4;
      if (!need(props)) return "its number type is cut short";
      const uint64_t offset = le(m + 8, 2), precision = le(m + 10, 2);
      if (precision == 0 || offset + precision > 8 * bytes) return "its number type has impossible bit fields";
      if (cls == 1 && (m[12] + m[13] > precision || m[14] + m[15] > precision))
        return "its floating-point type has impossible bit fields";
      at += props;
      break;
    }
    case 2:  // time
      if (!need(2)) return "its time type is cut short";
      at += 2;
      break;
    case 3:  // string
      if ((bits & 0x0F) > 2 || ((bits >> 4) & 0x0F) > 1) return "its string type has unknown padding or encoding";
      break;
    case 5:  // opaque: a tag of (bits & 0xFF) bytes
      if (!need(bits & 0xFF)) return "its opaque type's tag is cut short";
      at += bits & 0xFF;
      break;
    case 6: {  // compound
      const uint64_t members = bits & 0xFFFF;
      const uint64_t offset_bytes = bytes < (1u << 8) ? 1 : bytes < (1u << 16) ? 2 : bytes < (1u << 24) ? 3 : 4;
      for (uint64_t i = 0; i < members; ++i) {
        const uint64_t name = name_length(m + at, size - at, ver < 3);
        if (!name) return "its compound type has a member name that runs past the message";
        at += name;
        const uint64_t fixed = ver == 1 ? 32 : ver == 2 ? 4 : offset_bytes;
        if (!need(fixed)) return "its compound type is cut short";
        at += fixed;
        if (!nested(&why)) return why;
      }
      break;
    }
    case 7:  // reference
      break;
    case 8: {  // enumeration: the base type, the names, then the values
      const uint64_t members = bits & 0xFFFF;
      uint64_t base_at = at;
      if (!nested(&why)) return why;
      const uint64_t base_bytes = le(m + base_at + 4, 4);
      for (uint64_t i = 0; i < members; ++i) {
        const uint64_t name = name_length(m + at, size - at, ver < 3);
        if (!name) return "its enumeration has a name that runs past the message";
        at += name;
      }
      if (base_bytes && members > (size - at) / base_bytes) return "its enumeration's values run past the message";
      at += members * base_bytes;
      break;
    }
    case 9:  // variable length: a heap reference on disk, then the base type
      if ((bits & 0x0F) > 1 || ((bits >> 4) & 0x0F) > 2 || ((bits >> 8) & 0x0F) > 1)
        return "its variable-length type has unknown flags";
      if (bytes != 16) return "its variable-length type has size " + std::to_string(bytes) + ", not 16";
      if (!nested(&why)) return why;
      break;
    case 10: {  // array: rank, dimensions (and, before version 3, a permutation), then the base type
      if (ver < 2) return "its array type has version 1";
      if (!need(ver == 2 ? 4 : 1)) return "its array type is cut short";
      const uint64_t rank = m[at];
      at += ver == 2 ? 4 : 1;
      if (rank > 32 || !need(4 * rank * (ver == 2 ? 2 : 1))) return "its array type's dimensions run past the message";
      at += 4 * rank * (ver == 2 ? 2 : 1);
      if (!nested(&why)) return why;
      break;
    }
    default:
      return "its datatype has class " + std::to_string(cls);
  }
  *used = at;
  return "";
}
}  // namespace

std::pair<std::string, std::string> check_attributes(const HeapIndex& h, uint64_t addr) {
  const bool sohm_possible = h.file.size() > 8 && h.file.data()[8] >= 2;  // superblock v2+: shared messages
  std::string who, why;
  int index = 0;
  for_each_message(h, addr, [&](uint64_t type, const uint8_t* m, uint64_t size, uint8_t mflags) {
    if (type != 0x0C) return true;
    who = "#" + std::to_string(++index);
    auto bad = [&](const std::string& w) {
      why = w;
      return false;
    };
    if (mflags & 0x02) return sohm_possible ? true : bad("it is marked shared, which this file cannot have");
    if (size < 8) return bad("it is cut short");
    const unsigned ver = m[0], flags = ver == 1 ? 0 : m[1];
    if (ver < 1 || ver > 3) return bad("it has version " + std::to_string(ver));
    if (flags & ~3u) return bad("it has unknown flags");
    const uint64_t nsz = le(m + 2, 2), tsz = le(m + 4, 2), ssz = le(m + 6, 2);
    auto pad = [&](uint64_t v) { return ver == 1 ? (v + 7) & ~uint64_t{7} : v; };
    const uint64_t name = ver == 3 ? 9 : 8, dt = name + pad(nsz), ds = dt + pad(tsz), data = ds + pad(ssz);
    if (nsz == 0 || name + nsz > size || std::memchr(m + name, 0, nsz) != m + name + nsz - 1)
      return bad("its name is not a string of the stored length");
    who = reinterpret_cast<const char*>(m + name);
    if (data > size) return bad("its parts are larger than the message");
    uint64_t elem = 0;
    if (!(flags & 1)) {
      uint64_t used = 0;
      const std::string w = check_datatype(m + dt, tsz, 0, &used);
      if (!w.empty()) return bad(w);
      elem = le(m + dt + 4, 4);
      if ((m[dt] & 0x0F) == 9) elem = 16;  // a variable-length element is stored as a heap reference
    }
    uint64_t points = 1;
    if (!(flags & 2)) {
      if (ssz < 4) return bad("its dataspace is cut short");
      const unsigned sver = m[ds], rank = m[ds + 1], sflags = m[ds + 2];
      if (sver != 1 && sver != 2) return bad("its dataspace has version " + std::to_string(sver));
      if (rank > 32) return bad("its dataspace has rank " + std::to_string(rank));
      if (sver == 2 && m[ds + 3] > 2) return bad("its dataspace has type " + std::to_string(m[ds + 3]));
      const uint64_t head = sver == 1 ? 8 : 4;
      const uint64_t need = head + 8 * rank * ((sflags & 1) ? 2 : 1) + (sver == 1 && (sflags & 2) ? 8 * rank : 0);
      if (need > ssz) return bad("its dataspace is cut short");
      if (sver == 2 && m[ds + 3] == 2) points = 0;  // null dataspace
      for (unsigned i = 0; i < rank && points; ++i) {
        const uint64_t dim = le(m + ds + head + 8 * i, 8);
        if (dim && points > (uint64_t{1} << 40) / dim) return bad("its dataspace claims too many elements");
        points *= dim;
      }
    }
    if (!(flags & 3) && (elem && points > (size - data) / elem))
      return bad("its value is larger than the message holds");
    if (!(flags & 1) && (m[dt] & 0x0F) == 9) {  // HDF5 copies a variable-length value from the heap
      const std::string w = check_vlen_reference(h, addr, who.c_str());
      if (!w.empty()) return bad(w);
    }
    return true;
  });
  return {why.empty() ? "" : who, why};
}

}  // namespace qinterp::io
