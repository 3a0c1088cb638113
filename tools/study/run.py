#!/usr/bin/env python3
"""The TopK-vs-SeqTopK study of docs/study.md: the paper's three regimes at CPU scale.

One command runs everything and rewrites docs/study.md from the runs' outputs:

  1. scratch   - 16-expert top-4 MoEs pretrained from nothing with topk and with seqtopk
                 (recipes/study/scratch-*-k4.toml), one pair per seed;
  2. sparsify  - each seed's TopK model fine-tuned at K = 2 and K = 1 with topk and with seqtopk
                 (recipes/study/sparsify-*-k*.toml);
  3. swap      - each seed's TopK model evaluated with no training under topk, seqtopk,
                 online_seqtopk (rank and strict budgets) and batch_topk at K = 4, 2, 1
                 (recipes/study/swap-eval.toml with `train --eval-only`).

Every held-out figure comes from `seqtopk train --eval-only`, on the same validation documents
(the recipes share `[data]`). Finished runs and evaluations are kept and skipped; an interrupted
run is continued with `--resume`. So the command can be stopped and started again at any time.

Usage: python3 tools/study/run.py [--seeds 0,1,2] [--out runs/study] [--only-tables]
  env: SEQTOPK (the binary; default target/release/seqtopk, built when missing)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "recipes" / "study"
TOKENIZER_VOCAB = 4096
SWAP_MODES = ["topk", "seqtopk", "online_seqtopk", "online_seqtopk:strict", "batch_topk"]
SWAP_KS = [4, 2, 1]
SPARSIFY_KS = [2, 1]
ROUTERS = ["topk", "seqtopk"]
# LAMBADA items scored per model (of 5,153): last-word log-likelihood, as a zero-shot task.
LAMBADA_LIMIT = 1000


def log(msg: str) -> None:
    print(f"[study] {msg}", file=sys.stderr, flush=True)


class Study:
    def __init__(self, binary: Path, out: Path, seeds: list[int]):
        self.bin = binary
        self.out = out
        self.seeds = seeds
        (out / "eval").mkdir(parents=True, exist_ok=True)
        (out / "logs").mkdir(parents=True, exist_ok=True)

    def seqtopk(self, args: list[str], log_name: str) -> str:
        """Runs the binary; its stderr goes to logs/<log_name>.log, its stdout is returned."""
        with open(self.out / "logs" / f"{log_name}.log", "a") as err:
            done = subprocess.run(
                [str(self.bin), *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True
            )
        if done.returncode != 0:
            raise SystemExit(
                f"[study] `seqtopk {' '.join(args)}` failed ({done.returncode}); "
                f"see {self.out / 'logs' / (log_name + '.log')}"
            )
        return done.stdout

    def run_dir(self, run: str, seed: int) -> Path:
        return self.out / run / f"seed{seed}"

    def train(self, recipe: str, run: str, seed: int, start: Path | None = None) -> Path:
        """Trains `recipe` for `seed` unless its final model exists; returns the final model."""
        out = self.run_dir(run, seed)
        final = out / "final"
        if (final / "manifest.json").exists():
            return final
        args = [
            "train", "--recipe", str(RECIPES / f"{recipe}.toml"), "--no-progress",
            "--set", f"seed={seed}", "--set", f'output_dir="{out}"',
        ]
        if start is not None:
            args += ["--set", f'model.checkpoint="{start}"']
        if any(out.glob("checkpoint-*")):
            args.append("--resume")
            log(f"{run} seed {seed}: continuing")
        else:
            # Nothing to resume: events of an attempt that saved no checkpoint would be
            # written twice, so that attempt's directory goes.
            shutil.rmtree(out, ignore_errors=True)
            log(f"{run} seed {seed}: training")
        self.seqtopk(args, f"{run}-seed{seed}")
        return final

    def evaluate(self, model: Path, name: str, mode: str, k: int) -> dict:
        """Held-out loss per domain of `model` under router `mode` (`online_seqtopk:strict` for the
        strict online budget) at `k`, cached as eval/<name>.json."""
        path = self.out / "eval" / f"{name}.json"
        if path.exists():
            return json.loads(path.read_text())
        router, _, budget = mode.partition(":")
        args = [
            "train", "--recipe", str(RECIPES / "swap-eval.toml"), "--eval-only",
            "--set", f'model.checkpoint="{model}"',
            "--set", f'router.mode="{router}"', "--set", f"router.top_k={k}",
        ]
        if budget:
            args += ["--set", f'router.online_budget="{budget}"']
        report = json.loads(self.seqtopk(args, f"eval-{name}"))
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(report, indent=1))
        tmp.replace(path)
        return report

    def lambada(self, model: Path, name: str, mode: str, k: int) -> None:
        """LAMBADA (first LAMBADA_LIMIT items) under router `mode` at `k`: lambada/<name>.json."""
        path = self.out / "lambada" / f"{name}.json"
        if path.exists():
            return
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_suffix(".tmp.json")
        tmp.unlink(missing_ok=True)
        self.seqtopk(
            ["eval", "--checkpoint", str(model), "--data-dir", "data", "--tasks", "lambada",
             "--limit", str(LAMBADA_LIMIT), "--router", mode, "--k", str(k), "--no-items",
             "--out", str(tmp)],
            f"lambada-{name}",
        )
        tmp.replace(path)

    def prepare(self) -> None:
        if not (ROOT / "data" / "math" / "math_train.jsonl").exists():
            log("fetching the corpora")
            subprocess.run(["bash", "tools/fetch-corpora.sh"], cwd=ROOT, check=True)
        tokenizer = ROOT / "data" / "tokenizers" / f"study-bpe{TOKENIZER_VOCAB}" / "tokenizer.json"
        if not tokenizer.exists():
            log(f"training the study's BPE tokenizer ({TOKENIZER_VOCAB} tokens)")
            self.seqtopk(
                ["tokenizer", "--recipe", str(RECIPES / "scratch-topk-k4.toml"),
                 "--vocab-size", str(TOKENIZER_VOCAB)],
                "tokenizer",
            )

    def run_all(self) -> None:
        self.prepare()
        for seed in self.seeds:
            # Regime 1: both routers from the same initialisation and data order.
            finals = {r: self.train(f"scratch-{r}-k4", f"scratch-{r}-k4", seed) for r in ROUTERS}
            for r, final in finals.items():
                self.evaluate(final, f"scratch-{r}-k4-seed{seed}", r, 4)
            self.evaluate(finals["seqtopk"], f"scratch-seqtopk-k4-seed{seed}-online",
                          "online_seqtopk", 4)
            start = finals["topk"]
            # Regime 3 before regime 2: the swap needs no training.
            for k in SWAP_KS:
                for mode in SWAP_MODES:
                    self.evaluate(start, f"swap-{mode.replace(':', '-')}-k{k}-seed{seed}", mode, k)
            # Regime 2: from the TopK K = 4 model, fine-tuned at reduced K with each router.
            for k in SPARSIFY_KS:
                for r in ROUTERS:
                    run = f"sparsify-{r}-k{k}"
                    final = self.train(run, run, seed, start=start)
                    self.evaluate(final, f"{run}-seed{seed}", r, k)
                    if r == "seqtopk":
                        self.evaluate(final, f"{run}-seed{seed}-online", "online_seqtopk", k)
        # LAMBADA for regime 1, last: the held-out tables do not wait for it.
        for seed in self.seeds:
            for r in ROUTERS:
                final = self.run_dir(f"scratch-{r}-k4", seed) / "final"
                self.lambada(final, f"scratch-{r}-k4-seed{seed}", r, 4)
            self.lambada(self.run_dir("scratch-seqtopk-k4", seed) / "final",
                         f"scratch-seqtopk-k4-seed{seed}-online", "online_seqtopk", 4)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    ap.add_argument("--out", default="runs/study", help="where runs and evaluations go")
    ap.add_argument("--only-tables", action="store_true", help="rewrite docs/study.md only")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if len(seeds) < 1:
        raise SystemExit("[study] --seeds lists no seed")
    out = (ROOT / args.out).resolve()
    binary = Path(os.environ.get("SEQTOPK", ROOT / "target" / "release" / "seqtopk"))
    started = time.time()
    if not args.only_tables:
        if not binary.exists():
            log("building the release binary")
            subprocess.run(["cargo", "build", "--release", "-p", "seqtopk-cli"], cwd=ROOT, check=True)
        Study(binary, out, seeds).run_all()
        elapsed = time.time() - started
        timing = out / "wall_time.json"
        previous = json.loads(timing.read_text())["seconds"] if timing.exists() else 0.0
        timing.write_text(json.dumps({"seconds": previous + elapsed}))
    sys.path.insert(0, str(Path(__file__).parent))
    import tables  # noqa: E402  (beside this script)

    tables.write_doc(out, seeds, ROOT / "docs" / "study.md")
    log(f"docs/study.md rewritten from {out}")


if __name__ == "__main__":
    main()
