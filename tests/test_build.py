"""The native extension: built when a compiler is present, CUDA when nvcc is, never required."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import glam_fast

ROOT = Path(__file__).resolve().parents[1]


def test_extension_is_built_with_cuda_when_nvcc_is_present():
    info = glam_fast.build_info()
    if os.environ.get("GLAM_FAST_BUILD_EXTENSION") == "0":
        pytest.skip("installed with GLAM_FAST_BUILD_EXTENSION=0")
    assert info["built"], info["reason"]
    assert info["version"] == glam_fast.__version__
    if shutil.which("nvcc") and os.environ.get("GLAM_FAST_CUDA", "auto") != "0":
        assert info["cuda"], "nvcc is on PATH but the extension was built without CUDA"
        # The default build targets sm_80 and sm_90; GLAM_FAST_CUDA_ARCHS (as the build read it) overrides.
        wanted = set(os.environ.get("GLAM_FAST_CUDA_ARCHS", "80;90").replace(",", ";").split(";"))
        assert set(info["cuda_archs"].split(",")) >= wanted
        assert info["nvcc_version"]


def test_build_info_lists_the_compiled_kernels():
    info = glam_fast.build_info()
    if not info.get("cuda"):
        pytest.skip("extension built without its CUDA sources")
    kernels = info["kernels"]
    for dtype in ("fp32", "fp16", "bf16"):
        for name in ("glam_stem", "squeeze_excite_squeeze", "squeeze_excite_excite"):
            assert any(k.startswith(f"{name}<{dtype}>") for k in kernels), (name, dtype)
    tensor_core = [k for k in kernels if k.startswith("conv5x5_bias_relu_tensor_core<")]
    fp32 = [k for k in kernels if k.startswith("conv5x5_bias_relu_fp32<")]
    # (16, 32), (32, 64), (64, 128) with and without pooling, (128, 128) without: 7 per dtype.
    assert len(fp32) == 7 and len(tensor_core) == 14
    assert any("cin=16,cout=32,pool,bf16" in k for k in tensor_core)


def _cuobjdump() -> str | None:
    try:
        import triton
    except ImportError:
        return shutil.which("cuobjdump")
    bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    return str(bundled) if bundled.is_file() else shutil.which("cuobjdump")


def test_compiled_kernels_do_not_spill():
    """Every kernel in the built module, for each architecture: registers only, no local memory."""
    from glam_fast import _extension

    module, reason = _extension.load()
    if module is None or not glam_fast.build_info()["cuda"]:
        pytest.skip(reason or "extension built without its CUDA sources")
    tool = _cuobjdump()
    if tool is None:
        pytest.skip("cuobjdump not found")
    dump = subprocess.run([tool, "-res-usage", module.__file__], capture_output=True, text=True, check=True).stdout
    usage: dict[str, list[tuple[str, dict[str, int]]]] = {}
    arch = None
    for line in dump.splitlines():
        if m := re.match(r"arch = (sm_\d+)", line.strip()):
            arch = m.group(1)
        elif m := re.match(r"\s*Function (\S+):", line):
            function = m.group(1)
        elif "REG:" in line:
            usage.setdefault(arch, []).append((function, {k: int(v) for k, v in re.findall(r"(\w+):(\d+)", line)}))
    expected_archs = {f"sm_{a}" for a in glam_fast.build_info()["cuda_archs"].split(",")}
    assert expected_archs <= set(usage)
    for arch_name in expected_archs:
        kernels = [(f, u) for f, u in usage[arch_name] if "glam_fast" in f]
        assert len(kernels) >= len(glam_fast.build_info()["kernels"])
        spilling = [f for f, u in kernels if u["LOCAL"] or u["STACK"]]
        assert not spilling, f"{arch_name}: kernels with local memory / stack: {spilling}"


def test_extension_reports_devices_without_crashing():
    from glam_fast import _extension

    module, reason = _extension.load()
    if module is None:
        pytest.skip(reason)
    count, why = module.cuda_device_count()
    assert count >= 0
    assert count > 0 or why


def _build(tmp_path: Path, env: dict) -> subprocess.CompletedProcess:
    """`setup.py build_ext` of this checkout into tmp_path, with a private build directory."""
    return subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "--build-lib", str(tmp_path / "lib"), "--build-temp", str(tmp_path / "tmp")],
        cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


@pytest.mark.slow
def test_cpu_only_build_with_cuda_disabled(tmp_path):
    proc = _build(tmp_path, {"GLAM_FAST_CUDA": "0", "GLAM_FAST_REQUIRE_EXTENSION": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "GLAM_FAST_CUDA=0: skipping the CUDA sources" in proc.stderr
    built = list((tmp_path / "lib" / "glam_fast").glob("_C*.so"))
    assert len(built) == 1
    probe = "import importlib.util, sys; spec = importlib.util.spec_from_file_location('_C', sys.argv[1]); m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); print(m.build_info()['cuda'], m.cuda_device_count(), m.build_info()['kernels'], hasattr(m, 'conv5x5_bias_relu'))"
    out = subprocess.run([sys.executable, "-c", probe, str(built[0])], capture_output=True, text=True, check=True).stdout
    assert out.startswith("False (0, 'extension built without CUDA') [] False")


def test_cuda_archs_older_than_sm80_are_refused(tmp_path):
    cmake = shutil.which("cmake")
    pybind11 = pytest.importorskip("pybind11")
    if cmake is None:
        pytest.skip("cmake not found")
    proc = subprocess.run(
        [cmake, "-S", str(ROOT), "-B", str(tmp_path), f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
         f"-DPython_EXECUTABLE={sys.executable}", "-DGLAM_FAST_WITH_CUDA=ON", "-DGLAM_FAST_CUDA_ARCHS=75;90"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "GLAM_FAST_CUDA_ARCHS entries must be 80 or newer" in proc.stderr and "'75'" in proc.stderr


def test_build_without_cmake_falls_back_to_pure_python(tmp_path):
    bare_path = tmp_path / "bin"
    bare_path.mkdir()
    proc = _build(tmp_path, {"PATH": str(bare_path), "GLAM_FAST_REQUIRE_EXTENSION": "0"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "cmake not found" in proc.stderr and "pure-Python" in proc.stderr
    assert not list((tmp_path / "lib").rglob("_C*.so"))
