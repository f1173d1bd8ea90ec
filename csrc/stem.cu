// GLAM stem, inference: relu(bn1a(conv1a(x))) and relu(bn1b(conv1b(x))) stacked along height,
// written channels-last for the first multi-scale block: (B, 1, H, W) -> (B, 2H, W, 16).
// One thread per output pixel computes its 16 channels (3 taps each, BN folded into the taps)
// and stores them as 16-byte vectors. Memory-bound: one read of the input, one write of the
// output, instead of the reference's conv / BN / ReLU / cat passes and a layout change.
#include <string>
#include <type_traits>
#include <vector>

#include "common.cuh"

namespace glam_fast {
namespace {

constexpr int kStemThreads = 256;

struct StemParams {
  const void* x;
  const float* params;  // wa (16, 3), ba (16), wb (16, 3), bb (16)
  void* out;
  int batch, height, width;
  long long pixels;  // batch * 2*height * width
};

template <class T> GF_HD float stem_input(const StemParams& p, int b, int h, int w) {
  if (h < 0 || h >= p.height || w < 0 || w >= p.width) return 0.f;
  return to_float(static_cast<const T*>(p.x)[((long long)b * p.height + h) * p.width + w]);
}

// Output pixel `index` of (B, 2H, W): rows < H come from conv1a (3 taps down the column), rows
// >= H from conv1b (3 taps along row - H).
template <class T> GF_HD void stem_pixel(const StemParams& p, long long index) {
  const int w = int(index % p.width);
  const int h2 = int((index / p.width) % (2 * p.height));
  const int b = int(index / ((long long)p.width * 2 * p.height));
  const bool vertical = h2 < p.height;
  const int h = vertical ? h2 : h2 - p.height;
  float taps[3];
  for (int j = 0; j < 3; ++j) {
    taps[j] = vertical ? stem_input<T>(p, b, h + j - 1, w) : stem_input<T>(p, b, h, w + j - 1);
  }
  const float* weight = p.params + (vertical ? 0 : 4 * kStemChannels);
  const float* bias = weight + 3 * kStemChannels;
  float v[kStemChannels];
#pragma unroll
  for (int c = 0; c < kStemChannels; ++c) {
    v[c] = relu(bias[c] + weight[3 * c] * taps[0] + weight[3 * c + 1] * taps[1] + weight[3 * c + 2] * taps[2]);
  }
  T* out = static_cast<T*>(p.out) + index * kStemChannels;
  if constexpr (std::is_same_v<T, float>) {
#pragma unroll
    for (int c = 0; c < kStemChannels; c += 4) store_float4(out + c, make_float4(v[c], v[c + 1], v[c + 2], v[c + 3]));
  } else {
#pragma unroll
    for (int c = 0; c < kStemChannels; c += 8) {
      uint4 packed;
      packed.x = pack_pair<T>(v[c], v[c + 1]);
      packed.y = pack_pair<T>(v[c + 2], v[c + 3]);
      packed.z = pack_pair<T>(v[c + 4], v[c + 5]);
      packed.w = pack_pair<T>(v[c + 6], v[c + 7]);
#ifdef __CUDA_ARCH__
      *reinterpret_cast<uint4*>(out + c) = packed;
#else
      std::memcpy(out + c, &packed, sizeof(packed));
#endif
    }
  }
}

template <class T> __global__ void __launch_bounds__(kStemThreads) glam_stem_kernel(const StemParams p) {
  const long long index = (long long)blockIdx.x * kStemThreads + threadIdx.x;
  if (index < p.pixels) stem_pixel<T>(p, index);
}

StemParams make_params(const StemArgs& a) {
  return StemParams{a.x, a.params, a.out, a.batch, a.height, a.width, (long long)a.batch * 2 * a.height * a.width};
}

template <class Fn> void with_dtype(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::kFloat32: return fn(float{});
    case DType::kFloat16: return fn(__half{});
    case DType::kBFloat16: return fn(__nv_bfloat16{});
  }
}

}  // namespace

void stem_cuda(const StemArgs& args, int device, std::uintptr_t stream) {
  const StemParams p = make_params(args);
  if (p.pixels == 0) return;
  DeviceGuard guard(device);
  const int blocks = int((p.pixels + kStemThreads - 1) / kStemThreads);
  with_dtype(args.dtype, [&](auto tag) {
    using T = decltype(tag);
    glam_stem_kernel<T><<<blocks, kStemThreads, 0, as_stream(stream)>>>(p);
  });
  check_launch("glam_stem");
}

void stem_host(const StemArgs& args) {
  const StemParams p = make_params(args);
  with_dtype(args.dtype, [&](auto tag) {
    using T = decltype(tag);
    for (long long index = 0; index < p.pixels; ++index) stem_pixel<T>(p, index);
  });
}

void stem_list_kernels(std::vector<std::string>& names) {
  for (const char* dtype : {"fp32", "fp16", "bf16"}) {
    names.push_back(std::string("glam_stem<") + dtype + "> (" + std::to_string(kStemThreads) + " threads, 1 pixel x 16 channels/thread)");
  }
}

}  // namespace glam_fast
