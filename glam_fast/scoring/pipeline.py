"""The scoring pipeline: decode in parallel workers, batch features and model across files.

:class:`Scorer` holds one model (a checkpoint folder, or the bundled default) and scores audio
files or in-memory waveforms, one :class:`ScoreResult` per input, in input order:

1. **Decode** (:mod:`glam_fast.audio`: libsndfile, mono, soxr resampling to the recipe's rate)
   on ``workers`` threads or processes, a bounded window of files ahead of the model.
2. **Units**: each file becomes the units its model scores: GLAM 1.8 s MFCC segments (a file
   shorter than one segment is zero-padded to one and flagged ``padded``), MS-SENet one
   fixed-length utterance (flagged ``padded`` when shorter than that length), AFCN one
   spectrogram per file, or per equal window of at most ``afcn_window_s`` seconds for longer
   files (flagged when shorter than the trunk's minimum).
3. **Batches**: units of consecutive files are packed into batches of ``batch_size`` units, a
   long file's units spread over as many batches as they need, so host and device memory stay
   bounded whatever the file lengths. Features are computed per batch on the model's device.
4. **Decision**: a file's logits are the mean of its units' logits (GLAM: the mean of segment
   logits, as in training and evaluation); probabilities are their softmax, the label their argmax.

A file that fails to decode (any reason: see :class:`glam_fast.audio.AudioError`, or an OS error
such as a permission denied) gets a result with ``status="error"`` and the message; it never
stops the others.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import math
import multiprocessing
import os
import time
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch

from glam_fast import audio
from glam_fast.interop import as_tensor, is_dlpack_array

DEFAULT_BATCH_SIZE = {"glam": 256, "mssenet": 64, "afcn": 16}
DECODERS = ("threads", "processes")


@dataclasses.dataclass
class ScoreResult:
    """The score of one input.

    path: the input's key (normalised path, or ``<array i>`` for in-memory audio); status: "ok"
    or "error"; error: why it failed ("" when ok); duration: seconds of audio decoded;
    n_segments: units the model scored (GLAM segments, AFCN windows, 1 for MS-SENet); padded: the
    audio was shorter than one unit and was zero-padded; label: the predicted class;
    probabilities: softmax of the utterance logits, in the order of ``Scorer.classes``;
    logits: the utterance logits themselves (mean of the units' logits; not written to files).
    """

    path: str
    status: str
    error: str = ""
    duration: float | None = None
    n_segments: int | None = None
    padded: bool | None = None
    label: str | None = None
    probabilities: list[float] | None = None
    logits: list[float] | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclasses.dataclass
class ScoreStats:
    """Where the time went (seconds): ``decode`` is summed over workers (they overlap the rest),
    ``decode_wait`` is how long the model side waited for decoded audio, ``features`` and
    ``model`` are wall time on the main thread (synchronised on a GPU)."""

    files: int = 0
    ok: int = 0
    failed: int = 0
    units: int = 0
    decode: float = 0.0
    decode_wait: float = 0.0
    features: float = 0.0
    model: float = 0.0

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _error_text(error: BaseException) -> str:
    if isinstance(error, audio.AudioError):
        return _one_line(f"{type(error).__name__}: {error.problem}")
    if isinstance(error, OSError) and error.strerror:
        return _one_line(f"{type(error).__name__}: {error.strerror}")
    return _one_line(f"{type(error).__name__}: {error}")


def _decode_file(path: str, sample_rate: int) -> tuple[np.ndarray | None, str | None, float]:
    """Worker: (mono float32 samples at ``sample_rate`` | None, error text | None, seconds spent)."""
    start = time.perf_counter()
    try:
        waveform, _ = audio.load(path, sr=sample_rate)
        return waveform.numpy(), None, time.perf_counter() - start
    except Exception as error:  # any failure is this file's row, never the run's end
        return None, _error_text(error), time.perf_counter() - start


def _init_decode_process() -> None:
    torch.set_num_threads(1)  # each decode process is one worker; leave the cores to the model


# ----------------------------------------------------------------------------- model adapters


@dataclasses.dataclass
class _Item:
    """A decoded input on its way through the batches."""

    index: int
    path: str
    waveform: torch.Tensor | None
    error: str | None
    n_units: int = 0
    next_unit: int = 0
    done_units: int = 0
    padded: bool = False
    logit_sum: torch.Tensor | None = None


class _GLAMUnits:
    """GLAM: 1.8 s MFCC segments every 0.2 s; a piece of a file is a run of consecutive segments."""

    def __init__(self, recipe, model, device):
        from glam_fast import recipes

        self.recipe, self.model, self.device, self._segments = recipe, model, device, recipes.glam_segments

    def count(self, samples: int) -> tuple[int, bool]:
        return self.recipe.n_segments(samples), samples < self.recipe.segment_samples

    def features(self, pieces: list[tuple[torch.Tensor, int, int]]):
        r = self.recipe
        waveforms = [w[first * r.segment_hop : (first + n - 1) * r.segment_hop + r.segment_samples] for w, first, n in pieces]
        return (self._segments(waveforms, r, device=self.device).features[:, None],)

    def run(self, inputs) -> torch.Tensor:
        return self.model(*inputs)


class _MSSENetUnits:
    """MS-SENet: one unit per file, the waveform padded or centre-cropped to the recipe's length."""

    def __init__(self, recipe, model, device):
        from glam_fast import recipes

        self.recipe, self.model, self.device, self._inputs = recipe, model, device, recipes.mssenet_inputs

    def count(self, samples: int) -> tuple[int, bool]:
        return 1, samples < self.recipe.n_samples

    def features(self, pieces):
        return (self._inputs([w for w, _, _ in pieces], self.recipe, device=self.device),)

    def run(self, inputs) -> torch.Tensor:
        return self.model(*inputs)


class _AFCNUnits:
    """AFCN: a file longer than ``window_s`` seconds is split into equal windows of at most that
    length (no short tail window), each one spectrogram; shorter files are one unit."""

    def __init__(self, recipe, model, device, window_s: float):
        from glam_fast import recipes

        self.recipe, self.model, self.device, self._recipes = recipe, model, device, recipes
        self.window = max(int(window_s * recipe.sample_rate), (recipe.min_frames - 1) * recipe.hop_length)

    def count(self, samples: int) -> tuple[int, bool]:
        return math.ceil(samples / self.window), 1 + samples // self.recipe.hop_length < self.recipe.min_frames

    def features(self, pieces):
        windows = []
        for w, first, n in pieces:
            size = math.ceil(w.numel() / math.ceil(w.numel() / self.window))
            windows.extend(w[(first + k) * size : (first + k + 1) * size] for k in range(n))
        items = [self._recipes.afcn_input(w.to(self.device), self.recipe) for w in windows]
        return self._recipes.afcn_batch(items)

    def run(self, inputs) -> torch.Tensor:
        x, lengths = inputs
        return self.model(x[..., : int(lengths.max())], lengths)


# ----------------------------------------------------------------------------- the scorer


class Scorer:
    """Score audio with a glam_fast checkpoint (default: the bundled GLAM trained on EmoDB).

    Args:
        checkpoint: a checkpoint folder (``model.safetensors`` + ``config.json`` with ``classes``
            and the feature recipe in ``features``); None for ``glam_fast.load_pretrained()``.
        device: "cpu", "cuda", ... (default: CUDA when available).
        batch_size: units per model batch (GLAM segments, MS-SENet utterances, AFCN windows);
            default 256 / 64 / 16. Bounds the memory of features and activations.
        workers: decoding workers (default: the number of CPU cores, at most 8).
        decoder: "threads" (default; libsndfile and soxr release the GIL) or "processes".
        optimize: on the CPU, run the inference-only form of the model
            (:func:`glam_fast.inference.prepare`: BatchNorm folded, channels-last, micro-batches).
        afcn_window_s: AFCN only: longer files are scored as the mean over windows of this length.

    ``classes`` are the label names; ``recipe`` the feature recipe; ``stats`` the time split of
    everything scored so far (:class:`ScoreStats`).
    """

    def __init__(
        self,
        checkpoint: str | os.PathLike | None = None,
        device: str | torch.device | None = None,
        batch_size: int | None = None,
        workers: int | None = None,
        decoder: str = "threads",
        optimize: bool = True,
        afcn_window_s: float = 30.0,
    ):
        from glam_fast import checkpoint as ckpt
        from glam_fast.recipes import recipe_from_dict

        self.device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' was asked for but PyTorch sees no CUDA device here")
        if checkpoint is None:
            model, config = _load_default_model(self.device)
        else:
            model, config = ckpt.load_checkpoint(checkpoint, self.device)
        if "features" not in config:
            raise ckpt.CheckpointError(f"{checkpoint}: config.json has no feature recipe ('features'); cannot compute inputs")
        self.model_name = config["model"]
        self.classes = list(config["classes"])
        self.recipe = recipe_from_dict(config["features"])
        self.batch_size = int(batch_size) if batch_size is not None else DEFAULT_BATCH_SIZE[self.model_name]
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.workers = int(workers) if workers is not None else min(os.cpu_count() or 1, 8)
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
        self.decoder = decoder
        self.reference_model = model
        if optimize and self.device.type == "cpu":
            from glam_fast.inference import prepare

            model = prepare(model)
        self.model = model
        if self.model_name == "glam":
            self._units = _GLAMUnits(self.recipe, model, self.device)
        elif self.model_name == "mssenet":
            self._units = _MSSENetUnits(self.recipe, model, self.device)
        else:
            self._units = _AFCNUnits(self.recipe, model, self.device, afcn_window_s)
        self.stats = ScoreStats()

    @property
    def sample_rate(self) -> int:
        return self.recipe.sample_rate

    # ------------------------------------------------------------------ public API

    def score(self, paths: Iterable[str | os.PathLike]) -> Iterator[ScoreResult]:
        """Score audio files; yields one :class:`ScoreResult` per path, in the order given."""
        keys = [os.fspath(p) for p in paths]
        return self._score_items(self._decoded(keys))

    def score_array(self, waveforms, sample_rate: int, names: Sequence[str] | None = None) -> list[ScoreResult]:
        """Score in-memory audio: a sequence of 1-D arrays (numpy, torch, or DLPack arrays such as
        CuPy), or one 2-D array (B, samples), at ``sample_rate`` Hz. Resampled to the recipe's rate.
        Results are named ``names`` or ``<array i>``."""
        items = _as_waveform_list(waveforms)
        names = list(names) if names is not None else [f"<array {i}>" for i in range(len(items))]
        if len(names) != len(items):
            raise ValueError(f"{len(names)} names for {len(items)} waveforms")

        def decoded():
            for i, (name, samples) in enumerate(zip(names, items)):
                try:
                    waveform, _ = audio.load_array(samples, sample_rate, sr=self.sample_rate, name=name)
                    yield _Item(i, name, waveform, None)
                except (audio.AudioError, TypeError, ValueError) as error:
                    yield _Item(i, name, None, _error_text(error))

        return list(self._score_items(decoded()))

    # ------------------------------------------------------------------ decoding

    def _decoded(self, paths: list[str]) -> Iterator[_Item]:
        """Decoded items in input order; at most ``2 * workers + 2`` files in flight."""
        if not paths:
            return
        window = 2 * self.workers + 2
        if self.decoder == "processes":
            context = multiprocessing.get_context("spawn")  # no fork of a process holding torch threads
            pool = concurrent.futures.ProcessPoolExecutor(self.workers, mp_context=context, initializer=_init_decode_process)
        else:
            pool = concurrent.futures.ThreadPoolExecutor(self.workers, thread_name_prefix="glam-fast-decode")
        try:
            pending: collections.deque = collections.deque()
            upcoming = iter(enumerate(paths))
            for index, path in upcoming:
                pending.append((index, path, pool.submit(_decode_file, path, self.sample_rate)))
                if len(pending) >= window:
                    break
            while pending:
                index, path, future = pending.popleft()
                start = time.perf_counter()
                samples, error, spent = future.result()
                self.stats.decode_wait += time.perf_counter() - start
                self.stats.decode += spent
                for next_index, next_path in upcoming:
                    pending.append((next_index, next_path, pool.submit(_decode_file, next_path, self.sample_rate)))
                    break
                yield _Item(index, path, torch.from_numpy(samples) if samples is not None else None, error)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    # ------------------------------------------------------------------ batching

    def _score_items(self, items: Iterator[_Item]) -> Iterator[ScoreResult]:
        queue: collections.deque[_Item] = collections.deque()  # items with units left to schedule, or waiting to be reported
        queued_units = 0
        exhausted = False
        with torch.inference_mode():
            while True:
                while not exhausted and queued_units < self.batch_size:
                    item = next(items, None)
                    if item is None:
                        exhausted = True
                        break
                    if item.error is None:
                        item.n_units, item.padded = self._units.count(item.waveform.numel())
                        queued_units += item.n_units
                    queue.append(item)
                if not queue:
                    return
                pieces, owners = [], []
                budget = self.batch_size
                for item in queue:
                    if budget == 0:
                        break
                    left = item.n_units - item.next_unit
                    if item.error is not None or left == 0:
                        continue
                    take = min(left, budget)
                    pieces.append((item.waveform, item.next_unit, take))
                    owners.append((item, take))
                    item.next_unit += take
                    budget -= take
                if pieces:
                    queued_units -= sum(take for _, take in owners)
                    self._run_batch(pieces, owners)
                while queue and (queue[0].error is not None or queue[0].done_units == queue[0].n_units):
                    yield self._result(queue.popleft())

    def _run_batch(self, pieces, owners) -> None:
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        start = time.perf_counter()
        inputs = self._units.features(pieces)
        sync()
        middle = time.perf_counter()
        logits = self._units.run(inputs).double()
        sync()
        self.stats.features += middle - start
        self.stats.model += time.perf_counter() - middle
        self.stats.units += logits.shape[0]
        sums = torch.split(logits, [take for _, take in owners])
        for (item, take), part in zip(owners, sums):
            total = part.sum(dim=0).cpu()
            item.logit_sum = total if item.logit_sum is None else item.logit_sum + total
            item.done_units += take

    def _result(self, item: _Item) -> ScoreResult:
        self.stats.files += 1
        if item.error is not None:
            self.stats.failed += 1
            return ScoreResult(item.path, "error", item.error)
        logits = item.logit_sum / item.n_units
        probabilities = torch.softmax(logits, dim=0)
        self.stats.ok += 1
        duration = item.waveform.numel() / self.sample_rate
        item.waveform = None  # release the samples as soon as the file is reported
        return ScoreResult(
            item.path,
            "ok",
            "",
            duration,
            item.n_units,
            item.padded,
            self.classes[int(torch.argmax(logits))],
            [float(p) for p in probabilities],
            [float(v) for v in logits],
        )


def _as_waveform_list(waveforms) -> list:
    """A batch (B, samples) or a sequence of 1-D arrays -> list of numpy / CPU torch 1-D arrays."""
    if is_dlpack_array(waveforms) or isinstance(waveforms, (torch.Tensor, np.ndarray)):
        batch = _to_host(waveforms)
        if batch.ndim == 1:
            return [batch]
        if batch.ndim != 2:
            raise ValueError(f"score_array expects (B, samples) or a sequence of 1-D waveforms, got shape {tuple(batch.shape)}")
        return list(batch)
    return [_to_host(w) for w in waveforms]


def _to_host(x):
    if isinstance(x, np.ndarray):
        return x
    if is_dlpack_array(x) and not hasattr(x, "__array_interface__"):
        x = as_tensor(x, "waveform")
    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    return np.asarray(x)


def _load_default_model(device: torch.device):
    from glam_fast import pretrained

    try:
        path = pretrained.pretrained_path(pretrained.DEFAULT_MODEL)
    except ValueError as error:
        raise FileNotFoundError(
            f"the bundled default model {pretrained.DEFAULT_MODEL!r} is not part of this installation ({error}); "
            "pass a checkpoint folder (--checkpoint / Scorer(checkpoint=...))"
        ) from None
    from glam_fast import checkpoint as ckpt

    return ckpt.load_checkpoint(path, device)
