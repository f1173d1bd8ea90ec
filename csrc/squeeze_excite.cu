// MS-SENet squeeze-and-excitation front end, inference, both time directions per launch.
//
// Per direction d (d = 1 reads the input time-reversed: x_d[t] = x[T-1-t]) and sample b:
//   h[f, t, k*M + m] = relu(conv_k(x_d)[f, t, m] * bn_scale + bn_shift)   k: 11x1, 1x9, 3x3
//   s = sigmoid(W2 relu(W1 mean_{t, m'}(h) + b1) + b2)                   (F,)
//   c[t, m'] = relu(sum_f collapse_w[f] s[f] h[f, t, m'] + collapse_b)      (T, 3M)
//   out[d, b, :, t] = project_w @ [c[t, :], x_d[t, :]] + project_b          (F,)
// h (F x T x 3M per sample) is never stored: kernel A computes it to sum it per time tile (the
// squeeze), kernel B recomputes it with the per-sample scale folded into the collapse weights.
// Kernel B adds the tiles' partial sums in a fixed order, so the means are deterministic.
//
// Both kernels are sequences of __host__ __device__ block phases separated by barriers; the host
// emulation runs each phase for every thread before the next.
#include <string>
#include <vector>

#include "common.cuh"

namespace glam_fast {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kTile = kSqueezeExciteTimeTile;
constexpr int kMaxF = kSqueezeExciteMaxFilters;
constexpr int kTimeHalo = 5;  // the 11-tap time convolution reaches 5 frames each way
constexpr int kMfccHalo = 4;  // the 9-tap MFCC convolution reaches 4 coefficients each way
static_assert(kTile == 32, "the projection maps one warp's lanes to the tile's time steps");

struct SeParams {
  const void* mfcc;
  const float* params;
  float* partial_sums;
  void* out;
  int batch, time, mfcc_dim, filters, tiles;
};

// Shared-memory layout of one block (floats).
struct SeShared {
  int conv_w, x_tile, x_cols, scratch, mean, hidden, collapse_scale, collapsed, total_a, total_b;
  GF_HD explicit SeShared(const SeParams& p) {
    const SqueezeExciteLayout layout(p.filters, p.mfcc_dim);
    x_cols = p.mfcc_dim + 2 * kMfccHalo;
    conv_w = 0;
    x_tile = conv_w + layout.conv_count();
    scratch = x_tile + (kTile + 2 * kTimeHalo) * x_cols;
    total_a = scratch + kWarps * p.filters;  // kernel A: per-warp sums
    mean = scratch;                          // kernel B: squeeze, hidden layer, scale
    hidden = mean + p.filters;
    collapse_scale = hidden + p.filters;
    collapsed = collapse_scale + p.filters;
    total_b = collapsed + kTile * 3 * p.mfcc_dim;
  }
};

template <class T> GF_HD float read_mfcc(const SeParams& p, int direction, int b, int t, int m) {
  const int source_t = direction == 0 ? t : p.time - 1 - t;
  return to_float(static_cast<const T*>(p.mfcc)[((long long)b * p.time + source_t) * p.mfcc_dim + m]);
}

// Phase shared by both kernels: this direction's conv weights and the input tile (with halos,
// zeros outside the sequence) into shared memory.
template <class T>
GF_HD void stage_inputs(const SeParams& p, const SeShared& s, float* smem, int direction, int b, int tile, int tid) {
  const SqueezeExciteLayout layout(p.filters, p.mfcc_dim);
  const float* params = p.params + (long long)direction * layout.total;
  for (int i = tid; i < layout.conv_count(); i += kThreads) smem[s.conv_w + i] = params[i];
  const int rows = kTile + 2 * kTimeHalo;
  const int t0 = tile * kTile - kTimeHalo;
  for (int i = tid; i < rows * s.x_cols; i += kThreads) {
    const int t = t0 + i / s.x_cols, m = i % s.x_cols - kMfccHalo;
    const bool inside = t >= 0 && t < p.time && m >= 0 && m < p.mfcc_dim;
    smem[s.x_tile + i] = inside ? read_mfcc<T>(p, direction, b, t, m) : 0.f;
  }
}

// The input taps of branch K around tile position (tile_t, m): 11 along time, 9 along MFCC, or
// the 3x3 neighbourhood (row-major).
template <int K> struct Branch;
template <> struct Branch<0> {
  static constexpr int kTaps = 11;
  static GF_HD int weight_offset(const SqueezeExciteLayout& l) { return l.time_w; }
  static GF_HD int tap(int x_cols, int tile_t, int m, int j) { return (tile_t + j) * x_cols + m + kMfccHalo; }
};
template <> struct Branch<1> {
  static constexpr int kTaps = 9;
  static GF_HD int weight_offset(const SqueezeExciteLayout& l) { return l.freq_w; }
  static GF_HD int tap(int x_cols, int tile_t, int m, int j) { return (tile_t + kTimeHalo) * x_cols + m + j; }
};
template <> struct Branch<2> {
  static constexpr int kTaps = 9;
  static GF_HD int weight_offset(const SqueezeExciteLayout& l) { return l.square_w; }
  static GF_HD int tap(int x_cols, int tile_t, int m, int j) {
    return (tile_t + kTimeHalo - 1 + j / 3) * x_cols + m + kMfccHalo - 1 + j % 3;
  }
};

// h for filter f of branch K from the staged window: relu(bias + taps . weights), BN folded in.
template <int K>
GF_HD float branch_activation(const SqueezeExciteLayout& l, const float* conv_w, const float* window, int f) {
  const float* w = conv_w + Branch<K>::weight_offset(l) + f * Branch<K>::kTaps;
  float acc = conv_w[l.branch_bias + K * l.filters + f];
#pragma unroll
  for (int j = 0; j < Branch<K>::kTaps; ++j) acc = fmaf(w[j], window[j], acc);
  return relu(acc);
}

template <int K>
GF_HD void load_window(const SeParams& p, const SeShared& s, const float* smem, int tile_t, int m,
                       float (&window)[11]) {
#pragma unroll
  for (int j = 0; j < Branch<K>::kTaps; ++j) window[j] = smem[s.x_tile + Branch<K>::tap(s.x_cols, tile_t, m, j)];
}

// ---- kernel A: squeeze ----------------------------------------------------------------------
struct SqueezeThread {
  float sums[kMaxF];
};

template <int K>
GF_HD void accumulate_branch(SqueezeThread& th, const SeParams& p, const SeShared& s, const float* smem, int tile,
                             int tid) {
  const SqueezeExciteLayout l(p.filters, p.mfcc_dim);
  for (int pos = tid; pos < kTile * p.mfcc_dim; pos += kThreads) {
    const int tile_t = pos / p.mfcc_dim, m = pos % p.mfcc_dim;
    if (tile * kTile + tile_t >= p.time) break;  // positions grow with tile_t
    float window[11];
    load_window<K>(p, s, smem, tile_t, m, window);
#pragma unroll
    for (int f = 0; f < kMaxF; ++f) {
      if (f < p.filters) th.sums[f] += branch_activation<K>(l, smem + s.conv_w, window, f);
    }
  }
}

GF_HD void accumulate(SqueezeThread& th, const SeParams& p, const SeShared& s, const float* smem, int tile, int tid) {
#pragma unroll
  for (int f = 0; f < kMaxF; ++f) th.sums[f] = 0.f;
  accumulate_branch<0>(th, p, s, smem, tile, tid);
  accumulate_branch<1>(th, p, s, smem, tile, tid);
  accumulate_branch<2>(th, p, s, smem, tile, tid);
}

GF_HD long long partial_index(const SeParams& p, int direction, int b, int tile) {
  return (((long long)direction * p.batch + b) * p.tiles + tile) * p.filters;
}

template <class T> __global__ void __launch_bounds__(kThreads) squeeze_excite_squeeze_kernel(const SeParams p) {
  extern __shared__ __align__(16) float smem[];
  const SeShared s(p);
  const int direction = blockIdx.y, b = blockIdx.x / p.tiles, tile = blockIdx.x % p.tiles;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  stage_inputs<T>(p, s, smem, direction, b, tile, tid);
  __syncthreads();
  SqueezeThread th;
  accumulate(th, p, s, smem, tile, tid);
  // Fixed-order reduction: butterfly within each warp, then warps in index order.
#pragma unroll
  for (int f = 0; f < kMaxF; ++f) {
    if (f < p.filters) {
      float v = th.sums[f];
#pragma unroll
      for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
      if (lane == 0) smem[s.scratch + warp * p.filters + f] = v;
    }
  }
  __syncthreads();
  for (int f = tid; f < p.filters; f += kThreads) {
    float total = 0.f;
    for (int w = 0; w < kWarps; ++w) total += smem[s.scratch + w * p.filters + f];
    p.partial_sums[partial_index(p, direction, b, tile) + f] = total;
  }
}

// ---- kernel B: excite, collapse, project ----------------------------------------------------
GF_HD float sigmoid(float v) { return 1.f / (1.f + expf(-v)); }

// Phase 1 (after stage_inputs): the channel means of h from all tiles' partial sums.
GF_HD void excite_mean(const SeParams& p, const SeShared& s, float* smem, int direction, int b, int tid) {
  const float count = float(p.time) * float(3 * p.mfcc_dim);
  for (int f = tid; f < p.filters; f += kThreads) {
    float total = 0.f;
    for (int tile = 0; tile < p.tiles; ++tile) total += p.partial_sums[partial_index(p, direction, b, tile) + f];
    smem[s.mean + f] = total / count;
  }
}

// Phase 2: hidden = relu(W1 mean + b1).
GF_HD void excite_hidden(const SeParams& p, const SeShared& s, float* smem, int direction, int tid) {
  const SqueezeExciteLayout l(p.filters, p.mfcc_dim);
  const float* params = p.params + (long long)direction * l.total;
  for (int j = tid; j < p.filters; j += kThreads) {
    float acc = params[l.squeeze_b + j];
    for (int f = 0; f < p.filters; ++f) acc = fmaf(params[l.squeeze_w + j * p.filters + f], smem[s.mean + f], acc);
    smem[s.hidden + j] = relu(acc);
  }
}

// Phase 3: the per-sample scale folded into the collapse weights: collapse_w * sigmoid(W2 hidden + b2).
GF_HD void excite_scale(const SeParams& p, const SeShared& s, float* smem, int direction, int tid) {
  const SqueezeExciteLayout l(p.filters, p.mfcc_dim);
  const float* params = p.params + (long long)direction * l.total;
  for (int j = tid; j < p.filters; j += kThreads) {
    float acc = params[l.excite_b + j];
    for (int f = 0; f < p.filters; ++f) acc = fmaf(params[l.excite_w + j * p.filters + f], smem[s.hidden + f], acc);
    smem[s.collapse_scale + j] = params[l.collapse_w + j] * sigmoid(acc);
  }
}

// Phase 4: c[t, K*M + m] = relu(collapse_b + sum_f scale[f] h[f]) for the tile's positions.
template <int K>
GF_HD void collapse_branch(const SeParams& p, const SeShared& s, float* smem, int direction, int tid) {
  const SqueezeExciteLayout l(p.filters, p.mfcc_dim);
  const float bias = p.params[(long long)direction * l.total + l.collapse_b];
  for (int pos = tid; pos < kTile * p.mfcc_dim; pos += kThreads) {
    const int tile_t = pos / p.mfcc_dim, m = pos % p.mfcc_dim;
    float window[11];
    load_window<K>(p, s, smem, tile_t, m, window);
    float acc = bias;
    for (int f = 0; f < p.filters; ++f) {
      acc = fmaf(smem[s.collapse_scale + f], branch_activation<K>(l, smem + s.conv_w, window, f), acc);
    }
    smem[s.collapsed + tile_t * 3 * p.mfcc_dim + K * p.mfcc_dim + m] = relu(acc);
  }
}

GF_HD void collapse(const SeParams& p, const SeShared& s, float* smem, int direction, int tid) {
  collapse_branch<0>(p, s, smem, direction, tid);
  collapse_branch<1>(p, s, smem, direction, tid);
  collapse_branch<2>(p, s, smem, direction, tid);
}

// Phase 5: out[d, b, f, t] = project_b[f] + project_w[f] . [c[t, :], x_d[t, :]]. Lane = time
// step, so a warp reads one weight row (broadcast) and writes 32 consecutive outputs.
template <class T>
GF_HD void project(const SeParams& p, const SeShared& s, const float* smem, int direction, int b, int tile, int tid) {
  const SqueezeExciteLayout l(p.filters, p.mfcc_dim);
  const float* params = p.params + (long long)direction * l.total;
  const int tile_t = tid % 32, t = tile * kTile + tile_t;
  if (t >= p.time) return;
  const int features = 3 * p.mfcc_dim;
  const float* c = smem + s.collapsed + tile_t * features;
  const float* x = smem + s.x_tile + (tile_t + kTimeHalo) * s.x_cols + kMfccHalo;
  T* out = static_cast<T*>(p.out);
  for (int f = tid / 32; f < p.filters; f += kWarps) {
    const float* w = params + l.project_w + f * 4 * p.mfcc_dim;
    float acc = params[l.project_b + f];
    for (int j = 0; j < features; ++j) acc = fmaf(w[j], c[j], acc);
    for (int m = 0; m < p.mfcc_dim; ++m) acc = fmaf(w[features + m], x[m], acc);
    out[(((long long)direction * p.batch + b) * p.filters + f) * p.time + t] = from_float<T>(acc);
  }
}

template <class T> __global__ void __launch_bounds__(kThreads) squeeze_excite_excite_kernel(const SeParams p) {
  extern __shared__ __align__(16) float smem[];
  const SeShared s(p);
  const int direction = blockIdx.y, b = blockIdx.x / p.tiles, tile = blockIdx.x % p.tiles;
  const int tid = threadIdx.x;
  stage_inputs<T>(p, s, smem, direction, b, tile, tid);
  excite_mean(p, s, smem, direction, b, tid);
  __syncthreads();
  excite_hidden(p, s, smem, direction, tid);
  __syncthreads();
  excite_scale(p, s, smem, direction, tid);
  __syncthreads();
  collapse(p, s, smem, direction, tid);
  __syncthreads();
  project<T>(p, s, smem, direction, b, tile, tid);
}

SeParams make_params(const SqueezeExciteArgs& a) {
  return SeParams{a.mfcc, a.params, a.partial_sums, a.out, a.batch, a.time, a.n_mfcc, a.n_filters,
                  squeeze_excite_time_tiles(a.time)};
}

template <class Fn> void with_dtype(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::kFloat32: return fn(float{});
    case DType::kFloat16: return fn(__half{});
    case DType::kBFloat16: return fn(__nv_bfloat16{});
  }
}

// ---- host emulation -------------------------------------------------------------------------
template <class T> void emulate(const SeParams& p) {
  const SeShared s(p);
  std::vector<float> smem(s.total_b > s.total_a ? s.total_b : s.total_a);
  std::vector<SqueezeThread> threads(kThreads);
  for (int direction = 0; direction < 2; ++direction) {
    for (int b = 0; b < p.batch; ++b) {
      for (int tile = 0; tile < p.tiles; ++tile) {
        for (int tid = 0; tid < kThreads; ++tid) stage_inputs<T>(p, s, smem.data(), direction, b, tile, tid);
        for (int tid = 0; tid < kThreads; ++tid) accumulate(threads[tid], p, s, smem.data(), tile, tid);
        for (int f = 0; f < p.filters; ++f) {
          float total = 0.f;
          for (int tid = 0; tid < kThreads; ++tid) total += threads[tid].sums[f];
          p.partial_sums[partial_index(p, direction, b, tile) + f] = total;
        }
      }
    }
  }
  for (int direction = 0; direction < 2; ++direction) {
    for (int b = 0; b < p.batch; ++b) {
      for (int tile = 0; tile < p.tiles; ++tile) {
        float* sm = smem.data();
        for (int tid = 0; tid < kThreads; ++tid) {
          stage_inputs<T>(p, s, sm, direction, b, tile, tid);
          excite_mean(p, s, sm, direction, b, tid);
        }
        for (int tid = 0; tid < kThreads; ++tid) excite_hidden(p, s, sm, direction, tid);
        for (int tid = 0; tid < kThreads; ++tid) excite_scale(p, s, sm, direction, tid);
        for (int tid = 0; tid < kThreads; ++tid) collapse(p, s, sm, direction, tid);
        for (int tid = 0; tid < kThreads; ++tid) project<T>(p, s, sm, direction, b, tile, tid);
      }
    }
  }
}

}  // namespace

void squeeze_excite_cuda(const SqueezeExciteArgs& args, int device, std::uintptr_t stream) {
  const SeParams p = make_params(args);
  if (p.batch == 0 || p.time == 0) return;
  DeviceGuard guard(device);
  const SeShared s(p);
  const dim3 grid(unsigned(p.batch) * unsigned(p.tiles), 2);
  with_dtype(args.dtype, [&](auto tag) {
    using T = decltype(tag);
    squeeze_excite_squeeze_kernel<T><<<grid, kThreads, s.total_a * sizeof(float), as_stream(stream)>>>(p);
    check_launch("squeeze_excite_squeeze");
    squeeze_excite_excite_kernel<T><<<grid, kThreads, s.total_b * sizeof(float), as_stream(stream)>>>(p);
    check_launch("squeeze_excite_excite");
  });
}

void squeeze_excite_host(const SqueezeExciteArgs& args) {
  const SeParams p = make_params(args);
  if (p.batch == 0 || p.time == 0) return;
  with_dtype(args.dtype, [&](auto tag) { emulate<decltype(tag)>(p); });
}

void squeeze_excite_list_kernels(std::vector<std::string>& names) {
  // Shared memory depends on F and M; quoted at MS-SENet's F = M = 39.
  SeParams paper{};
  paper.filters = paper.mfcc_dim = 39;
  const SeShared s(paper);
  for (const char* dtype : {"fp32", "fp16", "bf16"}) {
    const std::string config = std::string("<") + dtype + "> (" + std::to_string(kThreads) + " threads, " +
                               std::to_string(kTile) + " time steps/block, both directions, ";
    names.push_back("squeeze_excite_squeeze" + config + std::to_string(s.total_a * 4) + " B shared at F=M=39)");
    names.push_back("squeeze_excite_excite" + config + std::to_string(s.total_b * 4) + " B shared at F=M=39)");
  }
}

}  // namespace glam_fast
