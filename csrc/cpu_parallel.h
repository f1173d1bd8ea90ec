// Parallel loops of the CPU kernels on PyTorch's own OpenMP threads (see cpu_parallel.cpp).
#pragma once

#include <cstdint>
#include <string>

namespace glam_fast {
namespace cpu {

// body(context, first, last) on `threads` threads of PyTorch's OpenMP runtime, each given one
// contiguous share of [0, items); on the calling thread alone when threads or items is 1 or no
// runtime was found (openmp_runtime() == ""). Returns when every share is done.
void parallel_ranges(int64_t items, int threads, void (*body)(const void* context, int64_t first, int64_t last), const void* context);

// The path of the OpenMP runtime parallel_ranges uses, "" when it runs on the calling thread only.
std::string openmp_runtime();

}  // namespace cpu
}  // namespace glam_fast
