// First touch of fresh memory: 4 KB pages against transparent 2 MB pages (madvise(MADV_HUGEPAGE)), 24 MB each,
// interleaved A B A B; prints the median of each and their ratio. Why csrc/helpers.cpp maps the sample index's
// large arrays in whole 2 MB pages (class Pages). Linux only.
//
//     gcc -O2 benchmarks/fault_pages.c -o /tmp/fault_pages && /tmp/fault_pages
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

#define RUNS 9
#define HUGE_PAGE ((size_t)2 << 20)

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

static int cmp(const void* a, const void* b) {
  double x = *(const double*)a, y = *(const double*)b;
  return (x > y) - (x < y);
}

// Seconds to touch every 4 KB of a fresh 2 MB-aligned mapping of `bytes`, asking for huge pages or not.
static double first_touch(size_t bytes, int huge) {
  char* raw = mmap(NULL, bytes + HUGE_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) {
    perror("mmap");
    exit(1);
  }
  char* a = (char*)(((uintptr_t)raw + HUGE_PAGE - 1) & ~(uintptr_t)(HUGE_PAGE - 1));
  if (huge && madvise(a, bytes, MADV_HUGEPAGE) != 0) perror("madvise (no transparent huge pages?)");
  double t = now();
  for (size_t i = 0; i < bytes; i += 4096) a[i] = 1;
  t = now() - t;
  munmap(raw, bytes + HUGE_PAGE);
  return t;
}

int main(void) {
  const size_t bytes = (size_t)24 << 20;
  double small[RUNS], huge[RUNS];
  for (int r = 0; r < RUNS; r++) {
    small[r] = first_touch(bytes, 0);
    huge[r] = first_touch(bytes, 1);
  }
  qsort(small, RUNS, sizeof(double), cmp);
  qsort(huge, RUNS, sizeof(double), cmp);
  const double mb = (double)(bytes >> 20);
  printf("first touch of 24 MB, median of %d: 4 KB pages %.2f ms (%.3f ms/MB), 2 MB pages %.2f ms (%.3f ms/MB): "
         "%.1fx\n", RUNS, small[RUNS / 2] * 1e3, small[RUNS / 2] * 1e3 / mb, huge[RUNS / 2] * 1e3,
         huge[RUNS / 2] * 1e3 / mb, small[RUNS / 2] / huge[RUNS / 2]);
  return 0;
}
