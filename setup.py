"""Build for glam_fast: the pure-Python package plus the optional C++/CUDA extension `glam_fast._C`.

The extension is configured by CMakeLists.txt (pybind11). It never needs a CUDA build of torch:
kernels receive raw device pointers and shapes. What gets compiled is steered by environment
variables:

  GLAM_FAST_CUDA        auto (default): compile the CUDA sources when nvcc is found;
                        1: require nvcc (fail if absent); 0: C++ only.
  GLAM_FAST_CUDA_ARCHS  CMake CUDA architectures, default "80;90".
  GLAM_FAST_BUILD_EXTENSION  0 skips the extension entirely (pure-Python install).
  GLAM_FAST_REQUIRE_EXTENSION  1 makes any extension build failure fatal (CI, release builds).

Without CMake or a C++ compiler the build prints one line and installs the pure-Python package.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def _say(message: str) -> None:
    print(f"glam_fast build: {message}", file=sys.stderr, flush=True)


def _find_nvcc() -> str | None:
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and (Path(home) / "bin" / "nvcc").is_file():
            return str(Path(home) / "bin" / "nvcc")
    return shutil.which("nvcc")


def _cuda_compiler() -> str | None:
    """The nvcc to use, or None for a C++-only build (with the one-line reason printed)."""
    mode = os.environ.get("GLAM_FAST_CUDA", "auto").strip().lower()
    if mode not in {"auto", "0", "1"}:
        raise SystemExit(f"GLAM_FAST_CUDA must be auto, 0 or 1, got {mode!r}")
    if mode == "0":
        _say("GLAM_FAST_CUDA=0: skipping the CUDA sources (C++ extension only)")
        return None
    nvcc = _find_nvcc()
    if nvcc is None:
        if mode == "1":
            raise SystemExit("GLAM_FAST_CUDA=1 but no nvcc was found (set CUDA_HOME or put nvcc on PATH)")
        _say("no nvcc found: skipping the CUDA sources (C++ extension only)")
    return nvcc


class CMakeExtension(Extension):
    def __init__(self, name: str, sourcedir: Path):
        super().__init__(name, sources=[])
        self.sourcedir = str(sourcedir)


class CMakeBuild(build_ext):
    """Builds CMakeExtensions; a failed optional build leaves a working pure-Python install."""

    def run(self) -> None:
        self._failed: set[str] = set()
        if os.environ.get("GLAM_FAST_BUILD_EXTENSION", "1") == "0":
            _say("GLAM_FAST_BUILD_EXTENSION=0: pure-Python install, no extension")
            self.extensions = []
        super().run()

    def build_extension(self, ext: Extension) -> None:
        if not isinstance(ext, CMakeExtension):
            return super().build_extension(ext)
        try:
            self._cmake_build(ext)
        except (OSError, ImportError, subprocess.CalledProcessError) as err:
            if os.environ.get("GLAM_FAST_REQUIRE_EXTENSION") == "1":
                raise
            self._failed.add(ext.name)
            _say(f"extension not built ({err}); installing the pure-Python package")

    def _cmake_build(self, ext: CMakeExtension) -> None:
        cmake = shutil.which("cmake")
        if cmake is None:
            raise OSError("cmake not found")
        import pybind11

        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_temp = Path(self.build_temp).resolve() / ext.name
        build_temp.mkdir(parents=True, exist_ok=True)
        nvcc = _cuda_compiler()
        args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            "-DCMAKE_BUILD_TYPE=Release",
            f"-DGLAM_FAST_VERSION={self.distribution.get_version()}",
            f"-DGLAM_FAST_WITH_CUDA={'ON' if nvcc else 'OFF'}",
        ]
        if nvcc:
            args += [
                f"-DCMAKE_CUDA_COMPILER={nvcc}",
                f"-DGLAM_FAST_CUDA_ARCHS={os.environ.get('GLAM_FAST_CUDA_ARCHS', '80;90')}",
            ]
        jobs = str(max(1, os.cpu_count() or 1))
        subprocess.run([cmake, "-S", ext.sourcedir, "-B", str(build_temp), *args], check=True)
        subprocess.run([cmake, "--build", str(build_temp), "--parallel", jobs], check=True)

    def copy_extensions_to_source(self) -> None:
        # Editable installs copy built modules into the source tree: leave out a failed optional one.
        all_ext = self.extensions
        self.extensions = [e for e in all_ext if e.name not in self._failed]
        try:
            super().copy_extensions_to_source()
        finally:
            self.extensions = all_ext

    def get_outputs(self) -> list[str]:
        failed = {self.get_ext_fullpath(name) for name in self._failed}
        return [p for p in super().get_outputs() if p not in failed]


setup(
    ext_modules=[CMakeExtension("glam_fast._C", ROOT)],
    cmdclass={"build_ext": CMakeBuild},
)
