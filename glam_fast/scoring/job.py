"""One scoring job as ``glam-fast score`` runs it: inputs -> shard -> resume -> score -> rows.

:func:`run_job` ties :mod:`~glam_fast.scoring.inputs`, :class:`~glam_fast.scoring.pipeline.Scorer`
and :mod:`~glam_fast.scoring.output` together, shows progress on stderr and returns a summary.
"""

from __future__ import annotations

import csv
import dataclasses
import sys
import time
from collections.abc import Sequence

from glam_fast.scoring import inputs as inputs_mod
from glam_fast.scoring import output as output_mod

FLUSH_ROWS = 256  # default rows per durable write (flush + fsync) ...
FLUSH_SECONDS = 2.0  # ... or sooner when this much time has passed since the last one


class JobError(ValueError):
    """Settings or a model that a job cannot run with; the message says why."""


@dataclasses.dataclass
class JobSummary:
    total: int  # files in this shard
    skipped: int  # already in the output (resume)
    ok: int
    failed: int
    seconds: float
    stats: dict

    def line(self) -> str:
        scored = self.ok + self.failed
        rate = scored / self.seconds if self.seconds > 0 else 0.0
        resumed = f", {self.skipped} already done" if self.skipped else ""
        return f"scored {scored} files: {self.ok} ok, {self.failed} failed{resumed} in {self.seconds:.1f} s ({rate:.1f} files/s)"


class Progress:
    """A one-line progress display on stderr (files done, files/s, failures), redrawn at most 4x/s."""

    def __init__(self, total: int, stream=sys.stderr, enabled: bool = True):
        self.total, self.stream, self.enabled = total, stream, enabled
        self.start = time.perf_counter()
        self.last = 0.0

    def update(self, done: int, failed: int, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if not force and now - self.last < 0.25:
            return
        self.last = now
        elapsed = now - self.start
        rate = done / elapsed if elapsed > 0 else 0.0
        width = 24
        filled = int(width * done / self.total) if self.total else width
        eta = f" eta {(self.total - done) / rate:.0f} s" if rate > 0 and done < self.total else ""
        self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{self.total} files {rate:.1f} files/s {failed} failed{eta}   ")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


def run_job(
    specs: Sequence[str],
    output: str | None,
    checkpoint: str | None = None,
    device: str | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    decoder: str = "threads",
    resume: bool = False,
    overwrite: bool = False,
    shard: tuple[int, int] | None = None,
    progress: bool | None = None,
    flush_rows: int = FLUSH_ROWS,
    stdout=None,
    stderr=None,
) -> JobSummary:
    """Score the files named by ``specs`` into ``output`` (None: CSV on ``stdout``, no resume).

    Raises :class:`~glam_fast.scoring.inputs.InputError` when an input names no file,
    :class:`~glam_fast.scoring.output.OutputError` when the output cannot be used and
    :class:`JobError` for unusable settings or model, all before anything is scored.
    """
    from glam_fast.checkpoint import CheckpointError
    from glam_fast.scoring.pipeline import Scorer

    stdout = stdout if stdout is not None else sys.stdout
    stderr = stderr if stderr is not None else sys.stderr
    if flush_rows < 1:
        raise JobError(f"flush_rows must be >= 1, got {flush_rows}")

    paths = inputs_mod.expand_inputs(specs)
    if shard is not None:
        paths = inputs_mod.select_shard(paths, *shard)
    if output is not None:
        output_mod.output_format(output)
        if output.lower().endswith(".parquet"):
            output_mod._pyarrow()  # fail before loading the model, not after scoring
    elif resume:
        raise output_mod.OutputError("--resume needs an output file (-o)")
    try:
        scorer = Scorer(checkpoint, device=device, batch_size=batch_size, workers=workers, decoder=decoder)
    except (CheckpointError, FileNotFoundError, ValueError) as error:
        raise JobError(str(error)) from error
    writer = output_mod.open_output(output, scorer.classes, resume, overwrite) if output is not None else _StdoutWriter(stdout, scorer.classes)
    todo = [p for p in paths if p not in writer.done]
    skipped = len(paths) - len(todo)
    show = progress if progress is not None else stderr.isatty()
    bar = Progress(len(todo), stderr, show)
    start = time.perf_counter()
    ok = failed = 0
    buffered, last_flush = [], time.perf_counter()
    try:
        for result in scorer.score(todo):
            buffered.append(output_mod.result_row(result, scorer.classes))
            ok, failed = ok + result.ok, failed + (not result.ok)
            now = time.perf_counter()
            if len(buffered) >= flush_rows or now - last_flush >= FLUSH_SECONDS:
                writer.write(buffered)
                buffered, last_flush = [], now
            bar.update(ok + failed, failed)
        writer.write(buffered)
        buffered = []
    finally:
        if buffered:
            writer.write(buffered)  # an exception mid-run: keep the rows already computed
        bar.update(ok + failed, failed, force=True)
        bar.close()
    writer.close()
    return JobSummary(len(paths), skipped, ok, failed, time.perf_counter() - start, scorer.stats.as_dict())


class _StdoutWriter:
    """CSV rows to a text stream (no resume)."""

    def __init__(self, stream, classes):
        self.stream, self.columns, self.done = stream, output_mod.columns_for(classes), set()
        self.writer = csv.writer(stream, lineterminator="\n")
        self.writer.writerow(self.columns)

    def write(self, rows) -> None:
        for row in rows:
            self.writer.writerow([output_mod._csv_cell(row[c]) for c in self.columns])
        self.stream.flush()

    def close(self) -> None:
        self.stream.flush()
