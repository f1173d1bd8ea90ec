// Kernel arguments shared by the two 5x5 convolution kernels (fp32 and tensor-core).
#pragma once

#include "common.cuh"

namespace glam_fast {

struct Conv5x5Params {
  const void* x;       // (batch, height, width, CIN)
  const void* weight;  // packed, see ops.h Conv5x5Args
  const float* bias;   // (COUT,)
  void* out;           // (batch, out_h, out_w, COUT)
  int batch, height, width, out_h, out_w;
  long long rows;  // GEMM rows: batch*height*width, or 4*batch*out_h*out_w with pooling
};

}  // namespace glam_fast
