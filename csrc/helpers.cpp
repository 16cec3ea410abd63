// Sample-index and blending-index loops for megatron_code.data.helpers (numpy twin in helpers.py; both must
// return identical arrays - tests/unit/test_data_helpers.py). Built at install time by setup.py as
// megatron_code.data._helpers_cpp; never compiled at run time.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <type_traits>
#include <vector>

// Blending must round like Python (one rounding per * and -): forbid fused multiply-add contraction.
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define MC_X86_SIMD 1  // AVX-512 code paths behind target attributes, chosen at run time (portable wheel)
#include <immintrin.h>
#else
#define MC_X86_SIMD 0
#endif

// GCC 12's AVX-512 headers trip -Wuninitialized on their own code (_mm256_undefined_si256 and the like).
#if defined(__GNUC__) && !defined(__clang__)
#define MC_HEADER_WARNINGS_OFF                                  \
  _Pragma("GCC diagnostic push") _Pragma("GCC diagnostic ignored \"-Wuninitialized\"") \
      _Pragma("GCC diagnostic ignored \"-Wmaybe-uninitialized\"")
#define MC_HEADER_WARNINGS_ON _Pragma("GCC diagnostic pop")
#else
#define MC_HEADER_WARNINGS_OFF
#define MC_HEADER_WARNINGS_ON
#endif

// Whole 2 MB pages for the sample index's large arrays (class Pages); not under AddressSanitizer, which finds
// overflows by the redzones it puts around malloc'd memory.
#if defined(__linux__) && !defined(__SANITIZE_ADDRESS__)
#include <sys/mman.h>
#if defined(MADV_HUGEPAGE)
#define MC_HUGE_PAGES 1
#endif
#endif
#ifndef MC_HUGE_PAGES
#define MC_HUGE_PAGES 0
#endif

#if defined(__GNUC__)
#define MC_PREFETCH(p) __builtin_prefetch(p)
#define MC_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define MC_LIKELY(x) __builtin_expect(!!(x), 1)
#else
#define MC_PREFETCH(p) ((void)0)
#define MC_UNLIKELY(x) (x)
#define MC_LIKELY(x) (x)
#endif

namespace py = pybind11;

// ---- fresh memory in whole 2 MB pages ------------------------------------------------------------------------
// The sample-index build's large arrays (its rows, the 16-bit copy of sizes, the helpers' buffers) are fresh memory
// touched once, so their first touch is part of the build. In this VM a first touch of 4 KB pages cost 0.43-0.57
// ms/MB and of transparent 2 MB pages 0.094-0.111 ms/MB (benchmarks/fault_pages.c). numpy asks for huge pages as
// well, but from an array's first 2 MB boundary to its last, so the head and tail of each array (2 MB per array on
// average) stay 4 KB pages: 1,229 faults per build here. These arrays are mapped 2 MB-aligned instead, in whole 2 MB
// pages, with the kernel asked for huge pages (a hint; without transparent huge pages they are ordinary pages).
// Small arrays, systems other than Linux, and AddressSanitizer builds use malloc.
class Pages {
 public:
  static constexpr size_t kHuge = size_t{2} << 20;

  Pages() = default;
  explicit Pages(size_t bytes) {
    if (bytes == 0) return;
#if MC_HUGE_PAGES
    if (bytes >= kHuge) {
      const size_t len = (bytes + kHuge - 1) & ~(kHuge - 1);
      void* raw = mmap(nullptr, len + kHuge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (raw == MAP_FAILED) throw std::bad_alloc();
      const uintptr_t r = reinterpret_cast<uintptr_t>(raw), a = (r + kHuge - 1) & ~uintptr_t{kHuge - 1};
      if (a > r) munmap(raw, a - r);                                     // the unaligned head
      munmap(reinterpret_cast<void*>(a + len), kHuge - (a - r));         // and what is left past the end
      p_ = reinterpret_cast<void*>(a);
      mapped_ = len;
      madvise(p_, len, MADV_HUGEPAGE);
      return;
    }
#endif
    p_ = std::malloc(bytes);
    if (p_ == nullptr) throw std::bad_alloc();
  }
  Pages(const Pages&) = delete;
  Pages& operator=(const Pages&) = delete;
  Pages(Pages&& o) noexcept : p_(o.p_), mapped_(o.mapped_) {
    o.p_ = nullptr;
    o.mapped_ = 0;
  }
  ~Pages() {
#if MC_HUGE_PAGES
    if (mapped_) {
      munmap(p_, mapped_);
      return;
    }
#endif
    std::free(p_);
  }
  template <class T>
  T* as() const { return static_cast<T*>(p_); }

  // A C-contiguous numpy array over this memory, which it then owns (freed with the array).
  template <class T>
  py::array_t<T> to_array(const std::vector<py::ssize_t>& shape) && {
    std::unique_ptr<Pages> owner(new Pages(std::move(*this)));
    T* data = owner->as<T>();
    py::capsule free_with_array(owner.get(), [](void* o) { delete static_cast<Pages*>(o); });
    owner.release();  // the capsule frees it now
    return py::array_t<T>(shape, data, free_with_array);
  }

 private:
  void* p_ = nullptr;
  size_t mapped_ = 0;  // > 0: mmap'd (whole 2 MB pages), else malloc'd
};

// ---- sample index ------------------------------------------------------------------------------------------
// Cost model (5M shuffled documents, 2B tokens): the walk is bound by the random gather sizes[doc_idx[i]] (one
// cache miss per document), then by instructions per document and by first-touch page faults of new arrays.
// So: (1) the walk has no data-dependent branch in the common case (a mispredict flushes the misses in flight)
// and no per-document bounds check; (2) thread 0 walks from the front with software prefetch, while helper
// threads gather from the back into a buffer (independent loads, many misses in flight; AVX-512 gathers and
// 16-bit lengths when the CPU has them: the buffer is fresh memory, whose first touch costs as much as the
// gathers) and sum each block; once they meet, the block sums give every buffered block its first token, and the
// buffered blocks' rows are emitted by all threads (16 rows at a time, from 16 running sums at a time). Blocks are
// claimed dynamically in both phases, so a thread that gets no CPU costs nothing but its help, and the result
// never depends on who did what.
// (3) The gather reads a 16-bit copy of sizes when that pays: half the bytes, so twice the documents per cache
// level (5M documents: 10 MB instead of 20 MB, measured 2x faster gathers on a 32 MB L3). Lengths from 0xffff up
// (and negative ones) are stored as the escape 0xffff and read from sizes itself. The copy is one sequential
// pass split over the threads, made only when sizes is large and mostly gathered, and used only when few
// lengths escape (see use_narrow). A 12-bit copy (3 bytes per 2 lengths) gathered 1.3x faster in a bare loop but
// made the whole build slower here (unaligned, line-splitting loads and the shifts), so it is not used.
// (4) doc_idx and the rows may be int32 (GPTDataset's order): a third less memory traffic than int64.

namespace sample_idx {

constexpr int64_t kPrefetch = 32;           // documents fetched ahead by the front walk
constexpr int64_t kRun = 1024;              // documents per bounds decision in walk_range
constexpr int64_t kDefaultBlock = 1 << 16;  // documents per claimable block
constexpr int kMaxAutoThreads = 4;
constexpr uint32_t kEscape = 0xffff;        // 16-bit table: "read the length from sizes"
constexpr int64_t kNarrowChunk = 1 << 16;   // sizes entries per claimable chunk of the 16-bit copy
constexpr uint64_t kNarrowMinSizes = 1 << 19;  // smaller tables (2 MB) already fit in a core's L2

// Where lengths are read: sizes itself, or the 16-bit copy with escapes back to sizes.
struct Wide {
  const int32_t* s;
  int32_t get(uint64_t v) const { return s[v]; }
  const void* addr(uint64_t v) const { return s + v; }
};
struct Narrow {
  const uint16_t* n;
  const int32_t* s;
  int32_t get(uint64_t v) const {
    const uint32_t x = n[v];
    return MC_LIKELY(x != kEscape) ? static_cast<int32_t>(x) : s[v];
  }
  const void* addr(uint64_t v) const { return n + v; }
};

// Walk state: `pos` = token position where the current document starts, `next` = position of the next row to
// emit (k * seq_length), `k` = that row's number.
struct Cursor {
  int64_t pos = 0, next = 0, k = 0;
};

// Idx: the dtype of doc_idx, int32 (Megatron's, and ours below 2^31 documents: half the bytes to stream) or int64.
template <class Idx>
struct Job {
  const int32_t* sizes;
  uint64_t num_sizes;
  const Idx* doc_idx;
  int64_t num_docs, seq_length, last_row;  // last_row = num_samples: rows 0..last_row are emitted
  int64_t block, num_blocks;
  int64_t front_limit;  // most blocks thread 0 walks (-1: no limit); tests use it to force buffered blocks
  bool simd;           // helpers may use AVX-512 gathers (when the CPU has them)
  Idx* rows;           // (last_row + 1, 2), the dtype of doc_idx
  int32_t* lens;       // gathered lengths of buffered blocks not in lens16, indexed like doc_idx (nullptr with one
                       // thread)
  int64_t* block_sum;  // tokens per buffered block, (num_blocks,)
  uint16_t* lens16;    // AVX-512 helpers: 16-bit lengths of buffered blocks, indexed like doc_idx, or nullptr
  uint8_t* packed;     // per block: its lengths are in lens16, not lens
  uint16_t* narrow;    // 16-bit copy of sizes (+1 padding entry), or nullptr; used when use_narrow
  bool use_narrow = false, force_narrow = false;
  std::atomic<int64_t> narrow_next{0}, escapes{0};
  // Blocks [front, back) are unclaimed; front is claimed by thread 0 (walk in order), back - 1 by helpers.
  std::atomic<uint64_t> claims{0};
  std::atomic<bool> bad_index{false}, negative{false};
};

// Where walk_range reads document lengths: gathered on the fly (front walk) or from the helpers' buffer.
template <class Tab, class Idx>
struct Gathered {
  Tab t;
  const Idx* d;
  int32_t len(int64_t i) const { return t.get(static_cast<uint64_t>(d[i])); }
  void prefetch(int64_t i) const { MC_PREFETCH(t.addr(static_cast<uint64_t>(d[i]))); }
};
struct Buffered {
  const int32_t* lens;
  int32_t len(int64_t i) const { return lens[i]; }
  void prefetch(int64_t) const {}
};

// Walk documents [i, hi) of doc_idx, emitting rows up to `last`; returns where it stopped (hi, or earlier once
// row `last` is written). With PF, entries up to hi + kPrefetch - 1 must be valid indices (they are prefetched).
// Each document writes the row at k unconditionally (a later document overwrites it unless this one holds it)
// and advances k/next by the comparison result, so the common case (0 or 1 row start per document) has no
// branch on the data. A document holding a second row start (longer than seq_length) takes the rare branch.
// Within a run of m documents with k + m - 1 <= last no row past `last` can be written, so there is no check.
template <bool PF, class Src, class Row>
static int64_t walk_range(const Src& src, int64_t i, int64_t hi, int64_t S, int64_t last, Row* rows,
                          Cursor& c, int32_t& sign_out) {
  // Locals, not the references: a store to rows[] may alias them, which would force a memory round trip (a
  // loop-carried store-to-load dependency) per document.
  int64_t pos = c.pos, next = c.next, k = c.k;
  int32_t sign = sign_out;
  while (i < hi && k <= last) {
    const int64_t e = std::min(hi, i + kRun);
    if (last - k >= e - i) {
      for (; i < e; ++i) {
        if (PF) src.prefetch(i + kPrefetch);
        const int32_t len = src.len(i);
        sign |= len;
        const int64_t end = pos + len;
        rows[2 * k] = static_cast<Row>(i);
        rows[2 * k + 1] = static_cast<Row>(next - pos);
        const int64_t hit = next < end;
        k += hit;
        next += S & -hit;
        if (MC_UNLIKELY(next < end)) {  // more row starts in this document: write them, re-derive the bound
          for (; next < end && k <= last; ++k, next += S) {
            rows[2 * k] = static_cast<Row>(i);
            rows[2 * k + 1] = static_cast<Row>(next - pos);
          }
          pos = end;
          ++i;
          break;
        }
        pos = end;
      }
    } else {  // close to `last`: check before every write
      for (; i < e && k <= last; ++i) {
        const int32_t len = src.len(i);
        sign |= len;
        const int64_t end = pos + len;
        for (; next < end && k <= last; ++k, next += S) {
          rows[2 * k] = static_cast<Row>(i);
          rows[2 * k + 1] = static_cast<Row>(next - pos);
        }
        pos = end;
      }
    }
  }
  c = Cursor{pos, next, k};
  sign_out = sign;
  return i;
}

// Every d[lo, hi) in [0, n). For 1 <= n <= 2^63 and any int64 v: v | (n - 1 - v) is negative exactly when v < 0
// or v >= n (no overflow). Only subtractions and ORs: the compiler vectorizes it with SSE2, where a max or a
// compare of 64-bit lanes would be a scalar loop-carried chain (that pass took a third of the walk's time).
// The same for 32-bit entries, in wrapping unsigned arithmetic: top - v is negative as an int32 exactly when
// v > top for 0 <= v; a negative v makes the OR negative by itself.
static bool indices_ok(const int64_t* d, int64_t lo, int64_t hi, uint64_t n) {
  if (hi <= lo) return true;
  if (n == 0) return false;
  const int64_t top = static_cast<int64_t>(std::min<uint64_t>(n, uint64_t{1} << 63) - 1);
  int64_t bad = 0;
  for (int64_t i = lo; i < hi; ++i) bad |= d[i] | (top - d[i]);
  return bad >= 0;
}
static bool indices_ok(const int32_t* d, int64_t lo, int64_t hi, uint64_t n) {
  if (hi <= lo) return true;
  if (n == 0) return false;
  const uint32_t top = static_cast<uint32_t>(std::min<uint64_t>(n, uint64_t{1} << 31) - 1);
  uint32_t bad = 0;
  for (int64_t i = lo; i < hi; ++i) bad |= static_cast<uint32_t>(d[i]) | (top - static_cast<uint32_t>(d[i]));
  return static_cast<int32_t>(bad) >= 0;
}

static constexpr uint64_t pack(uint64_t front, uint64_t back) { return (front << 32) | back; }

// Claim the next block from the front (thread 0) or from the back (helpers); -1 when none is left.
template <class Idx>
static int64_t claim(Job<Idx>& job, bool from_front) {
  uint64_t cur = job.claims.load(std::memory_order_relaxed);
  for (;;) {
    uint64_t front = cur >> 32, back = cur & 0xffffffffu;
    if (front >= back) return -1;
    uint64_t want = from_front ? pack(front + 1, back) : pack(front, back - 1);
    if (job.claims.compare_exchange_weak(cur, want, std::memory_order_relaxed)) {
      return static_cast<int64_t>(from_front ? front : back - 1);
    }
  }
}

// Thread 0: claim blocks from the front and walk them in order (bounds-check the block, then gather with
// prefetch and emit rows). Returns the cursor at the start of the first block it did not claim.
template <class Tab, class Idx>
static Cursor walk_front(Job<Idx>& job, Tab tab) {
  const Gathered<Tab, Idx> src{tab, job.doc_idx};
  const int64_t S = job.seq_length, last = job.last_row;
  Cursor c;
  int32_t sign = 0;  // OR of the lengths read: negative if any of them is
  for (int64_t b, n = 0; n != job.front_limit && (b = claim(job, true)) >= 0; ++n) {
    if (job.bad_index.load(std::memory_order_relaxed)) break;
    const int64_t lo = b * job.block, hi = std::min(job.num_docs, lo + job.block);
    if (!indices_ok(job.doc_idx, lo, hi, job.num_sizes)) {
      job.bad_index.store(true);
      break;
    }
    int64_t i = lo;
    if (c.k <= last) {
      const int64_t mid = std::max(lo, hi - kPrefetch);  // prefetching stays inside the checked block
      i = walk_range<true>(src, i, mid, S, last, job.rows, c, sign);
      if (i == mid) i = walk_range<false>(src, i, hi, S, last, job.rows, c, sign);
    }
    for (; i < hi; ++i) sign |= src.len(i);  // rows complete: lengths are still read, like numpy's gather
  }
  if (sign < 0) job.negative.store(true);
  return c;
}

// Gather lengths of doc_idx[lo, hi) into lens[lo, hi); returns their sum. Out-of-range indices read sizes[0]
// and clear `ok`; `sign` collects the OR of the lengths. No branch on the data: many misses stay in flight.
template <class Tab, class Idx>
static int64_t gather_scalar(Tab s, uint64_t n, const Idx* d, int64_t lo, int64_t hi, int32_t* lens,
                             bool& ok_out, int32_t& sign_out) {
  int64_t sum = 0;
  bool ok = true;
  int32_t sign = 0;  // locals: stores to lens[] may alias the references (see walk_range)
  for (int64_t i = lo; i < hi; ++i) {
    const uint64_t v = static_cast<uint64_t>(d[i]);
    const bool in = v < n;
    ok &= in;
    const int32_t len = s.get(in ? v : 0);
    sign |= len;
    lens[i] = len;
    sum += len;
  }
  ok_out &= ok;
  sign_out |= sign;
  return sum;
}

#if MC_X86_SIMD
// The last documents [i, hi) of a block gathered by gather16_avx512, one by one (same contract); returns their sum.
template <class Tab, class Idx>
static int64_t tail16(Tab tab, uint64_t n, const Idx* d, int64_t i, int64_t hi, uint16_t* lens16, bool& ok,
                      int32_t& bits) {
  int64_t sum = 0;
  for (; i < hi; ++i) {
    const uint64_t v = static_cast<uint64_t>(d[i]);
    ok &= v < n;
    const int32_t len = tab.get(v < n ? v : 0);
    bits |= len;
    lens16[i] = static_cast<uint16_t>(len);
    sum += len;
  }
  return sum;
}

MC_HEADER_WARNINGS_OFF
// Lengths of doc_idx[lo, hi) into lens16[lo, hi), each cut to its low 16 bits; returns their exact sum. `bits` gets
// the OR of the lengths: bits >> 16 != 0 when one did not fit (or was negative), and the block is then gathered
// again in 32 bits. 8 documents per AVX-512 gather (masked: out-of-range lanes load nothing). From the 16-bit table
// a lane loads 32 bits at 2 * index (the padding entry covers the last one) and keeps the low half; escaped lanes
// are gathered again from sizes. Half the bytes of 32-bit lengths: the buffer is fresh memory, and its first
// touch (page faults, zeroing) cost more than the gathers it holds.
template <class Tab>
__attribute__((target("avx512f,avx512vl"))) static int64_t gather16_avx512(Tab tab, uint64_t n, const int64_t* d,
                                                                          int64_t lo, int64_t hi, uint16_t* lens16,
                                                                          bool& ok, int32_t& bits) {
  constexpr bool kNarrow = std::is_same<Tab, Narrow>::value;
  const __m512i limit = _mm512_set1_epi64(static_cast<long long>(n));
  const __m256i zero = _mm256_setzero_si256();
  const __m256i low16 = _mm256_set1_epi32(0xffff), escape = _mm256_set1_epi32(static_cast<int>(kEscape));
  __m512i sum = _mm512_setzero_si512();
  __m256i acc_bits = zero;
  __mmask8 all_in = 0xff;
  int64_t i = lo;
  for (; i + 8 <= hi; i += 8) {
    const __m512i idx = _mm512_loadu_si512(static_cast<const void*>(d + i));
    const __mmask8 in = _mm512_cmplt_epu64_mask(idx, limit);
    all_in &= in;
    __m256i v;
    if constexpr (kNarrow) {
      v = _mm256_and_si256(_mm512_mask_i64gather_epi32(zero, in, idx, tab.addr(0), 2), low16);
      const __mmask8 esc = _mm256_cmpeq_epi32_mask(v, escape);
      if (MC_UNLIKELY(esc)) v = _mm512_mask_i64gather_epi32(v, esc, idx, tab.s, 4);
    } else {
      v = _mm512_mask_i64gather_epi32(zero, in, idx, tab.s, 4);
    }
    acc_bits = _mm256_or_si256(acc_bits, v);
    sum = _mm512_add_epi64(sum, _mm512_cvtepi32_epi64(v));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(lens16 + i), _mm256_cvtepi32_epi16(v));
  }
  ok &= all_in == 0xff;
  alignas(32) int32_t lanes[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), acc_bits);
  for (int32_t x : lanes) bits |= x;
  return _mm512_reduce_add_epi64(sum) + tail16(tab, n, d, i, hi, lens16, ok, bits);
}

// The same for 32-bit doc_idx entries: 16 documents per gather. Lanes compare as unsigned against min(n, 2^31), so
// negative entries are out of range.
template <class Tab>
__attribute__((target("avx512f,avx512vl"))) static int64_t gather16_avx512(Tab tab, uint64_t n, const int32_t* d,
                                                                          int64_t lo, int64_t hi, uint16_t* lens16,
                                                                          bool& ok, int32_t& bits) {
  constexpr bool kNarrow = std::is_same<Tab, Narrow>::value;
  const uint32_t top = static_cast<uint32_t>(std::min<uint64_t>(n, uint64_t{1} << 31));
  const __m512i limit = _mm512_set1_epi32(static_cast<int>(top));
  const __m512i zero = _mm512_setzero_si512();
  const __m512i low16 = _mm512_set1_epi32(0xffff), escape = _mm512_set1_epi32(static_cast<int>(kEscape));
  __m512i sum = _mm512_setzero_si512(), acc_bits = zero;
  __mmask16 all_in = 0xffff;
  int64_t i = lo;
  for (; i + 16 <= hi; i += 16) {
    const __m512i idx = _mm512_loadu_si512(static_cast<const void*>(d + i));
    const __mmask16 in = _mm512_cmplt_epu32_mask(idx, limit);
    all_in &= in;
    __m512i v;
    if constexpr (kNarrow) {
      v = _mm512_and_si512(_mm512_mask_i32gather_epi32(zero, in, idx, tab.addr(0), 2), low16);
      const __mmask16 esc = _mm512_cmpeq_epi32_mask(v, escape);
      if (MC_UNLIKELY(esc)) v = _mm512_mask_i32gather_epi32(v, esc, idx, tab.s, 4);
    } else {
      v = _mm512_mask_i32gather_epi32(zero, in, idx, tab.s, 4);
    }
    acc_bits = _mm512_or_si512(acc_bits, v);
    sum = _mm512_add_epi64(sum, _mm512_cvtepi32_epi64(_mm512_castsi512_si256(v)));
    sum = _mm512_add_epi64(sum, _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(v, 1)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(lens16 + i), _mm512_cvtepi32_epi16(v));
  }
  ok &= all_in == 0xffff;
  bits |= _mm512_reduce_or_epi32(acc_bits);
  return _mm512_reduce_add_epi64(sum) + tail16(tab, n, d, i, hi, lens16, ok, bits);
}

// Rows (first + j[r], off[r]) for r with bit 2r of `pairs` set, stored from `out` on (a prefix of the 16 lanes).
__attribute__((target("avx512f"))) static inline void store_pairs(int32_t* out, int64_t first, __m512i j, __m512i off,
                                                                  uint64_t pairs) {
  const __m512i lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  const __m512i pos = _mm512_add_epi32(j, _mm512_set1_epi32(static_cast<int>(first)));  // int32 rows: it fits
  _mm512_mask_storeu_epi32(out, static_cast<__mmask16>(pairs), _mm512_permutex2var_epi32(pos, lo, off));
  _mm512_mask_storeu_epi32(out + 16, static_cast<__mmask16>(pairs >> 16), _mm512_permutex2var_epi32(pos, hi, off));
}
__attribute__((target("avx512f"))) static inline void store_pairs(int64_t* out, int64_t first, __m512i j, __m512i off,
                                                                  uint64_t pairs) {
  const __m512i lo = _mm512_setr_epi64(0, 8, 1, 9, 2, 10, 3, 11), hi = _mm512_setr_epi64(4, 12, 5, 13, 6, 14, 7, 15);
  const __m512i f = _mm512_set1_epi64(first);
  const __m256i j0 = _mm512_castsi512_si256(j), j1 = _mm512_extracti64x4_epi64(j, 1);
  const __m256i o0 = _mm512_castsi512_si256(off), o1 = _mm512_extracti64x4_epi64(off, 1);
  const __m512i p0 = _mm512_add_epi64(_mm512_cvtepu32_epi64(j0), f);
  const __m512i p1 = _mm512_add_epi64(_mm512_cvtepu32_epi64(j1), f);
  const __m512i q0 = _mm512_cvtepu32_epi64(o0), q1 = _mm512_cvtepu32_epi64(o1);
  _mm512_mask_storeu_epi64(out, static_cast<__mmask8>(pairs), _mm512_permutex2var_epi64(p0, lo, q0));
  _mm512_mask_storeu_epi64(out + 8, static_cast<__mmask8>(pairs >> 8), _mm512_permutex2var_epi64(p0, hi, q0));
  _mm512_mask_storeu_epi64(out + 16, static_cast<__mmask8>(pairs >> 16), _mm512_permutex2var_epi64(p1, lo, q1));
  _mm512_mask_storeu_epi64(out + 24, static_cast<__mmask8>(pairs >> 24), _mm512_permutex2var_epi64(p1, hi, q1));
}

// Rows k..k_last of one buffered block from its 16-bit lengths L[0, m): row k is token t = k * S - base of the
// block, in the first document j whose running sum E[j] (from the block's start) exceeds t. Every row here lies
// inside the block, so every target is below its token count, itself below 2^32: exact in 32 bits. The running
// sums of 16 documents at a time are 4 shifted adds in a register. The next targets t, t + S, ..., t + 15S are one
// vector: each finds its document by a branchless binary search of the 16 running sums (4 steps of permute and
// compare), and the rows inside these documents (a prefix of the lanes) are stored as (position, offset) pairs, one
// masked store per 8 or 16 rows. Lanes past row k_last are masked off (their targets may wrap in 32 bits). The loop
// has no branch on the data but "16 rows or more in 16 documents" (a document longer than a row). A row at a time
// (a compare per row, whose loop exit mispredicted about once per 16 documents) was 1.9x slower on 3M documents of
// 400 tokens on average, S = 2048; in the benchmark's build this phase went from 2.45 to 1.4 ms (2 threads).
template <class Row>
__attribute__((target("avx512f,avx512bw,avx512vl,popcnt"))) static void rows_from_lengths16(
    const uint16_t* L, int64_t lo, int64_t m, int64_t base, int64_t k, int64_t k_last, int64_t S, Row* rows) {
  const __m512i zero = _mm512_setzero_si512(), lane15 = _mm512_set1_epi32(15);
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i steps = _mm512_mullo_epi32(iota, _mm512_set1_epi32(static_cast<int>(S)));  // r * S (mod 2^32)
  const __m512i one = _mm512_set1_epi32(1), two = _mm512_set1_epi32(2), three = _mm512_set1_epi32(3);
  const __m512i four = _mm512_set1_epi32(4), seven = _mm512_set1_epi32(7), eight = _mm512_set1_epi32(8);
  uint64_t t = static_cast<uint64_t>(k * S - base);  // the next row's token, from the block's start
  __m512i carry = zero;                               // running sum before the current 16 documents
  for (int64_t c = 0; c < m && k <= k_last; c += 16) {
    const int64_t left = m - c;
    const __mmask16 valid = left >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << left) - 1);
    const __m512i x = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(valid, L + c));  // lanes past m: length 0
    __m512i E = _mm512_add_epi32(x, _mm512_alignr_epi32(x, zero, 15));
    E = _mm512_add_epi32(E, _mm512_alignr_epi32(E, zero, 14));
    E = _mm512_add_epi32(E, _mm512_alignr_epi32(E, zero, 12));
    E = _mm512_add_epi32(E, _mm512_alignr_epi32(E, zero, 8));
    E = _mm512_add_epi32(E, carry);               // E[j]: end of document j
    const __m512i first = _mm512_sub_epi32(E, x);  // its first token
    carry = _mm512_permutexvar_epi32(lane15, E);
    for (;;) {
      const __m512i T = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(t)), steps);
      const int64_t room = k_last - k + 1;
      const __mmask16 wanted = room >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << room) - 1);
      const __mmask16 inside = _mm512_mask_cmplt_epu32_mask(wanted, T, carry);  // a prefix of the lanes
      // j = how many of the 16 documents end at or before T (at most 15 for the lanes inside)
      __m512i j = _mm512_maskz_mov_epi32(_mm512_cmple_epu32_mask(_mm512_permutexvar_epi32(seven, E), T), eight);
      j = _mm512_mask_add_epi32(j, _mm512_cmple_epu32_mask(_mm512_permutexvar_epi32(_mm512_add_epi32(j, three), E), T),
                                j, four);
      j = _mm512_mask_add_epi32(j, _mm512_cmple_epu32_mask(_mm512_permutexvar_epi32(_mm512_add_epi32(j, one), E), T),
                                j, two);
      j = _mm512_mask_add_epi32(j, _mm512_cmple_epu32_mask(_mm512_permutexvar_epi32(j, E), T), j, one);
      const __m512i off = _mm512_sub_epi32(T, _mm512_permutexvar_epi32(j, first));
      const unsigned n = static_cast<unsigned>(__builtin_popcount(inside));
      const uint64_t pairs = (uint64_t{1} << (2 * n)) - 1;  // one bit per stored element
      store_pairs(rows + 2 * k, lo + c, j, off, pairs);
      k += n;
      t += n * static_cast<uint64_t>(S);
      if (MC_LIKELY(n < 16) || k > k_last) break;  // else more rows may start in these documents
    }
  }
}
MC_HEADER_WARNINGS_ON
#endif

static bool cpu_has_avx512() {
#if MC_X86_SIMD
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("popcnt");
#else
  return false;
#endif
}

// Helper threads: claim blocks from the back, gather their lengths into a buffer and sum them per block. With
// AVX-512 the buffer holds 16-bit lengths (lens16) when they all fit and the block's total fits in 32 bits; other
// blocks (and CPUs without AVX-512) hold 32-bit lengths (lens), walked per document.
template <class Tab, class Idx>
static void gather_back(Job<Idx>& job, Tab tab) {
  int32_t sign = 0;
  for (int64_t b; (b = claim(job, false)) >= 0;) {
    if (job.bad_index.load(std::memory_order_relaxed)) break;
    const int64_t lo = b * job.block, hi = std::min(job.num_docs, lo + job.block);
    bool ok = true;
#if MC_X86_SIMD
    if (job.simd) {
      int32_t bits = 0;
      const int64_t sum = gather16_avx512(tab, job.num_sizes, job.doc_idx, lo, hi, job.lens16, ok, bits);
      if (ok && (bits >> 16) == 0 && sum < (int64_t{1} << 32)) {
        job.block_sum[b] = sum;
        job.packed[b] = 1;
        continue;
      }
      if (!ok) {
        job.bad_index.store(true);
        break;
      }
      // A length from 2^16 up, a negative one, or more than 2^32 tokens: this block again, in 32 bits.
    }
#endif
    job.block_sum[b] = gather_scalar(tab, job.num_sizes, job.doc_idx, lo, hi, job.lens, ok, sign);
    if (!ok) job.bad_index.store(true);
  }
  if (sign < 0) job.negative.store(true);
}

// Emit the rows starting inside buffered block b, whose first token is `start` and end `end`.
template <class Idx>
static void walk_buffered(const Job<Idx>& job, int64_t b, int64_t start, int64_t end) {
  const int64_t S = job.seq_length;
  const int64_t lo = b * job.block, hi = std::min(job.num_docs, lo + job.block);
  Cursor c;
  c.k = (start + S - 1) / S;  // first row at or after start
  c.next = c.k * S;
  c.pos = start;
  const int64_t last = std::min(job.last_row, (end + S - 1) / S - 1);
  if (c.k > last) return;
#if MC_X86_SIMD
  if (job.packed[b]) {
    rows_from_lengths16(job.lens16 + lo, lo, hi - lo, start, c.k, last, S, job.rows);
    return;
  }
#endif
  int32_t sign = 0;  // already checked by the helpers
  walk_range<false>(Buffered{job.lens}, lo, hi, S, last, job.rows, c, sign);
}

// 16-bit copy of sizes[lo, hi): min(length as uint32, 0xffff), so lengths from 0xffff up and negative ones become
// the escape; returns how many escaped.
static int64_t narrow_scalar(const int32_t* s, uint16_t* out, int64_t lo, int64_t hi) {
  int64_t esc = 0;
  for (int64_t i = lo; i < hi; ++i) {
    const uint32_t x = static_cast<uint32_t>(s[i]);
    esc += x >= kEscape;
    out[i] = static_cast<uint16_t>(std::min(x, kEscape));
  }
  return esc;
}

#if MC_X86_SIMD
MC_HEADER_WARNINGS_OFF
__attribute__((target("avx512f,popcnt"))) static int64_t narrow_avx512(const int32_t* s, uint16_t* out,
                                                                      int64_t lo, int64_t hi) {
  const __m512i limit = _mm512_set1_epi32(static_cast<int>(kEscape));
  int64_t esc = 0, i = lo;
  for (; i + 16 <= hi; i += 16) {
    const __m512i x = _mm512_loadu_si512(static_cast<const void*>(s + i));
    esc += __builtin_popcount(_mm512_cmpge_epu32_mask(x, limit));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), _mm512_cvtusepi32_epi16(x));  // unsigned saturation
  }
  return esc + narrow_scalar(s, out, i, hi);
}
MC_HEADER_WARNINGS_ON
#endif


// Each thread converts chunks of sizes until none is left; the escapes are counted for use_narrow.
template <class Idx>
static void fill_narrow(Job<Idx>& job) {
  const int64_t n = static_cast<int64_t>(job.num_sizes);
  int64_t esc = 0;
  for (int64_t lo; (lo = job.narrow_next.fetch_add(kNarrowChunk, std::memory_order_relaxed)) < n;) {
    const int64_t hi = std::min(n, lo + kNarrowChunk);
#if MC_X86_SIMD
    if (job.simd) {
      esc += narrow_avx512(job.sizes, job.narrow, lo, hi);
      continue;
    }
#endif
    esc += narrow_scalar(job.sizes, job.narrow, lo, hi);
  }
  job.escapes.fetch_add(esc, std::memory_order_relaxed);
}

// Whether the gathers get a 16-bit copy of sizes; `narrow` as in build_sample_idx. The copy is then used only if
// few lengths escape (counted while it is made), unless it was forced.
static bool plan_narrow(uint64_t num_sizes, int64_t num_docs, int narrow) {
  if (num_docs == 0 || narrow == 0) return false;
  if (narrow > 0) return true;
  // A small table already fits in a core's L2; a large one mostly not gathered (a small split of a big dataset)
  // does not pay for a copy of all of it.
  return num_sizes >= kNarrowMinSizes && num_sizes <= 2 * static_cast<uint64_t>(num_docs);
}

// Runs fn(t) for t = 1..n-1 on new threads and fn(0) here; a thread that cannot start runs inline.
template <class Fn>
static void run_threads(int n, Fn fn) {
  std::vector<std::thread> pool;
  for (int t = 1; t < n; ++t) {
    try {
      pool.emplace_back(fn, t);
    } catch (const std::system_error&) {
      fn(t);
    }
  }
  fn(0);
  for (auto& th : pool) th.join();
}

static int auto_threads(int64_t num_docs, int64_t block) {
  const int64_t hw = std::max(1u, std::thread::hardware_concurrency());
  const int64_t by_size = num_docs / (2 * block);  // at least 2 blocks each: small inputs stay single-threaded
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>({hw, by_size, kMaxAutoThreads})));
}

struct Outcome {
  bool complete = false;  // every row written
  int64_t total = 0;      // tokens in the whole document order (set when not complete)
};

// Fills job.rows. After a bad index or a negative length (flags in job) the rows are unspecified.
template <class Idx>
static Outcome build(Job<Idx>& job, int threads) {
  job.claims.store(pack(0, static_cast<uint64_t>(job.num_blocks)));
  if (job.narrow) {  // the padding entry after the last one was zeroed by the caller
    run_threads(threads, [&](int) { fill_narrow(job); });
    // Automatic choice: escapes cost a second miss and a mispredicted branch, so with many of them the copy is
    // not used (forced on, it is - tests).
    job.use_narrow = job.force_narrow || job.escapes.load() * 32 <= static_cast<int64_t>(job.num_sizes);
  }
  Cursor front;
  run_threads(threads, [&](int t) {
    auto go = [&](auto tab) {
      if (t == 0) front = walk_front(job, tab);
      else gather_back(job, tab);
    };
    if (job.use_narrow) go(Narrow{job.narrow, job.sizes});
    else go(Wide{job.sizes});
  });
  if (job.bad_index.load() || job.negative.load()) return {};
  if (front.k > job.last_row) return {true, 0};  // thread 0 wrote every row
  // Blocks [first, num_blocks) were buffered: their bases follow from thread 0's position and the block sums.
  const int64_t first = static_cast<int64_t>(job.claims.load() >> 32);
  const int64_t count = job.num_blocks - first;
  std::vector<int64_t> base(count + 1);
  base[0] = front.pos;
  for (int64_t b = 0; b < count; ++b) base[b + 1] = base[b] + job.block_sum[first + b];
  const int64_t total = base.back(), S = job.seq_length;
  // Row last_row sits at token last_row * S, which must exist; count == 0: thread 0 walked everything.
  if (count == 0 || total == 0 || job.last_row > (total - 1) / S) return {false, total};
  // Every buffered block is independent now (its first token is known): threads claim them one by one, so a
  // thread that gets no CPU delays nobody.
  std::atomic<int64_t> next_block{0};
  run_threads(static_cast<int>(std::min<int64_t>(threads, count)), [&](int) {
    for (int64_t j; (j = next_block.fetch_add(1, std::memory_order_relaxed)) < count;) {
      walk_buffered(job, first + j, base[j], base[j + 1]);
    }
  });
  return {true, 0};
}

}  // namespace sample_idx

// Rows (position in doc_idx, token offset) at token positions k * seq_length, k = 0..num_samples, of the dtype
// of doc_idx (int32 holds both: positions are below 2^31 and offsets below a length).
// Zero-length documents are skipped, matching numpy's searchsorted(ends, pos, side="right"). Every doc_idx entry
// is bounds-checked and its length read (also after the last needed document), as numpy's sizes[doc_idx] does;
// a negative length is an error here (the .idx reader already rejects them; the numpy twin does not check).
// threads <= 0: automatic (min(cores, 4, blocks / 2), at least 1); block <= 0: 65,536 documents per
// block; simd=false: no AVX-512 even when the CPU has it; front_blocks >= 0 (tests): thread 0 walks at most that
// many blocks and helper threads gather the rest; narrow: 16-bit copy of sizes for the gather (-1 automatic: when
// sizes has at least 2^19 entries, at most 2 per doc_idx entry, and few escape; 0 never; 1 always). These only
// change speed, never the result.
using Sizes = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;

template <class Idx>
static py::array_t<Idx> build_sample_idx_t(const Sizes& sizes_arr, const Idx* doc_idx, int64_t num_docs,
                                               int64_t seq_length, int64_t num_samples, int threads, int64_t block,
                                               bool simd, int64_t front_blocks, int narrow) {
  namespace si = sample_idx;
  // Every index is out of range (and the scalar paths would read sizes[0] in place of a bad index).
  if (num_docs > 0 && sizes_arr.size() == 0) throw py::value_error("doc_idx refers to a document outside sizes");
  if (block <= 0) block = si::kDefaultBlock;
  block = std::max<int64_t>(block, num_docs >> 31);  // block numbers must fit in 32 bits
  if (threads <= 0) threads = si::auto_threads(num_docs, block);
  if (static_cast<uint64_t>(num_samples) >= std::numeric_limits<size_t>::max() / (4 * sizeof(Idx))) {
    throw std::bad_alloc();  // the rows' size in bytes would overflow (MemoryError, like numpy's)
  }
  Pages rows(static_cast<size_t>(num_samples + 1) * 2 * sizeof(Idx));
  si::Job<Idx> job;
  job.sizes = sizes_arr.data();
  job.num_sizes = static_cast<uint64_t>(sizes_arr.size());
  job.doc_idx = doc_idx;
  job.num_docs = num_docs;
  job.seq_length = seq_length;
  job.last_row = num_samples;
  job.block = block;
  job.simd = simd && si::cpu_has_avx512();
  job.front_limit = threads > 1 ? front_blocks : -1;  // one thread walks everything
  job.num_blocks = (num_docs + block - 1) / block;
  job.rows = rows.as<Idx>();
  // Helpers' buffers, indexed like doc_idx: mapped whole but touched only where blocks are buffered.
  Pages lens(threads > 1 ? static_cast<size_t>(num_docs) * sizeof(int32_t) : 0);
  std::vector<int64_t> block_sum(threads > 1 ? job.num_blocks : 0);
  Pages lens16(threads > 1 && job.simd ? static_cast<size_t>(num_docs) * sizeof(uint16_t) : 0);
  std::vector<uint8_t> packed(threads > 1 ? job.num_blocks : 0, 0);
  job.packed = packed.data();
  job.lens16 = lens16.as<uint16_t>();
  job.lens = lens.as<int32_t>();
  job.block_sum = block_sum.data();
  const bool make_narrow = si::plan_narrow(job.num_sizes, num_docs, narrow);
  Pages narrow_table(make_narrow ? (job.num_sizes + 1) * sizeof(uint16_t) : 0);
  job.narrow = narrow_table.as<uint16_t>();
  if (make_narrow) job.narrow[job.num_sizes] = 0;  // padding: a 32-bit load at the last entry
  job.force_narrow = narrow > 0;
  si::Outcome res;
  {
    py::gil_scoped_release release;
    res = si::build(job, threads);
  }
  if (job.bad_index.load()) throw py::value_error("doc_idx refers to a document outside sizes");
  if (job.negative.load()) throw py::value_error("sizes holds a negative document length");
  if (!res.complete) {
    // Same text as the numpy twin; Python ints so num_samples * seq_length + 1 cannot overflow.
    py::int_ need = py::int_(num_samples) * py::int_(seq_length) + py::int_(1);
    throw py::value_error(std::to_string(num_samples) + " samples of " + std::to_string(seq_length) +
                          "+1 tokens need " + std::string(py::str(need)) +
                          " tokens but the document order holds " + std::to_string(res.total));
  }
  return std::move(rows).to_array<Idx>({num_samples + 1, 2});
}

// doc_idx: int32 (C-contiguous, fewer than 2^31 entries) is read as is and gives int32 rows; anything else is
// converted to int64 first and gives int64 rows.
static py::array build_sample_idx(Sizes sizes_arr, py::object doc_idx_obj, int64_t seq_length, int64_t num_samples,
                                  int threads, int64_t block, bool simd, int64_t front_blocks, int narrow) {
  if (seq_length < 1) throw std::invalid_argument("seq_length must be >= 1");
  if (num_samples < 0) throw std::invalid_argument("num_samples must be >= 0");
  using Idx32 = py::array_t<int32_t, py::array::c_style>;
  if (py::isinstance<Idx32>(doc_idx_obj) &&
      py::reinterpret_borrow<Idx32>(doc_idx_obj).size() <= std::numeric_limits<int32_t>::max()) {
    const auto d = py::reinterpret_borrow<Idx32>(doc_idx_obj);
    return build_sample_idx_t(sizes_arr, d.data(), d.size(), seq_length, num_samples, threads, block, simd,
                              front_blocks, narrow);
  }
  const auto d = doc_idx_obj.cast<py::array_t<int64_t, py::array::c_style | py::array::forcecast>>();
  return build_sample_idx_t(sizes_arr, d.data(), d.size(), seq_length, num_samples, threads, block, simd,
                            front_blocks, narrow);
}

// Greedy interleave: sample i goes to argmax_d (w_d * max(i,1) - count_d), lowest d on ties.
static py::tuple build_blending_indices(py::array_t<double, py::array::c_style | py::array::forcecast> weights_arr,
                                        int64_t size) {
  if (size < 0) throw std::invalid_argument("size must be >= 0");
  const int64_t n = weights_arr.size();
  if (n < 1 || n > 32767) throw std::invalid_argument("need 1..32767 weights");
  const double* w = weights_arr.data();
  py::array_t<int16_t> ds_index(size);
  py::array_t<int64_t> ds_sample(size);
  int16_t* idx = ds_index.mutable_data();
  int64_t* sidx = ds_sample.mutable_data();
  {
    py::gil_scoped_release release;
    std::vector<int64_t> counts(n, 0);
    for (int64_t i = 0; i < size; ++i) {
      const double denom = static_cast<double>(std::max<int64_t>(i, 1));
      int64_t best = 0;
      double best_err = w[0] * denom - static_cast<double>(counts[0]);
      for (int64_t d = 1; d < n; ++d) {
        const double err = w[d] * denom - static_cast<double>(counts[d]);
        if (err > best_err) {
          best = d;
          best_err = err;
        }
      }
      idx[i] = static_cast<int16_t>(best);
      sidx[i] = counts[best];
      ++counts[best];
    }
  }
  return py::make_tuple(ds_index, ds_sample);
}

PYBIND11_MODULE(_helpers_cpp, m) {
  m.doc() = "C++ twins of megatron_code.data.helpers (sample index, blending index)";
  m.def("build_sample_idx", &build_sample_idx, py::arg("sizes"), py::arg("doc_idx"), py::arg("seq_length"),
        py::arg("num_samples"), py::arg("threads") = 0, py::arg("block") = 0, py::arg("simd") = true,
        py::arg("front_blocks") = -1, py::arg("narrow") = -1);

  m.def("build_blending_indices", &build_blending_indices, py::arg("weights"), py::arg("size"));
}
