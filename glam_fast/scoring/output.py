"""Writing score rows durably: CSV, JSON Lines, Parquet; resuming from what a killed run wrote.

Columns: ``path, status, error, duration_s, n_segments, padded, label`` then ``prob_<class>`` for
each class in the model's order. Every row is one line (error messages are single-line), rows
are appended in batches, and each batch is flushed and ``fsync``-ed before the next, so a run
killed at any moment leaves complete rows followed by at most one torn line.

- On ``resume``, the torn tail (anything after the last newline, or a last JSON line that does
  not parse) is cut off, the paths already present are returned to be skipped, and new rows are
  appended. An existing output is never overwritten unless asked (``overwrite``).
- Parquet cannot be appended to safely, so rows go to a JSON Lines journal beside it
  (``<out>.journal.jsonl``); when the run ends, the journal becomes the Parquet file (written to a
  temporary name, fsync-ed, renamed) and is removed. Resuming reads the journal (or an existing
  Parquet file). Parquet needs ``pyarrow`` (``pip install "glam-fast[parquet]"``).
"""

from __future__ import annotations

import csv
import io
import json
import os

FIXED_COLUMNS = ("path", "status", "error", "duration_s", "n_segments", "padded", "label")
FORMATS = (".csv", ".jsonl", ".parquet")


class OutputError(ValueError):
    """The output cannot be written or resumed as asked; the message says why."""


def columns_for(classes) -> list[str]:
    return [*FIXED_COLUMNS, *(f"prob_{name}" for name in classes)]


def result_row(result, classes) -> dict:
    """A :class:`~glam_fast.scoring.pipeline.ScoreResult` as a row dict (None for empty cells)."""
    row = {
        "path": result.path,
        "status": result.status,
        "error": result.error,
        "duration_s": round(result.duration, 6) if result.duration is not None else None,
        "n_segments": result.n_segments,
        "padded": result.padded,
        "label": result.label,
    }
    probabilities = result.probabilities or [None] * len(classes)
    for name, p in zip(classes, probabilities):
        row[f"prob_{name}"] = p
    return row


def output_format(path: str) -> str:
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in FORMATS:
        raise OutputError(f"{path}: the output must end in {', '.join(FORMATS)} (got {suffix or 'no extension'})")
    return suffix


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _cut_torn_tail(path: str) -> None:
    """Truncate ``path`` after its last newline (a row cut short by a kill)."""
    size = os.path.getsize(path)
    if size == 0:
        return
    with open(path, "rb+") as handle:
        block = 1 << 16
        end = size
        while end > 0:
            start = max(0, end - block)
            handle.seek(start)
            chunk = handle.read(end - start)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            end = start
        else:
            keep = 0
        if keep != size:
            handle.truncate(keep)
            handle.flush()
            os.fsync(handle.fileno())


class _LineWriter:
    """Appends rows as lines to a file; subclasses say how a row becomes a line and is read back."""

    def __init__(self, path: str, columns: list[str], resume: bool, overwrite: bool):
        self.path, self.columns = path, columns
        self.done: set[str] = set()
        exists = os.path.exists(path) and os.path.getsize(path) > 0
        if exists and not (resume or overwrite):
            raise OutputError(f"{path} already exists: pass --resume to continue it or --overwrite to replace it")
        if exists and resume:
            _cut_torn_tail(path)
            self.done = self._read_done()
            self.handle = open(path, "a", encoding="utf-8", newline="")
        else:
            self.handle = open(path, "w", encoding="utf-8", newline="")
            self._start()
            self._sync()
            _fsync_dir(path)

    def _start(self) -> None:
        """Write what a new file begins with (the CSV header)."""

    def _read_done(self) -> set[str]:
        raise NotImplementedError

    def _line(self, row: dict) -> str:
        raise NotImplementedError

    def write(self, rows: list[dict]) -> None:
        """Append rows and make them durable (flush + fsync) before returning."""
        if not rows:
            return
        self.handle.write("".join(self._line(row) for row in rows))
        self._sync()

    def _sync(self) -> None:
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def close(self) -> None:
        self.handle.close()


def _csv_cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


class CsvWriter(_LineWriter):
    def _start(self) -> None:
        self.handle.write(self._format(self.columns))

    def _format(self, cells) -> str:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerow(cells)
        return buffer.getvalue()

    def _line(self, row: dict) -> str:
        return self._format([_csv_cell(row[c]) for c in self.columns])

    def _read_done(self) -> set[str]:
        with open(self.path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                raise OutputError(f"{self.path}: cannot resume, the file has no header line")
            if header != self.columns:
                raise OutputError(
                    f"{self.path}: cannot resume, its columns {header} differ from this model's {self.columns} "
                    "(a different checkpoint?)"
                )
            return {row[0] for row in reader if row}


class JsonlWriter(_LineWriter):
    def _line(self, row: dict) -> str:
        return json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n"

    def _read_done(self) -> set[str]:
        done = set()
        with open(self.path, encoding="utf-8") as handle:
            lines = handle.read().split("\n")
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise OutputError(f"{self.path}, line {number}: not a JSON row ({error}); cannot resume") from None
            if set(row) != set(self.columns):
                raise OutputError(f"{self.path}, line {number}: its columns differ from this model's {self.columns} (a different checkpoint?)")
            done.add(row["path"])
        return done


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise OutputError('writing Parquet needs pyarrow: pip install "glam-fast[parquet]" (or write .csv / .jsonl)') from None
    return pyarrow


class ParquetWriter:
    """Rows journalled to ``<path>.journal.jsonl``; the Parquet file is written by :meth:`close`."""

    def __init__(self, path: str, columns: list[str], resume: bool, overwrite: bool):
        self.pa = _pyarrow()
        self.path, self.columns = path, columns
        self.journal_path = path + ".journal.jsonl"
        journal_exists = os.path.exists(self.journal_path) and os.path.getsize(self.journal_path) > 0
        if (journal_exists or os.path.exists(path)) and not (resume or overwrite):
            raise OutputError(f"{path} (or its journal {self.journal_path}) already exists: pass --resume to continue it or --overwrite to replace it")
        if resume and not journal_exists and os.path.exists(path):
            self._journal_from_parquet()
            resume_journal = True
        else:
            resume_journal = resume and journal_exists
        self.journal = JsonlWriter(self.journal_path, columns, resume=resume_journal, overwrite=True)
        self.done = self.journal.done

    def _journal_from_parquet(self) -> None:
        table = self.pa.parquet.read_table(self.path)
        if table.column_names != self.columns:
            raise OutputError(f"{self.path}: cannot resume, its columns {table.column_names} differ from this model's {self.columns}")
        tmp = self.journal_path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as handle:
            for row in table.to_pylist():
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.journal_path)

    def write(self, rows: list[dict]) -> None:
        self.journal.write(rows)

    def close(self) -> None:
        self.journal.close()
        pa = self.pa
        rows = []
        with open(self.journal_path, encoding="utf-8") as handle:
            rows = [json.loads(line) for line in handle if line.strip()]
        types = {"path": pa.string(), "status": pa.string(), "error": pa.string(), "duration_s": pa.float64(), "n_segments": pa.int64(), "padded": pa.bool_(), "label": pa.string()}
        schema = pa.schema([(c, types.get(c, pa.float64())) for c in self.columns])
        table = pa.Table.from_pylist(rows, schema=schema)
        tmp = self.path + ".tmp"
        pa.parquet.write_table(table, tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)
        _fsync_dir(self.path)
        os.remove(self.journal_path)


def open_output(path: str, classes, resume: bool = False, overwrite: bool = False):
    """A writer for ``path`` (by extension) with ``.done`` = paths already written (when resuming)."""
    suffix = output_format(path)
    columns = columns_for(classes)
    if suffix == ".parquet":
        return ParquetWriter(path, columns, resume, overwrite)
    return (CsvWriter if suffix == ".csv" else JsonlWriter)(path, columns, resume, overwrite)


def read_rows(path: str) -> list[dict]:
    """The rows of a finished output file (CSV cells come back as strings)."""
    suffix = output_format(path)
    if suffix == ".parquet":
        return _pyarrow().parquet.read_table(path).to_pylist()
    with open(path, newline="", encoding="utf-8") as handle:
        if suffix == ".csv":
            return list(csv.DictReader(handle))
        return [json.loads(line) for line in handle if line.strip()]
