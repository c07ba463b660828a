"""The table of docs/training.md from the run folders of benchmarks/recipe_trials.sh.

    python3 benchmarks/trial_table.py runs/trials
"""
import json
import sys
from pathlib import Path


def main(folder: Path) -> None:
    runs = sorted((p for p in folder.iterdir() if (p / "log.jsonl").is_file()), key=lambda p: p.stat().st_mtime)
    print("| change | FER+ val % | CK+ fold 1 % | mean of the two % | balanced acc. (all val) % | train s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for run in runs:
        record = json.loads((run / "log.jsonl").read_text().splitlines()[-1])
        src = record["val_acc_per_source"]
        mean = sum(src.values()) / len(src)
        print(f"| {run.name} | {100 * src.get('ferplus', float('nan')):.2f} | "
              f"{100 * src.get('ckplus48', float('nan')):.2f} | {100 * mean:.2f} | "
              f"{100 * record['val_balanced_acc']:.2f} | {record['seconds']:.0f} |")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/trials"))
