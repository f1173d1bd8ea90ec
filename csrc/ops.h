// The CUDA inference ops of glam_fast._C, as seen from bindings.cpp: plain C++ (no CUDA headers),
// so the binding file compiles with the host compiler alone. Every op has a launcher (device
// pointers, runs on the given stream) and a host emulation (host pointers: the same per-thread
// code run by loops over blocks and threads, a test vehicle for the indexing and the math).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#if defined(__CUDACC__)
#define GLAM_FAST_HD __host__ __device__
#else
#define GLAM_FAST_HD
#endif

namespace glam_fast {

enum class DType { kFloat32, kFloat16, kBFloat16 };

// ---- 5x5 'same' convolution + per-channel bias + ReLU (+ 2x2 max-pool, floor), NHWC ----------
// Serves multiscale_block_inference (BN, the 3x3 branch and the identity folded into one
// C -> 2C 5x5 convolution) and conv_bn_relu_inference (BN folded into GLAM's conv5).

// (cin, cout) pairs with a compiled kernel.
inline bool conv5x5_supported(int cin, int cout) {
  return (cin == 16 && cout == 32) || (cin == 32 && cout == 64) || (cin == 64 && cout == 128) ||
         (cin == 128 && cout == 128);
}
inline const char* conv5x5_supported_text() { return "(16, 32), (32, 64), (64, 128), (128, 128)"; }

// Rows of the packed fp16/bf16 weight: K = 25 * cin (tap-major, channel-minor) padded to the
// tensor-core kernel's K tile of 32 with zero weights.
constexpr int kConv5x5TensorCoreKTile = 32;
inline int conv5x5_padded_k(int cin) {
  return (25 * cin + kConv5x5TensorCoreKTile - 1) / kConv5x5TensorCoreKTile * kConv5x5TensorCoreKTile;
}

struct Conv5x5Args {
  const void* x;       // (batch, height, width, cin), dtype
  const void* weight;  // fp32: (25*cin, cout) k-major; fp16/bf16: (cout, conv5x5_padded_k(cin))
  const float* bias;   // (cout,) fp32
  void* out;           // (batch, out_h, out_w, cout), dtype; out_h, out_w = height/2, width/2 with pool
  int batch, height, width, cin, cout;
  bool pool;
  DType dtype;
};

void conv5x5_bias_relu_cuda(const Conv5x5Args& args, int device, std::uintptr_t stream);
void conv5x5_bias_relu_host(const Conv5x5Args& args);
void conv5x5_list_kernels(std::vector<std::string>& names);

// ---- GLAM stem: conv1a (3x1) and conv1b (1x3), 1 -> 16 channels, BN folded, ReLU, the two
// results stacked along height: (B, 1, H, W) -> (B, 2H, W, 16) NHWC ---------------------------
constexpr int kStemChannels = 16;
// Packed fp32 parameters: wa (16, 3), ba (16), wb (16, 3), bb (16).
constexpr int kStemParamCount = 2 * (3 * kStemChannels + kStemChannels);

struct StemArgs {
  const void* x;        // (batch, height, width), dtype
  const float* params;  // (kStemParamCount,) fp32
  void* out;            // (batch, 2*height, width, 16), dtype
  int batch, height, width;
  DType dtype;
};

void stem_cuda(const StemArgs& args, int device, std::uintptr_t stream);
void stem_host(const StemArgs& args);
void stem_list_kernels(std::vector<std::string>& names);

// ---- MS-SENet squeeze-and-excitation front end, both time directions ------------------------
// Kernel A: the three convolutions (11x1, 1x9, 3x3; F filters) + folded BN + ReLU, summed per
// filter over each time tile (the squeeze, deterministic: no atomics). Kernel B: excitation,
// the per-sample scale folded into the 1x1 collapse, ReLU, the raw-MFCC skip and the 1x1
// projection 4M -> F. Direction 1 reads the input time-reversed (by indexing).
constexpr int kSqueezeExciteTimeTile = 32;
constexpr int kSqueezeExciteMaxFilters = 64;
constexpr int kSqueezeExciteMaxMfcc = 64;

// Offsets (in floats) of each piece of one direction's packed fp32 parameters.
struct SqueezeExciteLayout {
  int filters, mfcc;
  int time_w, freq_w, square_w, branch_bias;  // (F, 11), (F, 9), (F, 3*3), (3, F): BN folded in
  int squeeze_w, squeeze_b, excite_w, excite_b;  // (F, F), (F), (F, F), (F)
  int collapse_w, collapse_b;                 // (F), (1)
  int project_w, project_b;                   // (F, 4M), (F)
  int total;

  GLAM_FAST_HD SqueezeExciteLayout(int n_filters, int n_mfcc) : filters(n_filters), mfcc(n_mfcc) {
    const int f = n_filters;
    time_w = 0;
    freq_w = time_w + 11 * f;
    square_w = freq_w + 9 * f;
    branch_bias = square_w + 9 * f;
    squeeze_w = branch_bias + 3 * f;
    squeeze_b = squeeze_w + f * f;
    excite_w = squeeze_b + f;
    excite_b = excite_w + f * f;
    collapse_w = excite_b + f;
    collapse_b = collapse_w + f;
    project_w = collapse_b + 1;
    project_b = project_w + 4 * n_mfcc * f;
    total = project_b + f;
  }
  // The convolution part (time_w .. branch_bias) that both kernels stage in shared memory.
  GLAM_FAST_HD int conv_count() const { return squeeze_w; }
};

inline int squeeze_excite_time_tiles(int time) {
  return (time + kSqueezeExciteTimeTile - 1) / kSqueezeExciteTimeTile;
}

struct SqueezeExciteArgs {
  const void* mfcc;     // (batch, time, n_mfcc), dtype
  const float* params;  // (2, SqueezeExciteLayout(F, M).total) fp32: forward, then reversed direction
  float* partial_sums;  // (2, batch, time_tiles, F) fp32 workspace written by kernel A
  void* out;            // (2, batch, F, time), dtype; out[1] is in reversed time order
  int batch, time, n_mfcc, n_filters;
  DType dtype;
};

void squeeze_excite_cuda(const SqueezeExciteArgs& args, int device, std::uintptr_t stream);
void squeeze_excite_host(const SqueezeExciteArgs& args);
void squeeze_excite_list_kernels(std::vector<std::string>& names);

}  // namespace glam_fast
