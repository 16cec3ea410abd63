// MinHash signatures of code for near dedup (megatron_code.curation.dedup), the whole per-document path in one
// call: code tokens -> XXH64 of each token -> n-token shingle hashes -> multiply-add-shift permutations -> minima.
// Profiling the numpy version (NOTES.md, "Corpus curation") showed the Python tokenizer, the per-token hash
// lookups and the numpy temporaries costing as much as the signatures themselves; here nothing is materialized
// but one array of token hashes per document.
//
// The numpy twin is dedup.py's ``signature_numpy``; tests/curation/test_curation_minhash_native.py asserts both
// give the same signature on fuzzed ASCII / non-ASCII / surrogate text. Definitions (both sides):
//   * tokens, on UTF-8 bytes: a maximal run of word bytes ([0-9A-Za-z_] or any byte >= 0x80, i.e. every
//     non-ASCII code point counts as a word character) or one ASCII byte that is neither a word byte nor
//     whitespace (space, \t, \n, \v, \f, \r);
//   * token hash: XXH64 of the token's bytes, seed 0 (the algorithm as specified in xxHash's doc/xxhash_spec.md);
//   * shingle hash of tokens t_i..t_{i+n-1}: h = t_i; h = h * M + t_{i+k} (mod 2^64) for k = 1..n-1, M =
//     0x9E3779B97F4A7C15 (2^64 / golden ratio, odd), then splitmix64's finalizer; a document with fewer than n
//     tokens is one shingle of all of them;
//   * permutation p: ((a_p * h + b_p) mod 2^64) >> 32 with odd a_p (Dietzfelbinger et al. 1997), minimum over the
//     document's shingles.
// Built at install time by setup.py as megatron_code.curation._minhash_cpp; never compiled at run time.
#include <Python.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

namespace py = pybind11;

namespace {

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "minhash.cpp reads XXH64 lanes as little-endian words"
#endif

constexpr uint64_t kP1 = 0x9E3779B185EBCA87ULL;
constexpr uint64_t kP2 = 0xC2B2AE3D27D4EB4FULL;
constexpr uint64_t kP3 = 0x165667B19E3779F9ULL;
constexpr uint64_t kP4 = 0x85EBCA77C2B2AE63ULL;
constexpr uint64_t kP5 = 0x27D4EB2F165667C5ULL;
constexpr uint64_t kMult = 0x9E3779B97F4A7C15ULL;

inline uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
inline uint64_t read64(const uint8_t* p) { uint64_t v; std::memcpy(&v, p, 8); return v; }
inline uint32_t read32(const uint8_t* p) { uint32_t v; std::memcpy(&v, p, 4); return v; }
inline uint64_t xxround(uint64_t acc, uint64_t input) { return rotl(acc + input * kP2, 31) * kP1; }
inline uint64_t xxmerge(uint64_t acc, uint64_t val) { return (acc ^ xxround(0, val)) * kP1 + kP4; }

uint64_t xxh64(const uint8_t* p, size_t len, uint64_t seed) {
  const uint8_t* end = p + len;
  uint64_t h;
  if (len >= 32) {
    uint64_t v1 = seed + kP1 + kP2, v2 = seed + kP2, v3 = seed, v4 = seed - kP1;
    const uint8_t* limit = end - 32;
    do {
      v1 = xxround(v1, read64(p));
      v2 = xxround(v2, read64(p + 8));
      v3 = xxround(v3, read64(p + 16));
      v4 = xxround(v4, read64(p + 24));
      p += 32;
    } while (p <= limit);
    h = rotl(v1, 1) + rotl(v2, 7) + rotl(v3, 12) + rotl(v4, 18);
    h = xxmerge(h, v1);
    h = xxmerge(h, v2);
    h = xxmerge(h, v3);
    h = xxmerge(h, v4);
  } else {
    h = seed + kP5;
  }
  h += static_cast<uint64_t>(len);
  while (p + 8 <= end) {
    h = rotl(h ^ xxround(0, read64(p)), 27) * kP1 + kP4;
    p += 8;
  }
  if (p + 4 <= end) {
    h = rotl(h ^ (static_cast<uint64_t>(read32(p)) * kP1), 23) * kP2 + kP3;
    p += 4;
  }
  while (p < end) {
    h = rotl(h ^ (static_cast<uint64_t>(*p) * kP5), 11) * kP1;
    ++p;
  }
  h ^= h >> 33;
  h *= kP2;
  h ^= h >> 29;
  h *= kP3;
  h ^= h >> 32;
  return h;
}

// 0: punctuation (a one-byte token), 1: whitespace, 2: word byte
struct Classes {
  uint8_t c[256];
  Classes() {
    for (int i = 0; i < 256; ++i) c[i] = i >= 0x80 ? 2 : 0;
    for (int ch : {' ', '\t', '\n', '\v', '\f', '\r'}) c[ch] = 1;
    for (int ch = 'a'; ch <= 'z'; ++ch) c[ch] = 2;
    for (int ch = 'A'; ch <= 'Z'; ++ch) c[ch] = 2;
    for (int ch = '0'; ch <= '9'; ++ch) c[ch] = 2;
    c[static_cast<int>('_')] = 2;
  }
};
const Classes kClass;

void token_hashes(const uint8_t* s, size_t n, std::vector<uint64_t>& out) {
  out.clear();
  size_t i = 0;
  while (i < n) {
    uint8_t k = kClass.c[s[i]];
    if (k == 1) { ++i; continue; }
    size_t j = i + 1;
    if (k == 2) while (j < n && kClass.c[s[j]] == 2) ++j;
    out.push_back(xxh64(s + i, j - i, 0));
    i = j;
  }
}

inline uint64_t finalize(uint64_t x) {  // splitmix64's finalizer (Steele, Lea & Flood 2014)
  x ^= x >> 30;
  x *= 0xBF58476D1CE4E5B9ULL;
  x ^= x >> 27;
  x *= 0x94D049BB133111EBULL;
  x ^= x >> 31;
  return x;
}

// sig[p] = min over shingles of ((a[p] * x + b[p]) mod 2^64) >> 32. The loop over p is vectorized by the compiler;
// target_clones builds it for AVX-512 (a native 64-bit multiply, vpmullq), AVX2 and plain x86-64, and picks the
// best the CPU has at load time (GCC/Clang function multi-versioning), so one binary runs everywhere.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(MINHASH_NO_CLONES)
__attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#endif
void permute_min(const uint64_t* sh, size_t n, const uint64_t* a, const uint64_t* b, size_t P, uint64_t* sig) {
  for (size_t i = 0; i < n; ++i) {
    const uint64_t x = sh[i];
    for (size_t p = 0; p < P; ++p) {
      uint64_t v = (a[p] * x + b[p]) >> 32;
      sig[p] = v < sig[p] ? v : sig[p];
    }
  }
}

// The signature of one document into sig[0..P); false when it has no token.
bool signature(const uint8_t* s, size_t len, int n_grams, const uint64_t* a, const uint64_t* b, size_t P,
               uint64_t* sig, std::vector<uint64_t>& toks, std::vector<uint64_t>& sh) {
  token_hashes(s, len, toks);
  if (toks.empty()) return false;
  size_t n = std::min(static_cast<size_t>(n_grams), toks.size());
  size_t width = toks.size() - n + 1;
  sh.resize(width);
  for (size_t i = 0; i < width; ++i) {
    uint64_t h = toks[i];
    for (size_t k = 1; k < n; ++k) h = h * kMult + toks[i + k];
    sh[i] = finalize(h);
  }
  // repeated shingles are not removed first: the minimum is the same, and sorting cost more than it saved
  std::fill(sig, sig + P, std::numeric_limits<uint64_t>::max());
  permute_min(sh.data(), sh.size(), a, b, P, sig);
  return true;
}

using U64Array = py::array_t<uint64_t, py::array::c_style | py::array::forcecast>;

// signatures([bytes, ...], n_grams, a, b) -> (uint64 array [docs, P], bool array [docs]: has a token)
py::tuple signatures(py::list texts, int n_grams, U64Array a, U64Array b) {
  if (n_grams < 1) throw std::invalid_argument("n_grams must be >= 1");
  if (a.ndim() != 1 || b.ndim() != 1 || a.shape(0) != b.shape(0))
    throw std::invalid_argument("a and b must be 1-D arrays of the same length");
  const size_t P = static_cast<size_t>(a.shape(0)), D = static_cast<size_t>(py::len(texts));
  std::vector<std::pair<const uint8_t*, size_t>> views(D);
  for (size_t d = 0; d < D; ++d) {
    PyObject* o = PyList_GET_ITEM(texts.ptr(), d);
    if (!PyBytes_Check(o)) throw std::invalid_argument("texts must be a list of bytes (UTF-8)");
    views[d] = {reinterpret_cast<const uint8_t*>(PyBytes_AS_STRING(o)), static_cast<size_t>(PyBytes_GET_SIZE(o))};
  }
  py::array_t<uint64_t> out({D, P});
  py::array_t<bool> ok(D);
  uint64_t* o = out.mutable_data();
  bool* k = ok.mutable_data();
  const uint64_t *pa = a.data(), *pb = b.data();
  {
    py::gil_scoped_release release;  // the texts are kept alive by the list the caller holds
    std::vector<uint64_t> toks, sh;
    for (size_t d = 0; d < D; ++d)
      k[d] = signature(views[d].first, views[d].second, n_grams, pa, pb, P, o + d * P, toks, sh);
  }
  return py::make_tuple(out, ok);
}

py::array_t<uint64_t> token_hash_array(py::bytes text) {
  std::string s = text;
  std::vector<uint64_t> toks;
  token_hashes(reinterpret_cast<const uint8_t*>(s.data()), s.size(), toks);
  py::array_t<uint64_t> out(toks.size());
  std::copy(toks.begin(), toks.end(), out.mutable_data());
  return out;
}

}  // namespace

PYBIND11_MODULE(_minhash_cpp, m) {
  m.doc() = "MinHash signatures of code documents (see csrc/minhash.cpp)";
  m.def("signatures", &signatures, py::arg("texts"), py::arg("n_grams"), py::arg("a"), py::arg("b"));
  m.def("token_hashes", &token_hash_array, py::arg("text"));
  m.def("xxh64", [](py::bytes data, uint64_t seed) {
    std::string s = data;
    return xxh64(reinterpret_cast<const uint8_t*>(s.data()), s.size(), seed);
  }, py::arg("data"), py::arg("seed") = 0);
}
