"""`glam_fast.info()` and the `glam-fast info` command."""

import json
import subprocess
import sys

import torch

import glam_fast


def test_info_report():
    report = glam_fast.info()
    assert report["glam_fast"] == glam_fast.__version__
    assert report["torch"] == torch.__version__
    assert report["devices"][0]["device"] == "cpu"
    assert set(report["backends"]["cpu"]) == {"torch", "triton", "cuda"}
    assert report["backends"]["cpu"]["torch"] == ""
    assert "built" in report["extension"]
    assert report["cpu_inference_onednn"] is torch.backends.mkldnn.is_available()
    assert report["cpu_inference_winograd"] is (report["cpu_inference_onednn"] and report["extension"]["built"])
    assert report["cpu_inference_native"] is report["extension"]["built"]
    assert isinstance(report["cpu_inference_openmp"], str)
    assert not report["cpu_inference_openmp"] or report["extension"]["built"]


def test_cli_info_human_and_json():
    out = subprocess.run([sys.executable, "-m", "glam_fast", "info"], capture_output=True, text=True, check=True).stdout
    assert out.startswith(f"glam_fast {glam_fast.__version__}")
    assert "backends on cpu:" in out and "torch: available" in out
    assert "CPU inference forms: " in out
    report = json.loads(subprocess.run([sys.executable, "-m", "glam_fast", "info", "--json"], capture_output=True, text=True, check=True).stdout)
    assert report["glam_fast"] == glam_fast.__version__


def test_cli_unknown_command_fails_cleanly():
    proc = subprocess.run([sys.executable, "-m", "glam_fast", "frobnicate"], check=False, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr
