// 5x5 convolution + bias + ReLU (+ 2x2 max-pool), NHWC: the kernel behind
// multiscale_block_inference (GLAM's multi-scale block folded into one C -> 2C convolution) and
// conv_bn_relu_inference (GLAM's conv5 + bn5 + ReLU). Launchers and host emulation.
#include <string>
#include <type_traits>
#include <vector>

#include "conv5x5_fp32.cuh"
#include "conv5x5_tensor_core.cuh"

namespace glam_fast {
namespace {

Conv5x5Params make_params(const Conv5x5Args& a) {
  Conv5x5Params p;
  p.x = a.x;
  p.weight = a.weight;
  p.bias = a.bias;
  p.out = a.out;
  p.batch = a.batch;
  p.height = a.height;
  p.width = a.width;
  p.out_h = a.pool ? a.height / 2 : a.height;
  p.out_w = a.pool ? a.width / 2 : a.width;
  p.rows = (long long)a.batch * p.out_h * p.out_w * (a.pool ? 4 : 1);
  return p;
}

template <class Tile> int grid_size(const Conv5x5Params& p) {
  return int((p.rows + Tile::kBlockM - 1) / Tile::kBlockM);
}

template <class Tile> std::string kernel_name(const char* kind, int cin, int cout, bool pool, const char* dtype) {
  return std::string("conv5x5_bias_relu_") + kind + "<cin=" + std::to_string(cin) + ",cout=" + std::to_string(cout) +
         (pool ? ",pool" : "") + "," + dtype + "> (" + std::to_string(Tile::kThreads) + " threads, " +
         std::to_string(Tile::kBlockM) + " rows/block, " + std::to_string(Tile::kSmemBytes) + " B shared)";
}

// ---- device launch --------------------------------------------------------------------------
template <int CIN, int COUT, bool POOL, class T>
void launch(const Conv5x5Params& p, cudaStream_t stream) {
  if constexpr (std::is_same_v<T, float>) {
    using Tile = Conv5x5Fp32Tile<CIN, COUT, POOL>;
    conv5x5_bias_relu_fp32_kernel<Tile><<<grid_size<Tile>(p), Tile::kThreads, Tile::kSmemBytes, stream>>>(p);
  } else {
    using Tile = Conv5x5TensorCoreTile<CIN, COUT, POOL, T>;
    conv5x5_bias_relu_tensor_core_kernel<Tile><<<grid_size<Tile>(p), Tile::kThreads, Tile::kSmemBytes, stream>>>(p);
  }
}

// ---- host emulation: the same per-thread steps, in program order ------------------------------
template <class Tile> void emulate_fp32(const Conv5x5Params& p) {
  std::vector<typename Tile::Thread> threads(Tile::kThreads);
  std::vector<float> smem(2 * Tile::kStageFloats);
  for (int block = 0, blocks = grid_size<Tile>(p); block < blocks; ++block) {
    for (int tid = 0; tid < Tile::kThreads; ++tid) {
      Tile::init(threads[tid], p, block, tid);
      Tile::fetch(threads[tid], p, 0, tid);
      Tile::stash(threads[tid], smem.data(), tid);
    }
    for (int kt = 0; kt < Tile::kKTiles; ++kt) {
      const bool more = kt + 1 < Tile::kKTiles;
      for (int tid = 0; tid < Tile::kThreads; ++tid) {
        if (more) Tile::fetch(threads[tid], p, kt + 1, tid);
        Tile::compute(threads[tid], smem.data() + (kt % 2) * Tile::kStageFloats, tid);
      }
      // Kernel order: every thread computes tile kt before anyone's stash of kt+1 is read; the
      // stash of kt+1 goes to the other buffer, so running it after all computes is equivalent.
      if (more) {
        for (int tid = 0; tid < Tile::kThreads; ++tid) {
          Tile::stash(threads[tid], smem.data() + ((kt + 1) % 2) * Tile::kStageFloats, tid);
        }
      }
    }
    for (int tid = 0; tid < Tile::kThreads; ++tid) Tile::epilogue(threads[tid], p, block, tid);
  }
}

template <class Tile> void emulate_tensor_core(const Conv5x5Params& p) {
  std::vector<typename Tile::Thread> threads(Tile::kThreads);
  std::vector<uint16_t> smem(Tile::kStages * Tile::kStageElems);
  for (int block = 0, blocks = grid_size<Tile>(p); block < blocks; ++block) {
    for (int tid = 0; tid < Tile::kThreads; ++tid) Tile::init(threads[tid], p, block, tid);
    for (int kt = 0; kt < Tile::kKTiles; ++kt) {
      uint16_t* stage = smem.data() + (kt % Tile::kStages) * Tile::kStageElems;
      for (int tid = 0; tid < Tile::kThreads; ++tid) Tile::load_stage(threads[tid], p, kt, stage, tid);
      for (int warp = 0; warp < Tile::kThreads / 32; ++warp) Tile::compute_stage_host(&threads[warp * 32], stage, warp);
    }
    for (int tid = 0; tid < Tile::kThreads; ++tid) Tile::epilogue(threads[tid], p, block, tid / 32, tid % 32);
  }
}

template <int CIN, int COUT, bool POOL, class T> void emulate(const Conv5x5Params& p) {
  if constexpr (std::is_same_v<T, float>) {
    emulate_fp32<Conv5x5Fp32Tile<CIN, COUT, POOL>>(p);
  } else {
    emulate_tensor_core<Conv5x5TensorCoreTile<CIN, COUT, POOL, T>>(p);
  }
}

// ---- the compiled variants ------------------------------------------------------------------
// Calls fn.template operator()<CIN, COUT, POOL, T>() for the variant `a` asks for. GLAM uses
// (16, 32, pool), (32, 64, pool), (64, 128, no pool) and (128, 128, no pool); the first three
// are compiled with and without pooling so the multi-scale block op takes either.
template <class T, class Fn> void with_channels(const Conv5x5Args& a, Fn&& fn) {
  if (a.cin == 16 && a.cout == 32) {
    a.pool ? fn.template operator()<16, 32, true, T>() : fn.template operator()<16, 32, false, T>();
  } else if (a.cin == 32 && a.cout == 64) {
    a.pool ? fn.template operator()<32, 64, true, T>() : fn.template operator()<32, 64, false, T>();
  } else if (a.cin == 64 && a.cout == 128) {
    a.pool ? fn.template operator()<64, 128, true, T>() : fn.template operator()<64, 128, false, T>();
  } else if (a.cin == 128 && a.cout == 128 && !a.pool) {
    fn.template operator()<128, 128, false, T>();
  } else {
    throw std::invalid_argument("glam_fast: no conv5x5_bias_relu kernel for cin=" + std::to_string(a.cin) +
                                ", cout=" + std::to_string(a.cout) + (a.pool ? " with pooling" : ""));
  }
}

template <class Fn> void with_variant(const Conv5x5Args& a, Fn&& fn) {
  switch (a.dtype) {
    case DType::kFloat32: return with_channels<float>(a, fn);
    case DType::kFloat16: return with_channels<__half>(a, fn);
    case DType::kBFloat16: return with_channels<__nv_bfloat16>(a, fn);
  }
}

struct Launch {
  const Conv5x5Params& p;
  cudaStream_t stream;
  template <int CIN, int COUT, bool POOL, class T> void operator()() const { launch<CIN, COUT, POOL, T>(p, stream); }
};

struct Emulate {
  const Conv5x5Params& p;
  template <int CIN, int COUT, bool POOL, class T> void operator()() const { emulate<CIN, COUT, POOL, T>(p); }
};

struct Describe {
  std::vector<std::string>& names;
  template <int CIN, int COUT, bool POOL, class T> void operator()() const {
    if constexpr (std::is_same_v<T, float>) {
      names.push_back(kernel_name<Conv5x5Fp32Tile<CIN, COUT, POOL>>("fp32", CIN, COUT, POOL, "fp32"));
    } else {
      names.push_back(kernel_name<Conv5x5TensorCoreTile<CIN, COUT, POOL, T>>("tensor_core", CIN, COUT, POOL,
                                                                             TypeName<T>::value));
    }
  }
};

}  // namespace

void conv5x5_bias_relu_cuda(const Conv5x5Args& args, int device, std::uintptr_t stream) {
  const Conv5x5Params p = make_params(args);
  if (p.rows == 0) return;
  DeviceGuard guard(device);
  with_variant(args, Launch{p, as_stream(stream)});
  check_launch("conv5x5_bias_relu");
}

void conv5x5_bias_relu_host(const Conv5x5Args& args) {
  const Conv5x5Params p = make_params(args);
  if (p.rows == 0) return;
  with_variant(args, Emulate{p});
}

void conv5x5_list_kernels(std::vector<std::string>& names) {
  const int pairs[][2] = {{16, 32}, {32, 64}, {64, 128}, {128, 128}};
  for (DType dtype : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
    for (const auto& pair : pairs) {
      for (bool pool : {true, false}) {
        if (pair[0] == 128 && pool) continue;
        Conv5x5Args a{};
        a.cin = pair[0];
        a.cout = pair[1];
        a.pool = pool;
        a.dtype = dtype;
        with_variant(a, Describe{names});
      }
    }
  }
}

}  // namespace glam_fast
