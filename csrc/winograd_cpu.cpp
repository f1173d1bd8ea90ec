// Winograd F(4x4, 3x3) and F(4x4, 5x5) input and output transforms on the CPU (see
// winograd_cpu.h). Memory-bound loops over tiles, vectorised over 16 channels with GCC vector
// types; built for AVX-512, AVX2 and baseline x86-64, chosen at load time (target_clones). The
// tiles are split over PyTorch's own OpenMP threads (openmp() below): threads of a second pool
// would share the cores with PyTorch's spin-waiting workers (glam_fast/winograd.py).
#include "winograd_cpu.h"

#include <algorithm>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#if defined(__linux__)
#include <dlfcn.h>
#include <link.h>
#endif

namespace glam_fast {
namespace {

typedef float Vec __attribute__((vector_size(64)));  // 16 floats = kWinogradChannelStep
// Vec values never cross a call boundary (every helper is inlined), so the ABI note GCC gives for
// 64-byte vectors in a baseline-ISA build does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"

#define GLAM_FAST_ALWAYS_INLINE inline __attribute__((always_inline))
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define GLAM_FAST_CPU_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define GLAM_FAST_CPU_CLONES
#endif

GLAM_FAST_ALWAYS_INLINE Vec load(const float* p) {
  Vec v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
GLAM_FAST_ALWAYS_INLINE void store(float* p, Vec v) { std::memcpy(p, &v, sizeof v); }

// The transform matrices for interpolation points 0, +-1, +-2 (and +-1/2 for 5x5) and infinity,
// as glam_fast.winograd constructs them (Toom-Cook; every coefficient exact in float).
template <int Kernel>
struct Matrices;
template <>
struct Matrices<3> {
  static constexpr int kTile = 6;
  static constexpr float BT[6][6] = {{4, 0, -5, 0, 1, 0},  {0, -4, -4, 1, 1, 0}, {0, 4, -4, -1, 1, 0},
                                     {0, -2, -1, 2, 1, 0}, {0, 2, -1, -2, 1, 0}, {0, 4, 0, -5, 0, 1}};
  static constexpr float AT[4][6] = {{1, 1, 1, 1, 1, 0}, {0, 1, -1, 2, -2, 0}, {0, 1, 1, 4, 4, 0}, {0, 1, -1, 8, -8, 1}};
};
template <>
struct Matrices<5> {
  static constexpr int kTile = 8;
  static constexpr float BT[8][8] = {
      {-1, 0, 5.25f, 0, -5.25f, 0, 1, 0},         {0, 1, 1, -4.25f, -4.25f, 1, 1, 0},
      {0, -1, 1, 4.25f, -4.25f, -1, 1, 0},        {0, 0.5f, 0.25f, -2.5f, -1.25f, 2, 1, 0},
      {0, -0.5f, 0.25f, 2.5f, -1.25f, -2, 1, 0},  {0, 2, 4, -2.5f, -5, 0.5f, 1, 0},
      {0, -2, 4, 2.5f, -5, -0.5f, 1, 0},          {0, -1, 0, 5.25f, 0, -5.25f, 0, 1}};
  static constexpr float AT[4][8] = {
      {1, 1, 1, 1, 1, 1, 1, 0}, {0, 1, -1, 2, -2, 0.5f, -0.5f, 0}, {0, 1, 1, 4, 4, 0.25f, 0.25f, 0}, {0, 1, -1, 8, -8, 0.125f, -0.125f, 1}};
};

// out[i * step] = sum_k M[i][k] in[k]. Unrolled with constant indices, so the zero coefficients
// are skipped at compile time and the +-1 ones need no multiplication.
template <int Rows, int Cols>
GLAM_FAST_ALWAYS_INLINE void apply(const float (&M)[Rows][Cols], const Vec* in, Vec* out, int step) {
#pragma GCC unroll 8
  for (int i = 0; i < Rows; ++i) {
    Vec acc = {};
#pragma GCC unroll 8
    for (int k = 0; k < Cols; ++k) {
      if (M[i][k] == 1.f) {
        acc += in[k];
      } else if (M[i][k] == -1.f) {
        acc -= in[k];
      } else if (M[i][k] != 0.f) {
        acc += M[i][k] * in[k];
      }
    }
    out[i * step] = acc;
  }
}

// Where tile t of a (B, H, W) map lies: item b, tile row i, tile column j (outputs 4i.., 4j..).
struct TileIndex {
  int64_t b, i, j;
  TileIndex(int64_t t, int64_t height, int64_t width) {
    const int64_t tiles_h = (height + 3) / 4, tiles_w = (width + 3) / 4;
    b = t / (tiles_h * tiles_w), i = (t / tiles_w) % tiles_h, j = t % tiles_w;
  }
};

template <int Kernel>
GLAM_FAST_ALWAYS_INLINE void input_tiles(const WinogradInputArgs& a, int64_t first, int64_t last) {
  using M = Matrices<Kernel>;
  constexpr int A = M::kTile, pad = (Kernel - 1) / 2;
  const int64_t C = a.channels;
  const Vec zero = {};
  for (int64_t t = first; t < last; ++t) {
    const auto [b, i, j] = TileIndex(t, a.height, a.width);
    const float* rows[A];  // input row of each tile row, nullptr in the zero padding
    bool column_in[A];
    for (int r = 0; r < A; ++r) {
      const int64_t y = 4 * i - pad + r;
      rows[r] = (y >= 0 && y < a.height) ? a.x + (b * a.height + y) * a.width * C : nullptr;
    }
    for (int s = 0; s < A; ++s) column_in[s] = 4 * j - pad + s >= 0 && 4 * j - pad + s < a.width;
    for (int64_t c = 0; c < C; c += kWinogradChannelStep) {
      Vec u[A][A];  // u = B^T d (rows transformed), u[row][column]
      for (int s = 0; s < A; ++s) {
        Vec d[A];
        for (int r = 0; r < A; ++r) d[r] = (rows[r] && column_in[s]) ? load(rows[r] + (4 * j - pad + s) * C + c) : zero;
        apply(M::BT, d, &u[0][s], A);
      }
      for (int r = 0; r < A; ++r) {  // v = u B, position k = A r + s
        Vec v[A];
        apply(M::BT, u[r], v, 1);
        float* out = a.v + A * r * a.block_stride + t * C + c;
        for (int s = 0; s < A; ++s) store(out + s * a.block_stride, v[s]);
      }
    }
  }
}

template <int Kernel>
GLAM_FAST_ALWAYS_INLINE void output_tiles(const WinogradOutputArgs& a, int64_t first, int64_t last) {
  using M = Matrices<Kernel>;
  constexpr int A = M::kTile;
  const int64_t C = a.channels;
  const Vec zero = {};
  for (int64_t t = first; t < last; ++t) {
    const auto [b, i, j] = TileIndex(t, a.height, a.width);
    const int64_t rows_out = std::min<int64_t>(4, a.height - 4 * i), columns_out = std::min<int64_t>(4, a.width - 4 * j);
    for (int64_t c = 0; c < C; c += kWinogradChannelStep) {
      Vec p[A][4];  // p = m A, p[row][output column]
      for (int r = 0; r < A; ++r) {
        Vec m[A];
        for (int s = 0; s < A; ++s) m[s] = load(a.m[A * r + s] + t * C + c);
        apply(M::AT, m, p[r], 1);
      }
      const Vec bias = load(a.bias + c);
      for (int s = 0; s < columns_out; ++s) {
        Vec column[A], y[4];
        for (int r = 0; r < A; ++r) column[r] = p[r][s];
        apply(M::AT, column, y, 1);
        for (int r = 0; r < rows_out; ++r) {
          const Vec value = y[r] + bias;
          store(a.y + ((b * a.height + 4 * i + r) * a.width + 4 * j + s) * C + c, value > zero ? value : zero);
        }
      }
    }
  }
}

// One clone set per entry point (target_clones on templates is not portable across GCC versions).
GLAM_FAST_CPU_CLONES
void input_tiles_dispatch(const WinogradInputArgs& a, int64_t first, int64_t last) {
  if (a.kernel_size == 3) {
    input_tiles<3>(a, first, last);
  } else {
    input_tiles<5>(a, first, last);
  }
}

GLAM_FAST_CPU_CLONES
void output_tiles_dispatch(const WinogradOutputArgs& a, int64_t first, int64_t last) {
  if (a.kernel_size == 3) {
    output_tiles<3>(a, first, last);
  } else {
    output_tiles<5>(a, first, last);
  }
}

// PyTorch's OpenMP runtime, looked up through PyTorch's own CPU library (libtorch_cpu, already
// loaded): dlsym on its handle searches its dependencies, so GOMP_parallel is the one of the
// runtime PyTorch's parallel regions use (libgomp, or the GOMP entry points of another runtime),
// even when other libraries have loaded a second libgomp. The transforms then run as a parallel
// region of that team: the workers the PyTorch op before left spin-waiting take a share of the
// tiles instead of competing with threads of our own for the cores. Off Linux, or without
// libtorch_cpu, the transforms run on the calling thread.
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

template <typename Args, void (*Body)(const Args&, int64_t, int64_t)>
struct TileJob {
  const Args* args;
  int64_t tiles;
  int threads;
  static void run(void* self) {
    const TileJob& job = *static_cast<const TileJob*>(self);
    const int64_t i = openmp().thread_num();
    const int64_t per = (job.tiles + job.threads - 1) / job.threads;
    const int64_t first = std::min(job.tiles, i * per), last = std::min(job.tiles, first + per);
    if (first < last) Body(*job.args, first, last);
  }
};

template <typename Args, void (*Body)(const Args&, int64_t, int64_t)>
void over_tiles(const Args& a, int64_t tiles, int threads) {
  const OpenMP& omp = openmp();
  if (threads > 1 && tiles > 1 && omp.parallel) {
    TileJob<Args, Body> job{&a, tiles, static_cast<int>(std::min<int64_t>(threads, tiles))};
    omp.parallel(&TileJob<Args, Body>::run, &job, job.threads, 0);
  } else {
    Body(a, 0, tiles);
  }
}

}  // namespace

std::string winograd_openmp_runtime() { return openmp().path; }

void winograd_input_transform(const WinogradInputArgs& args) {
  over_tiles<WinogradInputArgs, input_tiles_dispatch>(args, winograd_tiles(args.batch, args.height, args.width), args.threads);
}

void winograd_output_transform(const WinogradOutputArgs& args) {
  over_tiles<WinogradOutputArgs, output_tiles_dispatch>(args, winograd_tiles(args.batch, args.height, args.width), args.threads);
}

}  // namespace glam_fast
