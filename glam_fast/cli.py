"""The ``glam-fast`` command line."""

from __future__ import annotations

import argparse
import json
import sys


def _cmd_info(args: argparse.Namespace) -> int:
    if args.kernels:
        return _print_kernel_report(args)
    from glam_fast.info import format_info, info

    report = info()
    print(json.dumps(report, indent=2) if args.json else format_info(report))
    return 0


def _print_kernel_report(args: argparse.Namespace) -> int:
    """Compile every registered Triton kernel for each architecture; nonzero exit if one fails."""
    from glam_fast.kernels import compile_report, format_report

    rows = [row for arch in args.arch for row in compile_report(arch)]
    print(json.dumps(rows, indent=2) if args.json else format_report(rows))
    return 0 if all(row["ok"] for row in rows) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="glam-fast", description="Fused GPU kernels for speech emotion recognition.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_info = sub.add_parser("info", help="versions, devices, and which backends are available (and why not)")
    p_info.add_argument("--json", action="store_true", help="print the report as JSON")
    p_info.add_argument(
        "--kernels", action="store_true", help="compile every Triton kernel (no GPU needed) and print registers, spills, shared memory"
    )
    p_info.add_argument("--arch", type=int, nargs="+", default=[80, 90], help="CUDA architectures for --kernels (default: 80 90)")
    p_info.set_defaults(func=_cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
