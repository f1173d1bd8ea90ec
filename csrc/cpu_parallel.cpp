// PyTorch's OpenMP runtime, looked up through PyTorch's own CPU library (libtorch_cpu, already
// loaded): dlsym on its handle searches its dependencies, so GOMP_parallel is the one of the
// runtime PyTorch's parallel regions use (libgomp, or the GOMP entry points of another runtime),
// even when other libraries have loaded a second libgomp. Our loops then run as a parallel region
// of that team: the workers the PyTorch op before left spin-waiting take a share instead of
// competing with threads of our own for the cores. Off Linux, or without libtorch_cpu, loops run
// on the calling thread.
#include "cpu_parallel.h"

#include <algorithm>
#include <cstring>
#include <mutex>

#if defined(__linux__)
#include <dlfcn.h>
#include <link.h>
#endif

namespace glam_fast {
namespace cpu {
namespace {

struct OpenMP {
  void (*parallel)(void (*)(void*), void*, unsigned, unsigned) = nullptr;  // GOMP_parallel
  int (*thread_num)() = nullptr;                                            // omp_get_thread_num
  std::string path;                                                         // the runtime's file
};

#if defined(__linux__)
int find_libtorch_cpu(dl_phdr_info* info, size_t, void* found) {
  if (info->dlpi_name && std::strstr(info->dlpi_name, "libtorch_cpu")) {
    *static_cast<std::string*>(found) = info->dlpi_name;
    return 1;
  }
  return 0;
}
#endif

const OpenMP& openmp() {
  static OpenMP omp;
  static std::once_flag once;
  std::call_once(once, [] {
#if defined(__linux__)
    std::string torch_cpu;
    dl_iterate_phdr(find_libtorch_cpu, &torch_cpu);
    void* handle = torch_cpu.empty() ? nullptr : dlopen(torch_cpu.c_str(), RTLD_LAZY | RTLD_NOLOAD);
    if (!handle) return;
    auto parallel = reinterpret_cast<decltype(omp.parallel)>(dlsym(handle, "GOMP_parallel"));
    auto thread_num = reinterpret_cast<decltype(omp.thread_num)>(dlsym(handle, "omp_get_thread_num"));
    Dl_info where{};
    if (parallel && thread_num && dladdr(reinterpret_cast<void*>(parallel), &where) && where.dli_fname) {
      omp = OpenMP{parallel, thread_num, where.dli_fname};
    }
#endif
  });
  return omp;
}

struct Job {
  void (*body)(const void*, int64_t, int64_t);
  const void* context;
  int64_t items;
  int threads;
  static void run(void* self) {
    const Job& job = *static_cast<const Job*>(self);
    const int64_t i = openmp().thread_num();
    const int64_t per = (job.items + job.threads - 1) / job.threads;
    const int64_t first = std::min(job.items, i * per), last = std::min(job.items, first + per);
    if (first < last) job.body(job.context, first, last);
  }
};

}  // namespace

void parallel_ranges(int64_t items, int threads, void (*body)(const void*, int64_t, int64_t), const void* context) {
  const OpenMP& omp = openmp();
  if (threads > 1 && items > 1 && omp.parallel) {
    Job job{body, context, items, static_cast<int>(std::min<int64_t>(threads, items))};
    omp.parallel(&Job::run, &job, job.threads, 0);
  } else if (items > 0) {
    body(context, 0, items);
  }
}

std::string openmp_runtime() { return openmp().path; }

}  // namespace cpu
}  // namespace glam_fast
