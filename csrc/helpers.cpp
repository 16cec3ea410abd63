// Sample-index and blending-index loops for megatron_code.data.helpers (numpy twin in helpers.py; both must
// return identical arrays - tests/unit/test_data_helpers.py). Built at install time by setup.py as
// megatron_code.data._helpers_cpp; never compiled at run time.
//
// Both are plain loops, the same job as Megatron's helpers: the sample index is built once per run (or offline by
// tools/build_index.py), so it is written to be read, not tuned (BENCHMARKS.md has its ratio to the numpy twin).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

// Blending must round like Python (one rounding per * and -): forbid fused multiply-add contraction.
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#if defined(__GNUC__) || defined(__clang__)
#define MC_PREFETCH(p) __builtin_prefetch(p)
#else
#define MC_PREFETCH(p) ((void)0)
#endif

namespace py = pybind11;
using Sizes = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;

// Rows of (position in doc_idx, token offset): row k is token k * seq_length of the stream of documents
// sizes[doc_idx[0]], sizes[doc_idx[1]], ...; zero-length documents are stepped over. Every doc_idx entry is
// bounds-checked (also those past the last one the rows need: the numpy twin validates the whole order).
template <class Idx>
static py::array_t<Idx> build_sample_idx_t(const Sizes& sizes_arr, const Idx* doc_idx, int64_t num_docs,
                                           int64_t seq_length, int64_t num_samples) {
  if (static_cast<uint64_t>(num_samples) >= std::numeric_limits<size_t>::max() / (4 * sizeof(Idx))) {
    throw std::bad_alloc();  // the rows' size in bytes would overflow (MemoryError, like numpy's)
  }
  const int32_t* sizes = sizes_arr.data();
  const uint64_t num_sizes = static_cast<uint64_t>(sizes_arr.size());
  py::array_t<Idx> rows_arr({num_samples + 1, int64_t{2}});
  Idx* rows = rows_arr.mutable_data();
  bool bad_index = false, negative = false;
  int64_t k = 0, pos = 0, start = 0, i = 0;  // next row k sits at token pos; doc_idx[i] starts at token start
  {
    py::gil_scoped_release release;
    for (; i < num_docs && k <= num_samples; ++i) {
      // The one thing that costs here is the random read sizes[doc_idx[i]] (a cache miss per document at millions
      // of documents): ask for a later one now so the misses overlap.
      constexpr int64_t kAhead = 16;
      if (i + kAhead < num_docs && static_cast<uint64_t>(doc_idx[i + kAhead]) < num_sizes) {
        MC_PREFETCH(sizes + doc_idx[i + kAhead]);
      }
      const uint64_t d = static_cast<uint64_t>(doc_idx[i]);  // a negative index wraps to a huge one
      if (d >= num_sizes) { bad_index = true; break; }
      negative |= sizes[d] < 0;
      const int64_t end = start + sizes[d];
      for (; pos < end && k <= num_samples; ++k, pos += seq_length) {  // the rows inside this document
        rows[2 * k] = static_cast<Idx>(i);
        rows[2 * k + 1] = static_cast<Idx>(pos - start);
      }
      start = end;
    }
    for (; i < num_docs && !bad_index; ++i) {  // the rest of the order: checked, not walked
      const uint64_t d = static_cast<uint64_t>(doc_idx[i]);
      bad_index = d >= num_sizes;
      negative |= !bad_index && sizes[d] < 0;
    }
  }
  if (bad_index) throw py::value_error("doc_idx refers to a document outside sizes");
  if (negative) throw py::value_error("sizes holds a negative document length");
  if (k <= num_samples) {  // the whole order was walked: `start` is its token count
    // Same text as the numpy twin; Python ints so num_samples * seq_length + 1 cannot overflow.
    py::int_ need = py::int_(num_samples) * py::int_(seq_length) + py::int_(1);
    throw py::value_error(std::to_string(num_samples) + " samples of " + std::to_string(seq_length) +
                          "+1 tokens need " + std::string(py::str(need)) +
                          " tokens but the document order holds " + std::to_string(start));
  }
  return rows_arr;
}

// doc_idx: int32 (C-contiguous, fewer than 2^31 entries) is read as is and gives int32 rows; anything else is
// converted to int64 first and gives int64 rows.
static py::array build_sample_idx(Sizes sizes_arr, py::object doc_idx_obj, int64_t seq_length, int64_t num_samples) {
  if (seq_length < 1) throw std::invalid_argument("seq_length must be >= 1");
  if (num_samples < 0) throw std::invalid_argument("num_samples must be >= 0");
  using Idx32 = py::array_t<int32_t, py::array::c_style>;
  if (py::isinstance<Idx32>(doc_idx_obj) &&
      py::reinterpret_borrow<Idx32>(doc_idx_obj).size() <= std::numeric_limits<int32_t>::max()) {
    const auto d = py::reinterpret_borrow<Idx32>(doc_idx_obj);
    return build_sample_idx_t(sizes_arr, d.data(), d.size(), seq_length, num_samples);
  }
  const auto d = doc_idx_obj.cast<py::array_t<int64_t, py::array::c_style | py::array::forcecast>>();
  return build_sample_idx_t(sizes_arr, d.data(), d.size(), seq_length, num_samples);
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
        py::arg("num_samples"));
  m.def("build_blending_indices", &build_blending_indices, py::arg("weights"), py::arg("size"));
}
