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


def _cmd_train(args: argparse.Namespace) -> int:
    import torch

    from glam_fast import train
    from glam_fast.distributed import init_from_environment
    from glam_fast.evaluate import load_corpus

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dist = init_from_environment(device)
    if device.type == "cuda" and dist.enabled:
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    train_args = train.default_args(
        args.model,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        amp=args.amp,
        backend=args.backend,
        seed=args.seed,
        protocol=args.protocol,
        folds=args.folds,
    )
    recipe = train.default_recipe(args.model)
    if args.model == "mssenet" and args.fixed_length:
        from glam_fast.recipes import MSSENetRecipe

        recipe = MSSENetRecipe.for_corpus(args.fixed_length)
    corpus = load_corpus(args.data)
    out = args.out or f"runs/{args.model}-{args.protocol}"
    train.train_corpus(corpus, train_args, out, recipe, device, args.cache, dist, args.alexnet_weights, args.fold)
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from glam_fast.evaluate import evaluate_checkpoint
    from glam_fast.metrics import format_confusion
    from glam_fast.train import plot_confusion

    metrics = evaluate_checkpoint(args.checkpoint, args.data, args.device or "cpu", args.cache)
    for item in metrics["skipped"]:
        print(f"skipped {item['path']}: {item['error']}", file=sys.stderr)
    print(f"{metrics['n']} utterances ({len(metrics['skipped'])} of {metrics['n_files']} files skipped)")
    print("  ".join(f"{k.upper()} {metrics[k]:.4f}" for k in ("wa", "ua", "macro_f1", "weighted_f1")))
    print("recall: " + "  ".join(f"{c} {v['recall']:.3f}" for c, v in metrics["per_class"].items()))
    print(format_confusion(metrics["confusion"], metrics["classes"]))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        plot_confusion(metrics, out / "confusion.png", Path(args.checkpoint).name)
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    from glam_fast.scoring import job
    from glam_fast.scoring.inputs import InputError, parse_shard
    from glam_fast.scoring.output import OutputError

    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    try:
        shard = parse_shard(args.shard) if args.shard else None
    except ValueError as error:
        print(f"glam-fast score: error: {error}", file=sys.stderr)
        return 2
    try:
        summary = job.run_job(
            args.inputs,
            args.output,
            checkpoint=args.checkpoint,
            device=args.device,
            batch_size=args.batch_size,
            workers=args.workers,
            decoder=args.decoder,
            resume=args.resume,
            overwrite=args.overwrite,
            shard=shard,
            progress=True if args.progress else None,
            flush_rows=args.flush_rows,
        )
    except (InputError, OutputError, job.JobError) as error:
        print(f"glam-fast score: error: {error}", file=sys.stderr)
        return 2
    where = f" -> {args.output}" if args.output else ""
    print(summary.line() + where, file=sys.stderr)
    return 1 if args.strict and summary.failed else 0


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

    p_train = sub.add_parser("train", help="train a model on a labelled corpus with its paper's recipe, fold by fold (resumable)")
    p_train.add_argument("--model", required=True, choices=["glam", "mssenet", "afcn"])
    p_train.add_argument("--data", required=True, help="a CSV manifest (path,label[,speaker]) or a folder of EmoDB-named wavs")
    p_train.add_argument("--protocol", default="speaker-independent", choices=["speaker-independent", "paper", "all"])
    p_train.add_argument("--folds", type=int, help="folds (speaker-independent: 5; paper: GLAM seeds 1, MS-SENet 10)")
    p_train.add_argument("--fold", action="append", help="train only this fold (repeatable), e.g. fold0")
    p_train.add_argument("--epochs", type=int, help="default: the recipe's (GLAM 50, MS-SENet 200, AFCN 40)")
    p_train.add_argument("--batch-size", type=int, help="global batch size (default: the recipe's)")
    p_train.add_argument("--lr", type=float, help="learning rate (default: the recipe's)")
    p_train.add_argument("--amp", default="off", choices=["off", "bf16", "fp16"])
    p_train.add_argument("--backend", default="auto", choices=["auto", "torch", "triton", "cuda"])
    p_train.add_argument("--seed", type=int, default=0)
    p_train.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    p_train.add_argument("--cache", help="feature cache folder (reused across runs)")
    p_train.add_argument("--fixed-length", choices=["emodb", "iemocap"], help="MS-SENet input length of that corpus (default emodb)")
    p_train.add_argument("--alexnet-weights", help="AFCN: local file with ImageNet AlexNet weights (torchvision layout)")
    p_train.add_argument("--out", help="output folder (default runs/<model>-<protocol>); rerun to resume")
    p_train.set_defaults(func=_cmd_train)

    p_eval = sub.add_parser("eval", help="WA, UA, F1 and confusion matrix of a checkpoint on a labelled corpus")
    p_eval.add_argument("--checkpoint", required=True, help="a checkpoint folder (model.safetensors + config.json)")
    p_eval.add_argument("--data", required=True, help="a CSV manifest or a folder of EmoDB-named wavs")
    p_eval.add_argument("--device", help="cpu or cuda")
    p_eval.add_argument("--cache", help="feature cache folder")
    p_eval.add_argument("--out", help="folder for metrics.json and confusion.png")
    p_eval.set_defaults(func=_cmd_eval)

    p_score = sub.add_parser(
        "score",
        help="score audio files with a model: one row per file (label, probability per class), resumable",
        description="Score audio files: one output row per input file (path, status, error, duration_s, n_segments, "
        "padded, label, prob_<class>...). Exit status 0 unless --strict and a file failed; 2 for unusable inputs or output.",
    )
    p_score.add_argument("inputs", nargs="+", metavar="INPUT", help="audio files, folders (recursive), glob patterns, or manifests (.csv with a path column, .txt one path per line)")
    p_score.add_argument("-o", "--output", help="out.csv, out.jsonl or out.parquet (default: CSV on stdout)")
    p_score.add_argument("--checkpoint", help="a checkpoint folder (default: the bundled GLAM trained on EmoDB)")
    p_score.add_argument("--batch-size", type=int, help="units per model batch (GLAM segments: 256, MS-SENet files: 64, AFCN windows: 16)")
    p_score.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    p_score.add_argument("--workers", type=int, help="decoding workers (default: CPU cores, at most 8)")
    p_score.add_argument("--decoder", default="threads", choices=["threads", "processes"], help="decode on threads (default) or processes")
    p_score.add_argument("--threads", type=int, help="torch threads for features and model (default: torch's)")
    p_score.add_argument("--resume", action="store_true", help="skip files already in the output and append the rest")
    p_score.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p_score.add_argument("--shard", help="i/N: score only shard i (0-based) of N, chosen by a stable hash of each path")
    p_score.add_argument("--flush-rows", type=int, default=256, help="rows per durable write (flush + fsync; also every 2 s)")
    p_score.add_argument("--strict", action="store_true", help="exit with status 1 if any file failed")
    p_score.add_argument("--progress", action="store_true", help="show progress on stderr even when it is not a terminal")
    p_score.set_defaults(func=_cmd_score)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
