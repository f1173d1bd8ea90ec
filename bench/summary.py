"""The short table printed at the end of bench/gpu_check.sh: stages, tests, and per model the best
glam_fast variant against the best peer at batch 1024 (the largest batch measured when 1024 was not).

    python -m bench.summary --stages STAGES.tsv --junit junit.xml --results DIR_OR_FILE ...
"""

from __future__ import annotations

import argparse
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from bench.environment import SCHEMA

SUMMARY_BATCH = 1024


def stage_lines(path: Path) -> list[str]:
    """STAGES.tsv rows: name, exit code, seconds (124: stopped by its time limit)."""
    lines = [f"{'stage':<10} {'result':<22} {'seconds':>7}"]
    for row in path.read_text().splitlines():
        name, rc, seconds = (row.split("\t") + ["", ""])[:3]
        result = "ok" if rc == "0" else "TIMED OUT" if rc in ("124", "137") else f"FAILED (exit {rc})"
        lines.append(f"{name:<10} {result:<22} {seconds:>7}")
    return lines


def test_counts(path: Path) -> str:
    """'N passed, N failed, N errors, N skipped' from a JUnit XML file written by pytest."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    total = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    passed = total["tests"] - total["failures"] - total["errors"] - total["skipped"]
    return f"tests: {passed} passed, {total['failures']} failed, {total['errors']} errors, {total['skipped']} skipped"


def failed_tests(path: Path, limit: int = 60) -> list[str]:
    """Ids (file::name) of the failed and errored tests in a JUnit XML file, at most ``limit``."""
    names = []
    for case in ET.parse(path).getroot().iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            names.append(f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}")
    return names[:limit] + ([f"... and {len(names) - limit} more"] if len(names) > limit else [])


def scoring_line(info: dict) -> str:
    """One scoring benchmark case: files/s and its last round's time split."""
    split = info.get("time_split_per_round", [{}])[-1]
    parts = ", ".join(f"{k} {split[k]:.1f} s" for k in ("decode", "decode_wait", "features", "model") if k in split)
    return f"scoring {info.get('variant', '?')}: {info['files_per_s']:,.1f} files/s ({parts})"


def comparison_lines(results: list[dict]) -> list[str]:
    lines = [f"{'model':<9} {'mode':<10} {'batch':>5}  {'best glam_fast':<34} {'best peer':<40} {'ratio':>6}"]
    for result in results:
        ms = [m for m in result["measurements"] if m["status"] == "ok"]
        for model in result.get("models", {}):
            for mode in ("inference", "train"):
                cell = [m for m in ms if m["model"] == model and m["mode"] == mode]
                if not cell:
                    continue
                batches = {m["batch"] for m in cell}
                batch = SUMMARY_BATCH if SUMMARY_BATCH in batches else max(batches)
                at = [m for m in cell if m["batch"] == batch]
                fused = max((m for m in at if not m["peer"]), key=lambda m: m["items_per_s"], default=None)
                peer = max((m for m in at if m["peer"]), key=lambda m: m["items_per_s"], default=None)
                fused_txt = f"{fused['variant']} {fused['dtype']} {fused['items_per_s']:,.0f}/s" if fused else "none ran"
                peer_txt = f"{peer['variant']} {peer['dtype']} {peer['items_per_s']:,.0f}/s" if peer else "none ran"
                ratio = f"{fused['items_per_s'] / peer['items_per_s']:.2f}x" if fused and peer else "-"
                lines.append(f"{model:<9} {mode:<10} {batch:>5}  {fused_txt:<34} {peer_txt:<40} {ratio:>6}")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.summary", description=__doc__.split("\n\n")[0])
    p.add_argument("--stages", type=Path)
    p.add_argument("--junit", type=Path, nargs="*", default=[], help="JUnit XML files (one per test pass)")
    p.add_argument("--results", type=Path, nargs="*", default=[])
    args = p.parse_args(argv)
    out: list[str] = []
    if args.stages and args.stages.exists():
        out += stage_lines(args.stages) + [""]
    for junit in args.junit:
        if not junit.exists():
            out.append(f"tests: no {junit.name} (the test stage did not finish)")
            continue
        try:
            out.append(test_counts(junit).replace("tests:", f"tests ({junit.stem}):", 1))
            out += [f"  FAILED {name}" for name in failed_tests(junit)]
        except ET.ParseError as err:
            out.append(f"tests: {junit.name} is not readable ({err})")
    results, scoring = [], []
    for path in args.results:
        for file in sorted(path.glob("*.json")) if path.is_dir() else [path]:
            try:
                data = json.loads(file.read_text())
            except (OSError, ValueError):
                continue
            if data.get("schema") == SCHEMA and "measurements" in data:
                results.append(data)
            scoring += [b["extra_info"] for b in data.get("benchmarks", []) if "files_per_s" in b.get("extra_info", {})]
    if results:
        out += ["", *comparison_lines(results)]
    else:
        out.append("benchmarks: no result file")
    out += [scoring_line(info) for info in scoring]
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
