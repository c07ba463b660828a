"""The trial tables of docs/training.md from the run folders of benchmarks/recipe_trials.sh and
benchmarks/wild_trials.sh.

    python3 benchmarks/trial_table.py runs/trials
    python3 benchmarks/trial_table.py runs/wild

One row per run, in the order they ran: its last epoch's val accuracy per source, their mean, the
val balanced accuracy and the training seconds; where the run folder holds `sfew_val_e2e.json`
(benchmarks/bench_folder.py), the end-to-end accuracy and mean per-class recall on SFEW val.
"""
import json
import sys
from pathlib import Path

NAMES = {"ferplus": "FER+ val", "ckplus48": "CK+ fold 1", "sfew": "SFEW val"}


def main(folder: Path) -> None:
    runs = sorted((p for p in folder.iterdir() if (p / "log.jsonl").is_file()), key=lambda p: p.stat().st_mtime)
    records = {run: [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()] for run in runs}
    sources = [s for s in NAMES if any(s in r[-1]["val_acc_per_source"] for r in records.values())]
    e2e = any((run / "sfew_val_e2e.json").is_file() for run in runs)
    head = [f"{NAMES[s]} %" for s in sources] + ["mean %", "balanced acc. (all val) %"]
    head += ["SFEW val end to end %", "its mean per-class recall %"] if e2e else []
    print("| run | " + " | ".join(head) + " | train s |")
    print("| --- |" + " --- |" * (len(head) + 1))
    for run, history in records.items():
        last = history[-1]
        src = last["val_acc_per_source"]
        cells = [f"{100 * src[s]:.2f}" if s in src else "" for s in sources]
        cells += [f"{100 * sum(src.values()) / len(src):.2f}", f"{100 * last['val_balanced_acc']:.2f}"]
        if e2e:
            path = run / "sfew_val_e2e.json"
            figures = json.loads(path.read_text()) if path.is_file() else None
            cells += ([f"{100 * figures['accuracy']:.2f}", f"{100 * figures['mean_class_recall']:.2f}"]
                      if figures else ["", ""])
        seconds = sum(r["seconds"] for r in history)
        print(f"| {run.name} | " + " | ".join(cells) + f" | {seconds:.0f} |")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/trials"))
