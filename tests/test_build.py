"""The native extension: built when a compiler is present, CUDA when nvcc is, never required."""

import os
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
        assert set(info["cuda_archs"].split(",")) >= {"80", "90"}
        assert info["nvcc_version"]


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
    probe = "import importlib.util, sys; spec = importlib.util.spec_from_file_location('_C', sys.argv[1]); m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); print(m.build_info()['cuda'], m.cuda_device_count())"
    out = subprocess.run([sys.executable, "-c", probe, str(built[0])], capture_output=True, text=True, check=True).stdout
    assert out.startswith("False (0, 'extension built without CUDA')")


def test_build_without_cmake_falls_back_to_pure_python(tmp_path):
    bare_path = tmp_path / "bin"
    bare_path.mkdir()
    proc = _build(tmp_path, {"PATH": str(bare_path), "GLAM_FAST_REQUIRE_EXTENSION": "0"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "cmake not found" in proc.stderr and "pure-Python" in proc.stderr
    assert not list((tmp_path / "lib").rglob("_C*.so"))
