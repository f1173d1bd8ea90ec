"""What this installation can do: versions, devices, backends and why any is missing."""

from __future__ import annotations

import platform

import torch

from glam_fast import _extension, dispatch, gmlp_head_cpu, onednn, winograd
from glam_fast._version import __version__


def _triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


def _devices() -> list[dict]:
    devices = [{"device": "cpu", "name": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            devices.append(
                {
                    "device": f"cuda:{i}",
                    "name": props.name,
                    "capability": f"{props.major}.{props.minor}",
                    "memory_gib": round(props.total_memory / 2**30, 1),
                }
            )
    return devices


def info() -> dict:
    """Versions, devices, the native extension's build, and each backend's status per device.

    ``backends[device][name]`` is '' when backend ``name`` can run on that device type, else the
    reason it cannot; ``ops[name]`` lists the ops a fused backend implements;
    ``cpu_inference_onednn`` tells whether the CPU inference forms (``glam_fast.inference``) run
    their convolutions as fused oneDNN calls here, ``cpu_inference_winograd`` whether GLAM's and
    AFCN's 5x5 and 3x3 layers can run as Winograd convolutions (oneDNN and the native extension),
    ``cpu_inference_native`` whether GLAM's stem, pooled concatenations and gMLP head run as
    native calls, and ``cpu_inference_openmp`` the OpenMP runtime whose threads the native CPU
    kernels share ('' when they run on one thread).
    """
    device_types = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    cpu_onednn = onednn.available(torch.device("cpu"), torch.float32)
    return {
        "glam_fast": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": _triton_version(),
        "requested_backend": dispatch.requested_backend(),
        "devices": _devices(),
        "extension": _extension.build_info(),
        "backends": {dev: dispatch.backend_status(dev) for dev in device_types},
        "ops": {name: dispatch.registered_ops(name) for name in ("triton", "cuda")},
        "cpu_inference_onednn": cpu_onednn,
        "cpu_inference_winograd": cpu_onednn and winograd.native_available(),
        "cpu_inference_native": gmlp_head_cpu.native_available(),
        "cpu_inference_openmp": winograd.openmp_runtime(),
    }


def format_info(report: dict) -> str:
    """Human-readable form of :func:`info`."""
    lines = [
        (
            f"glam_fast {report['glam_fast']}  (python {report['python']}, torch {report['torch']}"
            f"{', CUDA ' + report['torch_cuda'] if report['torch_cuda'] else ', CPU build'}, "
            f"triton {report['triton'] or 'not installed'})"
        ),
        f"requested backend: {report['requested_backend']}",
        "devices:",
    ]
    for dev in report["devices"]:
        extra = ", ".join(f"{k} {v}" for k, v in dev.items() if k not in ("device", "name"))
        lines.append(f"  {dev['device']}: {dev['name']} ({extra})")
    ext = report["extension"]
    if ext["built"]:
        cuda = f"CUDA for sm {ext['cuda_archs']} with nvcc {ext['nvcc_version']}" if ext["cuda"] else "no CUDA kernels"
        lines.append(f"native extension: built ({ext['cxx_compiler']}, {cuda})")
    else:
        lines.append(f"native extension: not available: {ext['reason']}")
    for dev, statuses in report["backends"].items():
        lines.append(f"backends on {dev}:")
        for name, reason in statuses.items():
            if reason:
                lines.append(f"  {name}: unavailable: {reason}")
            else:
                ops = report["ops"].get(name)
                detail = "" if ops is None else f" (ops: {', '.join(ops) if ops else 'none yet'})"
                lines.append(f"  {name}: available{detail}")
    if report["cpu_inference_onednn"]:
        notes = ""
        threads = "PyTorch's OpenMP threads" if report.get("cpu_inference_openmp") else "one thread"
        if report.get("cpu_inference_winograd"):
            notes += "; GLAM's and AFCN's 5x5 and 3x3 layers as Winograd F(4x4, 5x5) / F(4x4, 3x3)"
        if report.get("cpu_inference_native"):
            notes += "; GLAM's stem, pooling and gMLP head as native calls"
        if notes:
            notes += f" (native kernels on {threads})"
        lines.append(f"CPU inference forms: fused oneDNN calls with packed weights{notes}")
    else:
        lines.append("CPU inference forms: plain PyTorch ops (this PyTorch build has no oneDNN)")
    return "\n".join(lines)
