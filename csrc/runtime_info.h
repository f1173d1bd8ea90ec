// Queries of the CUDA runtime that glam_fast._C was linked against (static cudart).
#pragma once

#include "build_config.h"

#include <string>

namespace glam_fast {

struct CudaDeviceCount {
  int count;
  std::string error;  // empty when the query succeeded
};

#ifdef GLAM_FAST_WITH_CUDA
CudaDeviceCount cuda_device_count();
int cuda_runtime_version();  // e.g. 13000 for CUDA 13.0
int cuda_driver_version();   // 0 when no driver is installed
#endif

}  // namespace glam_fast
