"""Training with the papers' recipes, fold by fold, resumable, on one process or many (DDP).

Per model (RECIPES.md):
- GLAM: trains on 1.8 s MFCC segments with mixup (alpha 0.5, one lambda per batch), Adam lr 1e-3,
  weight decay 1e-6, ExponentialLR(0.95) per epoch, batch 32, 50 epochs; an utterance's logits
  are the mean of its segments' logits.
- MS-SENet: Adam lr 1e-3, betas (0.93, 0.98), eps 1e-8, batch 64, label smoothing 0.1, 200 epochs
  (the paper's protocol evaluates the last epoch).
- AFCN (no published recipe; this project's choice): Adam lr 1e-4, weight decay 1e-4, batch 32,
  40 epochs, cross-entropy, trained end to end (from ImageNet AlexNet weights when a local file
  is given, else from scratch).

Every fold writes ``<out>/<fold>/`` with ``checkpoint/`` (safetensors + config.json: model,
classes, feature recipe, training arguments, git commit), ``metrics.json`` and
``confusion.png`` (when matplotlib is installed); the run writes ``<out>/summary.json``. After each
epoch the fold's full training state (weights, optimizer, scheduler, RNG, history) is written
atomically to ``<out>/<fold>/state/``, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import glam_fast
from glam_fast import checkpoint as ckpt
from glam_fast.distributed import DistributedContext, SyncBatchNorm
from glam_fast.metrics import classification_metrics
from glam_fast.protocols import Split


@dataclasses.dataclass
class TrainArgs:
    """Everything that defines a training run (saved with every checkpoint)."""

    model: str
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    lr_decay: float = 1.0  # ExponentialLR gamma, stepped per epoch
    mixup_alpha: float = 0.0
    label_smoothing: float = 0.0
    amp: str = "off"  # off | bf16 | fp16
    backend: str = "auto"
    seed: int = 0
    protocol: str = "speaker-independent"
    folds: int | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


RECIPE_DEFAULTS: dict[str, dict] = {
    "glam": dict(epochs=50, batch_size=32, lr=1e-3, weight_decay=1e-6, lr_decay=0.95, mixup_alpha=0.5),
    "mssenet": dict(epochs=200, batch_size=64, lr=1e-3, betas=(0.93, 0.98), eps=1e-8, label_smoothing=0.1),
    "afcn": dict(epochs=40, batch_size=32, lr=1e-4, weight_decay=1e-4),
}


def default_args(model: str, **overrides) -> TrainArgs:
    """The model's recipe, with ``overrides`` (None values are ignored)."""
    if model not in RECIPE_DEFAULTS:
        raise ValueError(f"unknown model {model!r}; expected one of {', '.join(RECIPE_DEFAULTS)}")
    values = {**RECIPE_DEFAULTS[model], **{k: v for k, v in overrides.items() if v is not None}}
    return TrainArgs(model=model, **values)


# ----------------------------------------------------------------------------- model inputs


@dataclasses.dataclass
class Units:
    """The training units of a set of utterances: segments for GLAM, utterances otherwise.

    inputs: (N, ...) model inputs; lengths: (N,) valid frames (AFCN) or None; labels: (N,);
    utterance: (N,) index of each unit's utterance within the set; n_utterances: U.
    """

    inputs: torch.Tensor
    lengths: torch.Tensor | None
    labels: torch.Tensor
    utterance: torch.Tensor
    n_utterances: int

    def select(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        lengths = self.lengths[index] if self.lengths is not None else None
        return self.inputs[index], lengths, self.labels[index]


def build_units(model_name: str, features: Sequence[dict], labels: Sequence[int]) -> Units:
    """Stack per-utterance feature dicts (the recipes' ``compute`` output) into training units."""
    labels = torch.as_tensor(list(labels), dtype=torch.long)
    if model_name == "glam":
        segments = [f["features"] for f in features]
        counts = torch.tensor([s.shape[0] for s in segments])
        utterance = torch.repeat_interleave(torch.arange(len(segments)), counts)
        return Units(torch.cat(segments)[:, None], None, labels[utterance], utterance, len(segments))
    if model_name == "mssenet":
        return Units(torch.stack([f["features"] for f in features]), None, labels, torch.arange(len(features)), len(features))
    if model_name == "afcn":
        longest = max(f["features"].shape[-1] for f in features)
        x = torch.stack([F.pad(f["features"], (0, longest - f["features"].shape[-1])) for f in features])
        lengths = torch.tensor([int(f["length"]) for f in features])
        return Units(x, lengths, labels, torch.arange(len(features)), len(features))
    raise ValueError(f"unknown model {model_name!r}")


def _forward(model: nn.Module, x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    return model(x, lengths) if lengths is not None else model(x)


def _trim(x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """Drop time frames that no item of the batch uses (AFCN batches padded to the longest)."""
    if lengths is None:
        return x
    return x[..., : int(lengths.max())]


@torch.no_grad()
def utterance_logits(model: nn.Module, units: Units, batch_size: int = 256, amp: str = "off") -> torch.Tensor:
    """(U, K) utterance logits: the mean of each utterance's unit logits (GLAM: segments)."""
    model.eval()
    device = next(model.parameters()).device
    outputs = []
    for start in range(0, units.inputs.shape[0], batch_size):
        index = torch.arange(start, min(start + batch_size, units.inputs.shape[0]))
        x, lengths, _ = units.select(index)
        x, lengths = _trim(x, lengths).to(device), lengths.to(device) if lengths is not None else None
        with _autocast(device, amp):
            outputs.append(_forward(model, x, lengths).float().cpu())
    logits = torch.cat(outputs)
    total = torch.zeros(units.n_utterances, logits.shape[1]).index_add_(0, units.utterance, logits)
    counts = torch.bincount(units.utterance, minlength=units.n_utterances).clamp_min(1)
    return total / counts[:, None]


def _autocast(device: torch.device, amp: str):
    if amp == "off":
        return torch.autocast(device.type, enabled=False)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    return torch.autocast(device.type, dtype=dtype)


# ----------------------------------------------------------------------------- one fold


def build_model(model_name: str, num_classes: int, input_shape: tuple[int, int] | None = None, alexnet_weights: str | None = None) -> nn.Module:
    if model_name == "glam":
        return glam_fast.GLAM(shape=input_shape or (26, 57), num_classes=num_classes)
    if model_name == "mssenet":
        return glam_fast.MSSENet(num_classes=num_classes)
    if model_name == "afcn":
        model = glam_fast.AFCN(num_classes=num_classes)
        if alexnet_weights:
            model.load_alexnet_features(alexnet_weights)
        return model
    raise ValueError(f"unknown model {model_name!r}")


def _loss(logits: torch.Tensor, labels: torch.Tensor, args: TrainArgs, reduction: str = "mean") -> torch.Tensor:
    return F.cross_entropy(logits.float(), labels, label_smoothing=args.label_smoothing, reduction=reduction)


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    units: Units,
    args: TrainArgs,
    generator: torch.Generator,
    dist: DistributedContext = DistributedContext(),
    scaler: torch.amp.GradScaler | None = None,
    progress: Callable[[int, int, float], None] | None = None,
) -> float:
    """One epoch over ``units``; returns the mean training loss over the epoch's items.

    Every rank draws the same permutation and mixup parameters from ``generator`` for the GLOBAL
    batch, mixes it, then trains on its shard, scaling its summed loss by world / global batch so
    that DDP's gradient average equals the gradient of the global mean loss.
    """
    model.train()
    device = next(model.parameters()).device
    n = units.inputs.shape[0]
    order = torch.randperm(n, generator=generator)
    total, seen = 0.0, 0
    n_batches = math.ceil(n / args.batch_size)
    for b in range(n_batches):
        index = order[b * args.batch_size : (b + 1) * args.batch_size]
        x, lengths, y = units.select(index)
        mix = None
        if args.mixup_alpha > 0:
            lam = _beta(args.mixup_alpha, generator)
            perm = torch.randperm(index.numel(), generator=generator)
            x = lam * x + (1 - lam) * x[perm]
            mix = (lam, y[perm])
        shard = torch.arange(dist.rank, index.numel(), dist.world_size)
        xs, ys = _trim(x[shard], None if lengths is None else lengths[shard]), y[shard]
        ls = lengths[shard].to(device) if lengths is not None else None
        xs, ys = xs.to(device), ys.to(device)
        with _autocast(device, args.amp):
            logits = _forward(model, xs, ls)
        loss_sum = _loss(logits, ys, args, "sum")
        if mix is not None:
            lam, y_perm = mix
            loss_sum = lam * loss_sum + (1 - lam) * _loss(logits, y_perm[shard].to(device), args, "sum")
        loss = loss_sum * (dist.world_size / index.numel())
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        total += float(loss_sum.detach())
        seen += int(ys.numel())
        if progress is not None:
            progress(b + 1, n_batches, total / max(seen, 1))
    if dist.enabled:
        sums = torch.tensor([total, float(seen)], dtype=torch.float64)
        torch.distributed.all_reduce(sums)
        total, seen = float(sums[0]), int(sums[1])
    return total / max(seen, 1)


def _beta(alpha: float, generator: torch.Generator) -> float:
    """One draw of Beta(alpha, alpha) from ``generator``: G1 / (G1 + G2) with Gi ~ Gamma(alpha).
    (torch.distributions cannot take a generator; a seeded generator keeps runs reproducible and
    identical on every rank.)"""
    g = torch._standard_gamma(torch.full((2,), alpha, dtype=torch.float64), generator=generator)
    return float(g[0] / g.sum())


# ----------------------------------------------------------------------------- resumable state


def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for name, value in [*tensors.items(), *meta["scalars"].items()]:
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


class FoldState:
    """The training state of one fold on disk: ``state/epoch_<e>/`` folders and a LATEST pointer
    written last (atomically), so a kill at any moment leaves the previous epoch readable."""

    def __init__(self, folder: Path):
        self.folder = folder / "state"

    def latest(self) -> Path | None:
        pointer = self.folder / "LATEST"
        if not pointer.is_file():
            return None
        path = self.folder / pointer.read_text().strip()
        return path if (path / "state.json").is_file() else None

    def save(self, epoch: int, model: nn.Module, optimizer, scheduler, generator: torch.Generator, best_state: dict | None, info: dict) -> None:
        from safetensors.torch import save_file

        target = self.folder / f"epoch_{epoch:04d}"
        target.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(target / "model.safetensors"))
        if best_state is not None:
            save_file(best_state, str(target / "best.safetensors"))
        opt_tensors, opt_meta = _flatten_optimizer(optimizer)
        save_file({**opt_tensors, "__generator__": generator.get_state()}, str(target / "optimizer.safetensors"))
        meta = {"epoch": epoch, "optimizer": opt_meta, "scheduler": scheduler.state_dict(), **info}
        (target / "state.json").write_text(json.dumps(meta))
        tmp = self.folder / "LATEST.tmp"
        tmp.write_text(target.name)
        os.replace(tmp, self.folder / "LATEST")
        for old in self.folder.glob("epoch_*"):
            if old != target:
                for f in old.iterdir():
                    f.unlink()
                old.rmdir()

    def load(self, model: nn.Module, optimizer, scheduler, generator: torch.Generator) -> tuple[dict, dict | None]:
        from safetensors.torch import load_file

        path = self.latest()
        meta = json.loads((path / "state.json").read_text())
        model.load_state_dict(load_file(str(path / "model.safetensors")))
        tensors = load_file(str(path / "optimizer.safetensors"))
        generator.set_state(tensors.pop("__generator__"))
        optimizer.load_state_dict(_unflatten_optimizer(tensors, meta["optimizer"]))
        scheduler.load_state_dict(meta["scheduler"])
        best = load_file(str(path / "best.safetensors")) if (path / "best.safetensors").is_file() else None
        return meta, best

    def remove(self) -> None:
        if self.folder.is_dir():
            for path in sorted(self.folder.rglob("*"), reverse=True):
                path.unlink() if path.is_file() else path.rmdir()
            self.folder.rmdir()


# ----------------------------------------------------------------------------- folds and runs


class _Progress:
    """A one-line progress bar on a terminal; one line per epoch otherwise."""

    def __init__(self, stream=sys.stderr, enabled: bool = True):
        self.stream, self.enabled = stream, enabled
        self.tty = enabled and hasattr(stream, "isatty") and stream.isatty()

    def batch(self, prefix: str) -> Callable[[int, int, float], None] | None:
        if not self.tty:
            return None

        def show(done: int, total: int, loss: float) -> None:
            filled = int(24 * done / total)
            self.stream.write(f"\r{prefix} [{'#' * filled}{'.' * (24 - filled)}] {done}/{total} loss {loss:.4f}")
            self.stream.flush()

        return show

    def line(self, text: str) -> None:
        if self.enabled:
            self.stream.write(("\r" if self.tty else "") + text + "\n")
            self.stream.flush()


def _selection_score(metrics: dict) -> float:
    return (metrics["wa"] + metrics["ua"]) / 2


def train_fold(
    split: Split,
    units_for: Callable[[list[int]], Units],
    classes: list[str],
    args: TrainArgs,
    folder: Path,
    extra_config: dict,
    device: torch.device,
    dist: DistributedContext = DistributedContext(),
    input_shape: tuple[int, int] | None = None,
    alexnet_weights: str | None = None,
    progress: _Progress | None = None,
) -> dict:
    """Train one split to completion (resuming from ``folder/state`` if present); returns its metrics."""
    progress = progress or _Progress(enabled=dist.is_main)
    metrics_path = folder / "metrics.json"
    if metrics_path.is_file():
        progress.line(f"{split.name}: already done ({metrics_path})")
        return json.loads(metrics_path.read_text())
    torch.manual_seed(args.seed)
    model = build_model(args.model, len(classes), input_shape, alexnet_weights).to(device)
    if dist.enabled:
        SyncBatchNorm.convert(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, betas=tuple(args.betas), eps=args.eps, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=args.lr_decay)
    generator = torch.Generator().manual_seed(args.seed)
    scaler = torch.amp.GradScaler(device.type) if args.amp == "fp16" else None
    train_units = units_for(split.train)
    select_units = {"validation": split.validation, "test": split.test}.get(split.select_on)
    select_units = units_for(select_units) if select_units else None
    fold_state = FoldState(folder)
    history, best_state, best = [], None, {"score": -1.0, "epoch": None}
    start_epoch = 1
    if fold_state.latest() is not None:
        meta, best_state = fold_state.load(model, optimizer, scheduler, generator)
        history, best, start_epoch = meta["history"], meta["best"], meta["epoch"] + 1
        progress.line(f"{split.name}: resuming after epoch {meta['epoch']}")
    wrapped = torch.nn.parallel.DistributedDataParallel(model) if dist.enabled else model
    with glam_fast.backend(args.backend):
        for epoch in range(start_epoch, args.epochs + 1):
            t0 = time.perf_counter()
            prefix = f"{split.name} epoch {epoch}/{args.epochs}"
            loss = train_epoch(wrapped, optimizer, train_units, args, generator, dist, scaler, progress.batch(prefix))
            scheduler.step()
            entry = {"epoch": epoch, "loss": loss, "lr": optimizer.param_groups[0]["lr"]}
            if select_units is not None:
                predicted = utterance_logits(model, select_units, amp=args.amp).argmax(1)
                scores = classification_metrics(_utterance_labels(select_units).tolist(), predicted.tolist(), classes)
                entry.update({f"{split.select_on}_wa": scores["wa"], f"{split.select_on}_ua": scores["ua"]})
                if _selection_score(scores) > best["score"]:
                    best = {"score": _selection_score(scores), "epoch": epoch}
                    best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            entry["seconds"] = round(time.perf_counter() - t0, 2)
            history.append(entry)
            shown = " ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in entry.items() if k != "epoch")
            progress.line(f"{prefix} {shown}")
            if dist.is_main:
                fold_state.save(epoch, model, optimizer, scheduler, generator, best_state, {"history": history, "best": best})
            if dist.enabled:
                torch.distributed.barrier()
    if split.select_on in ("validation", "test") and best_state is not None:
        model.load_state_dict(best_state)
        selected_epoch = best["epoch"]
    else:
        selected_epoch = args.epochs
    result = {
        "fold": split.name,
        "selected_epoch": selected_epoch,
        "select_on": split.select_on,
        "test_speakers": list(split.test_speakers),
        "validation_speakers": list(split.validation_speakers),
        "n_train": len(split.train),
        "n_validation": len(split.validation),
        "n_test": len(split.test),
        "test": None,
        "history": history,
    }
    if split.test:
        test_units = units_for(split.test)
        predicted = utterance_logits(model, test_units, amp=args.amp).argmax(1)
        result["test"] = classification_metrics(_utterance_labels(test_units).tolist(), predicted.tolist(), classes)
    if dist.is_main:
        model_cpu = model.to("cpu").eval()
        ckpt.save_checkpoint(folder / "checkpoint", model_cpu, classes, training=args.to_dict(), fold=split.name, **extra_config)
        if result["test"] is not None:
            plot_confusion(result["test"], folder / "confusion.png", f"{args.model} {split.name}")
        tmp = folder / "metrics.json.tmp"
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        os.replace(tmp, metrics_path)
        fold_state.remove()
    return result


def _utterance_labels(units: Units) -> torch.Tensor:
    labels = torch.zeros(units.n_utterances, dtype=torch.long)
    labels[units.utterance] = units.labels
    return labels


def plot_confusion(metrics: dict, path: Path, title: str) -> bool:
    """Confusion-matrix PNG (row-normalised colours, counts printed); False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    matrix = torch.tensor(metrics["confusion"], dtype=torch.float64)
    rates = matrix / matrix.sum(1, keepdim=True).clamp_min(1)
    classes = metrics["classes"]
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * len(classes), 0.8 + 0.7 * len(classes)))
    ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, int(matrix[i, j]), ha="center", va="center", color="white" if rates[i, j] > 0.5 else "black", fontsize=8)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title}: WA {metrics['wa']:.3f} UA {metrics['ua']:.3f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def summarise(fold_results: list[dict]) -> dict:
    """Mean and standard deviation (population, over folds) of WA, UA, macro-F1, weighted-F1."""
    summary = {"folds": len(fold_results)}
    for key in ("wa", "ua", "macro_f1", "weighted_f1"):
        values = torch.tensor([r["test"][key] for r in fold_results], dtype=torch.float64)
        summary[key] = {"mean": float(values.mean()), "std": float(values.std(unbiased=False)), "per_fold": values.tolist()}
    confusion = torch.stack([torch.tensor(r["test"]["confusion"]) for r in fold_results]).sum(0)
    summary["confusion"] = confusion.tolist()
    summary["classes"] = fold_results[0]["test"]["classes"]
    return summary


def default_recipe(model_name: str):
    """The feature recipe of a model's paper (glam_fast.recipes)."""
    from glam_fast import recipes

    return {"glam": recipes.GLAMRecipe, "mssenet": recipes.MSSENetRecipe, "afcn": recipes.AFCNRecipe}[model_name]()


def train_corpus(
    corpus,
    args: TrainArgs,
    out: str | os.PathLike,
    recipe=None,
    device: str | torch.device = "cpu",
    cache_dir: str | os.PathLike | None = None,
    dist: DistributedContext = DistributedContext(),
    alexnet_weights: str | None = None,
    only_folds: Sequence[str] | None = None,
    progress: _Progress | None = None,
) -> dict:
    """Train ``args.model`` on ``corpus`` under ``args.protocol``: every fold, then a summary.

    Writes ``out/run.json`` (arguments, corpus, skipped files), one folder per fold and
    ``out/summary.json``; a rerun with the same ``out`` resumes (finished folds are kept).
    """
    from glam_fast.evaluate import corpus_features
    from glam_fast.protocols import make_splits

    out = Path(out)
    device = torch.device(device)
    progress = progress or _Progress(enabled=dist.is_main)
    recipe = recipe if recipe is not None else default_recipe(args.model)
    if recipe.name != args.model:
        raise ValueError(f"a {recipe.name} feature recipe cannot feed a {args.model} model")
    extracted = corpus_features(corpus, recipe, cache_dir)
    for path, reason in extracted.skipped:
        progress.line(f"skipped {path}: {reason}")
    if extracted.skipped:
        progress.line(f"skipped {len(extracted.skipped)} of {len(corpus)} files that could not be decoded")
    classes = list(corpus.labels)
    targets = corpus.targets[extracted.kept].tolist()
    speakers = [corpus.items[i].speaker for i in extracted.kept]
    splits = make_splits(args.protocol, args.model, speakers, args.folds, args.seed)
    if only_folds:
        unknown = sorted(set(only_folds) - {s.name for s in splits})
        if unknown:
            raise ValueError(f"unknown folds {unknown}; this protocol has {[s.name for s in splits]}")
        splits = [s for s in splits if s.name in only_folds]
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        run_info = {
            "training": args.to_dict(),
            "features": recipe.to_dict(),
            "corpus": corpus.source,
            "classes": classes,
            "n_files": len(corpus),
            "skipped": [{"path": p, "error": e} for p, e in extracted.skipped],
            "folds": [s.name for s in splits],
            "world_size": dist.world_size,
        }
        (out / "run.json").write_text(json.dumps(run_info, indent=2) + "\n")

    def units_for(index: list[int]) -> Units:
        return build_units(args.model, [extracted.features[i] for i in index], [targets[i] for i in index])

    input_shape = getattr(recipe, "input_shape", None)
    results = []
    for split in splits:
        results.append(
            train_fold(
                split, units_for, classes, args, out / split.name, {"features": recipe.to_dict()}, device, dist, input_shape, alexnet_weights, progress
            )
        )
    evaluated = [r for r in results if r["test"] is not None]
    summary = {**(summarise(evaluated) if evaluated else {"folds": 0}), "protocol": args.protocol, "model": args.model}
    if dist.is_main and evaluated:
        progress.line(
            "summary: " + "  ".join(f"{k.upper()} {summary[k]['mean']:.3f} ± {summary[k]['std']:.3f}" for k in ("wa", "ua", "macro_f1", "weighted_f1"))
        )
    if dist.is_main:
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
