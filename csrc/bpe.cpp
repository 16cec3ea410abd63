// Exact fast encoder for our code BPE (megatron_code.data.fast_bpe): pre-tokenization by
// CODE_PRETOKENIZE_REGEX for ASCII text, written out by hand, then byte-level BPE with the semantics of Hugging
// Face `tokenizers` (merge the adjacent pair with the lowest merge rank, leftmost on ties, until none applies).
// Non-ASCII text is never given to this code: the Python side sends it to the `tokenizers` encoder, so the ids
// are identical by construction (tests/unit/test_fast_bpe.py compares them on fuzzed and real text).
// Built at install time by setup.py as megatron_code.data._bpe_cpp; never compiled at run time.
#include <Python.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <queue>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

namespace py = pybind11;

namespace {

// ASCII character classes of the regex (Oniguruma): \s is space, \t, \n, \v, \f, \r; \p{L} is [A-Za-z]; \p{N}
// is [0-9]; \p{M} is empty. kPunct is everything else ([^\s\p{L}\p{N}_], control characters included).
enum CharClass : uint8_t { kPunct = 0, kSpace = 1, kWord = 2, kDigit = 3, kNonAscii = 4 };

struct ClassTable {
  uint8_t c[256];
  ClassTable() {
    for (int i = 0; i < 256; ++i) c[i] = i < 128 ? kPunct : kNonAscii;
    for (int ch : {' ', '\t', '\n', '\v', '\f', '\r'}) c[ch] = kSpace;
    for (int ch = 'a'; ch <= 'z'; ++ch) c[ch] = kWord;
    for (int ch = 'A'; ch <= 'Z'; ++ch) c[ch] = kWord;
    c[static_cast<int>('_')] = kWord;
    for (int ch = '0'; ch <= '9'; ++ch) c[ch] = kDigit;
  }
};
const ClassTable kClass;

inline uint8_t cls(const uint8_t* s, size_t i) { return kClass.c[s[i]]; }

// Length of the pre-token starting at s[i] (n = text length, i < n). The alternatives, tried in order:
//   1 (?:\r?\n)+                      newline runs, greedy
//   2 [ \t]+(?=[ \t\r\n])             blanks followed by whitespace; the greedy run backtracks one character
//                                     when the character after the whole run is not \r or \n
//   3  ?[\p{L}_][\p{L}\p{M}\p{N}_]*   optional space + identifier
//   4 \p{N}                           one digit
//   5  ?[^\s\p{L}\p{N}_]+             optional space + punctuation run
//   6 \s+                             any whitespace run, greedy
size_t piece_length(const uint8_t* s, size_t n, size_t i) {
  const uint8_t c0 = s[i];
  if (c0 == '\n' || (c0 == '\r' && i + 1 < n && s[i + 1] == '\n')) {  // 1
    size_t j = i;
    while (j < n) {
      if (s[j] == '\n') {
        ++j;
      } else if (s[j] == '\r' && j + 1 < n && s[j + 1] == '\n') {
        j += 2;
      } else {
        break;
      }
    }
    return j - i;
  }
  if (c0 == ' ' || c0 == '\t') {  // 2
    size_t k = i;
    while (k < n && (s[k] == ' ' || s[k] == '\t')) ++k;
    if (k < n && (s[k] == '\r' || s[k] == '\n')) return k - i;
    if (k - i >= 2) return k - i - 1;  // the last blank is the lookahead
  }
  const uint8_t c = cls(s, i);
  if (c == kWord || (c0 == ' ' && i + 1 < n && cls(s, i + 1) == kWord)) {  // 3
    size_t j = c == kWord ? i + 1 : i + 2;
    while (j < n && (cls(s, j) == kWord || cls(s, j) == kDigit)) ++j;
    return j - i;
  }
  if (c == kDigit) return 1;  // 4
  if (c == kPunct || (c0 == ' ' && i + 1 < n && cls(s, i + 1) == kPunct)) {  // 5
    size_t j = c == kPunct ? i + 1 : i + 2;
    while (j < n && cls(s, j) == kPunct) ++j;
    return j - i;
  }
  size_t j = i + 1;  // 6 (c is whitespace: every ASCII character is in one of the classes above)
  while (j < n && cls(s, j) == kSpace) ++j;
  return j - i;
}

// Word cache: open addressing over (hash, piece bytes) -> ids, both stored in arenas. Cleared when full.
class WordCache {
 public:
  explicit WordCache(size_t capacity_pow2) : slots_(capacity_pow2) {}

  // Returns a pointer to the cached ids (count in *len) or nullptr.
  const int32_t* find(const uint8_t* s, size_t n, uint64_t h, size_t* len) const {
    size_t mask = slots_.size() - 1;
    for (size_t p = h & mask;; p = (p + 1) & mask) {
      const Slot& sl = slots_[p];
      if (sl.key_len == 0) return nullptr;
      if (sl.hash == h && sl.key_len == n && std::memcmp(bytes_.data() + sl.key_off, s, n) == 0) {
        *len = sl.ids_len;
        return ids_.data() + sl.ids_off;
      }
    }
  }

  void insert(const uint8_t* s, size_t n, uint64_t h, const int32_t* ids, size_t len) {
    if (used_ * 2 >= slots_.size()) clear();
    size_t mask = slots_.size() - 1;
    size_t p = h & mask;
    while (slots_[p].key_len != 0) p = (p + 1) & mask;
    slots_[p] = Slot{h, bytes_.size(), static_cast<uint32_t>(n), ids_.size(), static_cast<uint32_t>(len)};
    bytes_.insert(bytes_.end(), s, s + n);
    ids_.insert(ids_.end(), ids, ids + len);
    ++used_;
  }

 private:
  struct Slot {
    uint64_t hash = 0;
    size_t key_off = 0;
    uint32_t key_len = 0;  // 0 = empty (pieces are never empty)
    size_t ids_off = 0;
    uint32_t ids_len = 0;
  };
  void clear() {
    std::fill(slots_.begin(), slots_.end(), Slot{});
    bytes_.clear();
    ids_.clear();
    used_ = 0;
  }
  std::vector<Slot> slots_;
  std::vector<uint8_t> bytes_;
  std::vector<int32_t> ids_;
  size_t used_ = 0;
};

inline uint64_t hash_bytes(const uint8_t* s, size_t n) {  // FNV-1a
  uint64_t h = 1469598103934665603ULL;
  for (size_t i = 0; i < n; ++i) h = (h ^ s[i]) * 1099511628211ULL;
  return h;
}

inline uint64_t pair_key(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

class Encoder {
 public:
  // byte_ids[b]: id of the single-byte token of byte b. merges: (left id, right id, merged id), in rank order.
  Encoder(const std::vector<int32_t>& byte_ids, const std::vector<std::vector<int32_t>>& merges,
          size_t long_word, size_t cache_slots)
      : long_word_(long_word), cache_(cache_slots) {
    if (byte_ids.size() != 256) throw std::invalid_argument("byte_ids must have 256 entries");
    std::copy(byte_ids.begin(), byte_ids.end(), byte_ids_);
    if (cache_slots == 0 || (cache_slots & (cache_slots - 1)) != 0)
      throw std::invalid_argument("cache_slots must be a power of two");
    merges_.reserve(merges.size() * 2);
    for (size_t r = 0; r < merges.size(); ++r) {
      const auto& m = merges[r];
      if (m.size() != 3) throw std::invalid_argument("each merge must be (left, right, merged)");
      // A repeated pair keeps its last rank, as a map built in list order does.
      merges_[pair_key(m[0], m[1])] = Merge{static_cast<int32_t>(r), m[2]};
    }
  }

  // Appends the ids of ASCII text s[0:n] to out. Returns false (out unspecified) on a non-ASCII byte.
  bool encode(const uint8_t* s, size_t n, std::vector<int32_t>* out) {
    size_t i = 0;
    while (i < n) {
      if (s[i] >= 128) return false;
      // A piece that starts with an ASCII byte never contains a non-ASCII one (no class covers them).
      size_t len = piece_length(s, n, i);
      encode_word(s + i, len, out);
      i += len;
    }
    return true;
  }

 private:
  struct Merge {
    int32_t rank;
    int32_t id;
  };

  const Merge* find_merge(int32_t a, int32_t b) const {
    auto it = merges_.find(pair_key(a, b));
    return it == merges_.end() ? nullptr : &it->second;
  }

  void encode_word(const uint8_t* s, size_t n, std::vector<int32_t>* out) {
    if (n == 1) {
      out->push_back(byte_ids_[s[0]]);
      return;
    }
    uint64_t h = hash_bytes(s, n);
    size_t cached_len = 0;
    if (const int32_t* ids = cache_.find(s, n, h, &cached_len)) {
      out->insert(out->end(), ids, ids + cached_len);
      return;
    }
    word_.assign(n, 0);
    for (size_t k = 0; k < n; ++k) word_[k] = byte_ids_[s[k]];
    if (n <= long_word_) {
      merge_short();
    } else {
      merge_long();
    }
    cache_.insert(s, n, h, word_.data(), word_.size());
    out->insert(out->end(), word_.begin(), word_.end());
  }

  // O(n^2) in the word length, fast for short words: keep the rank of every adjacent pair, merge the smallest
  // (leftmost on ties), update the two neighbouring ranks.
  void merge_short() {
    const int32_t kNone = INT32_MAX;
    size_t m = word_.size();
    ranks_.assign(m, kNone);  // ranks_[k]: rank of (word_[k], word_[k+1]); merged_[k]: its merged id
    merged_.assign(m, 0);
    auto set_rank = [&](size_t k) {
      const Merge* mg = k + 1 < m ? find_merge(word_[k], word_[k + 1]) : nullptr;
      ranks_[k] = mg ? mg->rank : kNone;
      merged_[k] = mg ? mg->id : 0;
    };
    for (size_t k = 0; k + 1 < m; ++k) set_rank(k);
    while (m > 1) {
      size_t best = 0;
      for (size_t k = 1; k + 1 < m; ++k)
        if (ranks_[k] < ranks_[best]) best = k;
      if (ranks_[best] == kNone) break;
      word_[best] = merged_[best];
      word_.erase(word_.begin() + best + 1);
      ranks_.erase(ranks_.begin() + best + 1);
      merged_.erase(merged_.begin() + best + 1);
      --m;
      set_rank(best);
      if (best > 0) set_rank(best - 1);
    }
    word_.resize(m);
  }

  // O(n log n) for long words: a priority queue of (rank, position) over a linked list of symbols; entries
  // whose pair has changed since they were queued are skipped. Same result as merge_short.
  void merge_long() {
    const size_t n = word_.size();
    std::vector<int32_t> prev(n), next(n);
    std::vector<char> alive(n, 1);
    for (size_t k = 0; k < n; ++k) {
      prev[k] = static_cast<int32_t>(k) - 1;
      next[k] = k + 1 < n ? static_cast<int32_t>(k + 1) : -1;
    }
    struct Entry {
      int32_t rank;
      int32_t pos;
      int32_t id;
      bool operator>(const Entry& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
    };
    std::priority_queue<Entry, std::vector<Entry>, std::greater<Entry>> queue;
    auto push = [&](int32_t pos) {
      if (pos < 0 || next[pos] < 0) return;
      if (const Merge* mg = find_merge(word_[pos], word_[next[pos]])) queue.push(Entry{mg->rank, pos, mg->id});
    };
    for (size_t k = 0; k + 1 < n; ++k) push(static_cast<int32_t>(k));
    while (!queue.empty()) {
      Entry e = queue.top();
      queue.pop();
      if (!alive[e.pos] || next[e.pos] < 0) continue;
      const Merge* mg = find_merge(word_[e.pos], word_[next[e.pos]]);
      if (mg == nullptr || mg->rank != e.rank) continue;  // stale entry: the pair changed
      int32_t right = next[e.pos];
      word_[e.pos] = mg->id;
      alive[right] = 0;
      next[e.pos] = next[right];
      if (next[right] >= 0) prev[next[right]] = e.pos;
      push(prev[e.pos]);
      push(e.pos);
    }
    size_t m = 0;
    for (int32_t k = 0; k >= 0; k = next[k]) word_[m++] = word_[k];
    word_.resize(m);
  }

  int32_t byte_ids_[256];
  std::unordered_map<uint64_t, Merge> merges_;
  size_t long_word_;
  WordCache cache_;
  std::vector<int32_t> word_, ranks_, merged_;
};

// A Python str as UTF-8 bytes without copying (compact ASCII strings already hold them).
const uint8_t* utf8_of(py::handle text, size_t* n) {
  if (!PyUnicode_Check(text.ptr())) throw py::type_error("expected str");
  Py_ssize_t size = 0;
  const char* data = PyUnicode_AsUTF8AndSize(text.ptr(), &size);
  if (data == nullptr) throw py::error_already_set();
  *n = static_cast<size_t>(size);
  return reinterpret_cast<const uint8_t*>(data);
}

py::list to_list(const std::vector<int32_t>& ids) {
  PyObject* lst = PyList_New(static_cast<Py_ssize_t>(ids.size()));
  if (lst == nullptr) throw py::error_already_set();
  for (size_t k = 0; k < ids.size(); ++k) PyList_SET_ITEM(lst, static_cast<Py_ssize_t>(k), PyLong_FromLong(ids[k]));
  return py::reinterpret_steal<py::list>(lst);
}

}  // namespace

PYBIND11_MODULE(_bpe_cpp, m) {
  m.doc() = "Exact fast encoder for the code BPE tokenizer, ASCII text only (see megatron_code.data.fast_bpe)";
  py::class_<Encoder>(m, "Encoder")
      .def(py::init<const std::vector<int32_t>&, const std::vector<std::vector<int32_t>>&, size_t, size_t>(),
           py::arg("byte_ids"), py::arg("merges"), py::arg("long_word") = 128, py::arg("cache_slots") = 1 << 18)
      .def(
          "encode",
          [](Encoder& enc, py::handle text) -> py::object {
            // Non-ASCII str: None before any UTF-8 conversion (no cached UTF-8 copy, lone surrogates left to the
            // caller's fallback). The GIL stays held, so the word cache is never used by two threads at once.
            if (!PyUnicode_Check(text.ptr())) throw py::type_error("expected str");
            if (!PyUnicode_IS_ASCII(text.ptr())) return py::none();
            size_t n = 0;
            const uint8_t* s = utf8_of(text, &n);
            std::vector<int32_t> ids;
            if (!enc.encode(s, n, &ids)) return py::none();
            return to_list(ids);
          },
          py::arg("text"), "ids of an ASCII str as a list of int, or None if the text is not ASCII")
      .def(
          "pieces",
          [](Encoder&, py::handle text) {
            // The pre-tokenization alone (for tests): list of (start, end) byte offsets.
            size_t n = 0;
            const uint8_t* s = utf8_of(text, &n);
            py::list out;
            for (size_t i = 0; i < n;) {
              size_t len = piece_length(s, n, i);
              out.append(py::make_tuple(i, i + len));
              i += len;
            }
            return out;
          },
          py::arg("text"));
}
