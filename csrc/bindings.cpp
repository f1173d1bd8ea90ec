// pybind11 entry point of glam_fast._C. Every kernel binding checks its arguments here
// (device, dtype, contiguity, shapes) before any launch.
#include <pybind11/pybind11.h>

#include <string>

#include "build_config.h"
#include "runtime_info.h"

namespace py = pybind11;

namespace {

py::dict build_info() {
  py::dict info;
  info["version"] = GLAM_FAST_VERSION;
  info["cxx_compiler"] = GLAM_FAST_CXX_COMPILER;
  info["build_type"] = GLAM_FAST_BUILD_TYPE;
#ifdef GLAM_FAST_WITH_CUDA
  info["cuda"] = true;
  info["nvcc_version"] = GLAM_FAST_NVCC_VERSION;
  info["cuda_archs"] = GLAM_FAST_CUDA_ARCHS_STR;
  info["cuda_runtime_version"] = glam_fast::cuda_runtime_version();
#else
  info["cuda"] = false;
  info["nvcc_version"] = py::none();
  info["cuda_archs"] = py::none();
  info["cuda_runtime_version"] = py::none();
#endif
  return info;
}

// (number of usable CUDA devices, reason when there are none)
py::tuple cuda_device_count() {
#ifdef GLAM_FAST_WITH_CUDA
  const auto result = glam_fast::cuda_device_count();
  return py::make_tuple(result.count, result.error);
#else
  return py::make_tuple(0, std::string("extension built without CUDA"));
#endif
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "glam_fast native extension (C++ / CUDA kernels)";
  m.def("build_info", &build_info, "What was compiled: version, compiler, CUDA archs and nvcc version.");
  m.def("cuda_device_count", &cuda_device_count,
        "(count, error): CUDA devices visible to the extension's runtime, and why none if count == 0.");
}
