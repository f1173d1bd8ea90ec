"""Per-kernel resource usage of the CUDA sources in csrc/, from ptxas (-Xptxas -v), without a GPU.

Compiles every csrc/*.cu that defines kernels for each architecture, the way the extension build
does (C++17, -O3, --expt-relaxed-constexpr), and tabulates per kernel: registers per thread,
stack frame, spill stores / loads (bytes), static shared memory and barriers. Dynamic shared
memory is chosen at launch; the extension's build_info()["kernels"] quotes it per kernel, and
this report appends that list when the extension is importable.

    python tools/cuda_resource_usage.py OUTPUT_DIR [--archs 80 90]

writes OUTPUT_DIR/cuda_resource_usage.txt (and prints it). Exits with status 1 if any kernel
spills registers or uses a stack frame.
"""

from __future__ import annotations

import argparse
import datetime
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
FLAGS = ["-std=c++17", "-O3", "--expt-relaxed-constexpr", "-Xptxas", "-v", f"-I{CSRC}"]


def _nvcc() -> str:
    nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    if not Path(nvcc).exists():
        sys.exit("nvcc not found (put it on PATH)")
    return nvcc


def _demangle(names: list[str]) -> list[str]:
    tool = shutil.which("c++filt")
    if tool is None:
        return names
    out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True, check=True).stdout.splitlines()
    return [re.sub(r"glam_fast::(\(anonymous namespace\)::)?", "", name) for name in out]


def _parse(ptxas_log: str, arch: int, source: str) -> list[dict]:
    rows, current = [], None
    for line in ptxas_log.splitlines():
        if m := re.search(r"Compiling entry function '(\S+)' for 'sm_(\d+)", line):
            current = {"source": source, "arch": arch, "mangled": m.group(1), "registers": 0, "stack": 0,
                       "spill_stores": 0, "spill_loads": 0, "static_smem": 0, "barriers": 0}  # fmt: skip
            rows.append(current)
        elif current is None:
            continue
        elif m := re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line):
            current["stack"], current["spill_stores"], current["spill_loads"] = map(int, m.groups())
        elif m := re.search(r"Used (\d+) registers", line):
            current["registers"] = int(m.group(1))
            if b := re.search(r"used (\d+) barriers", line):
                current["barriers"] = int(b.group(1))
            if s := re.search(r"(\d+) bytes smem", line):
                current["static_smem"] = int(s.group(1))
    return rows


def collect(archs: list[int]) -> tuple[list[dict], str]:
    nvcc = _nvcc()
    version = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    rows = []
    for source in sorted(CSRC.glob("*.cu")):
        text = source.read_text()
        if "__global__" not in text and '.cuh"' not in text:
            continue  # no kernels (runtime queries only)
        for arch in archs:
            cmd = [nvcc, *FLAGS, f"-arch=sm_{arch}", "-c", str(source), "-o", "/dev/null"]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr}")
            rows += _parse(proc.stderr, arch, source.name)
    for row, name in zip(rows, _demangle([r["mangled"] for r in rows])):
        row["kernel"] = name
    return rows, version


def _git_commit() -> str:
    proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return proc.stdout.strip() or "unknown"


def _launch_configs() -> list[str]:
    sys.path.insert(0, str(ROOT))
    try:
        import glam_fast
    except ImportError:
        return []
    return glam_fast.build_info().get("kernels", [])


def format_report(rows: list[dict], version: str, archs: list[int]) -> str:
    cmd = f"python tools/cuda_resource_usage.py OUTPUT_DIR --archs {' '.join(map(str, archs))}"
    lines = [
        "# ptxas resource usage of the CUDA kernels in csrc/ (no GPU needed to produce this)",
        f"# command: {cmd}",
        f"# nvcc: {version}; flags: {' '.join(FLAGS[:-1])} -arch=sm_XX",
        f"# commit: {_git_commit()}; date: {datetime.date.today().isoformat()}",
        "# columns: registers/thread, stack frame B, spill stores B, spill loads B, static shared B, barriers",
        "",
        f"{'sm':>3} {'regs':>4} {'stack':>5} {'spill st':>8} {'spill ld':>8} {'smem':>5} {'bar':>3}  kernel",
    ]
    for r in sorted(rows, key=lambda r: (r["arch"], r["source"], r["kernel"])):
        lines.append(
            f"{r['arch']:>3} {r['registers']:>4} {r['stack']:>5} {r['spill_stores']:>8} {r['spill_loads']:>8} "
            f"{r['static_smem']:>5} {r['barriers']:>3}  {r['kernel']}"
        )
    spilling = [r for r in rows if r["stack"] or r["spill_stores"] or r["spill_loads"]]
    lines += ["", f"kernels: {len(rows)}; with spills or a stack frame: {len(spilling)}"]
    configs = _launch_configs()
    if configs:
        lines += ["", "# launch configurations and dynamic shared memory (glam_fast.build_info()['kernels']):"]
        lines += [f"  {c}" for c in configs]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", type=Path, help="folder for cuda_resource_usage.txt")
    parser.add_argument("--archs", type=int, nargs="+", default=[80, 90], help="SM architectures (default: 80 90)")
    args = parser.parse_args(argv)
    rows, version = collect(args.archs)
    report = format_report(rows, version, args.archs)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "cuda_resource_usage.txt").write_text(report)
    print(report, end="")
    return 1 if any(r["stack"] or r["spill_stores"] or r["spill_loads"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
