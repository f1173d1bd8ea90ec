"""Write docs/results.md (and docs/results/*) from finished `glam-fast train` run folders.

    python tools/results_report.py --out docs [--note RUN_NAME=TEXT ...] RUN_DIR[=COMMAND] ...

Each RUN_DIR holds run.json, summary.json and one metrics.json per fold (what `glam-fast train`
writes). COMMAND, when given, is printed beside that run's numbers (the exact command that made
it); a --note is printed under that run's heading (e.g. how it departs from the recipe). For
every run the per-fold metrics JSON is copied to docs/results/<run>/ and a confusion
matrix summed over folds is plotted to docs/results/<run>-confusion.png.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from glam_fast.train import plot_confusion

INTRO = """# Results on EmoDB (this project's processed copy)

Numbers below are produced by `glam-fast train` on `../shared/data/emodb`: 535 EmoDB utterances,
7 classes, 10 speakers. **This copy is processed: every file is 16-bit mono at 22,050 Hz and
exactly 2.000 s long** (409 clips cut at 2 s, 126 zero-padded; the originals are 1.2-9.0 s at
16 kHz). The numbers are therefore **not comparable with published EmoDB results**, which use the
full-length audio; they are comparable between models run on this same copy.

Metrics are at utterance level: WA (accuracy), UA (macro-averaged recall), macro-F1 and
weighted-F1, mean ± standard deviation over folds (population std). Protocols:

- `speaker-independent` (the honest number): 5 folds of 2 test speakers; the epoch is chosen on
  one validation speaker taken from the training speakers, never on the test fold.
- `paper` (GLAM): random 80/20 utterance splits, one per seed, reporting the epoch with the best
  (WA+UA)/2 **on the test split**, as the authors did: optimistic by construction.
"""


def _row(name: str, summary: dict) -> str:
    cells = [f"{summary[k]['mean'] * 100:.1f} ± {summary[k]['std'] * 100:.1f}" for k in ("wa", "ua", "macro_f1", "weighted_f1")]
    return f"| {name} | {summary['folds']} | " + " | ".join(cells) + " |"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="RUN_DIR or RUN_DIR=COMMAND")
    parser.add_argument("--out", default="docs", help="docs folder (results.md and results/ are written there)")
    parser.add_argument("--note", action="append", default=[], help="RUN_NAME=TEXT, printed under that run's heading")
    args = parser.parse_args()
    notes = dict(note.split("=", 1) for note in args.note)
    out = Path(args.out)
    (out / "results").mkdir(parents=True, exist_ok=True)
    table = ["| run | folds | WA % | UA % | macro-F1 % | weighted-F1 % |", "|---|---|---|---|---|---|"]
    sections = []
    for spec in args.runs:
        folder, _, command = spec.partition("=")
        folder = Path(folder)
        run = json.loads((folder / "run.json").read_text())
        summary = json.loads((folder / "summary.json").read_text())
        name = folder.name
        table.append(_row(name, summary))
        target = out / "results" / name
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(folder / "summary.json", target / "summary.json")
        shutil.copy(folder / "run.json", target / "run.json")
        folds = []
        for fold in run["folds"]:
            metrics = json.loads((folder / fold / "metrics.json").read_text())
            shutil.copy(folder / fold / "metrics.json", target / f"{fold}.json")
            folds.append(metrics)
        summed = {"confusion": summary["confusion"], "classes": summary["classes"], "wa": summary["wa"]["mean"], "ua": summary["ua"]["mean"]}
        plot_confusion(summed, out / "results" / f"{name}-confusion.png", f"{name} (all folds)")
        t = run["training"]
        lines = [
            f"## {name}",
            "",
            f"Model `{t['model']}`, protocol `{t['protocol']}`, {len(run['folds'])} folds, {t['epochs']} epochs, batch {t['batch_size']}, "
            f"lr {t['lr']}, seed {t['seed']}, {run['n_files'] - len(run['skipped'])} of {run['n_files']} files used.",
            "",
        ]
        if name in notes:
            lines += [notes[name], ""]
        if command:
            lines += ["```bash", command, "```", ""]
        lines += ["| fold | test speakers | selected epoch | WA % | UA % | macro-F1 % | weighted-F1 % |", "|---|---|---|---|---|---|---|"]
        for m in folds:
            r = m["test"]
            lines.append(
                f"| {m['fold']} | {' '.join(m['test_speakers']) or '-'} | {m['selected_epoch']} | {r['wa'] * 100:.1f} | {r['ua'] * 100:.1f} | "
                f"{r['macro_f1'] * 100:.1f} | {r['weighted_f1'] * 100:.1f} |"
            )
        lines += ["", f"![confusion, all folds](results/{name}-confusion.png)", ""]
        sections.append("\n".join(lines))
    text = INTRO + "\n## Summary\n\n" + "\n".join(table) + "\n\n" + "\n".join(sections)
    (out / "results.md").write_text(text)
    print(f"wrote {out / 'results.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
