#!/usr/bin/env python3
"""Merge the study's `seqtopk eval` JSON files (runs/study/<model>-<group>.json) into one Markdown
table: a row per (model, router, K), a column per task, the accuracy-type average, perplexities.

Usage: python3 tools/study_table.py [runs/study] > table.md
"""

import json
import sys
from pathlib import Path

MODELS = [("upcycled", "upcycled, not fine-tuned"), ("ft-topk", "fine-tuned with topk"),
          ("ft-seqtopk", "fine-tuned with seqtopk")]
SCORED = ["gsm8k", "humaneval", "mmlu_law", "lambada"]
PPL = ["ppl_math", "ppl_code", "ppl_law", "ppl_writing"]


def main():
    out_dir = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/study")
    rows = {}
    for model, _ in MODELS:
        for path in sorted(out_dir.glob(f"{model}-*.json")):
            for run in json.loads(path.read_text())["runs"]:
                key = (model, run["router"], run["k"])
                cells = rows.setdefault(key, {})
                for result in run["results"]:
                    cells[result["task"]] = (result["score"], result["n"])
    head = ["model", "router", "K"] + [f"{t} (n)" for t in SCORED] + ["average"]
    head += [f"{t} (↓)" for t in PPL]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * 3 + "---:|" * (len(head) - 3))
    for model, label in MODELS:
        for (m, router, k), cells in rows.items():
            if m != model:
                continue
            line = [label, router, str(k)]
            scores = []
            for task in SCORED:
                if task in cells:
                    score, n = cells[task]
                    scores.append(100 * score)
                    line.append(f"{100 * score:.1f} ({n})")
                else:
                    line.append("–")
            line.append(f"{sum(scores) / len(scores):.1f}" if len(scores) == len(SCORED) else "–")
            line += [f"{cells[t][0]:.3f}" if t in cells else "–" for t in PPL]
            print("| " + " | ".join(line) + " |")


if __name__ == "__main__":
    main()
