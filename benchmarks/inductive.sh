#!/usr/bin/env bash
# GraIL's inductive splits, the tables of docs/results.md ("Inductive KG completion"): every
# model of the ind-* tasks (qgfd, attention, nbfnet, ppr, rule, untrained) on each split, the
# same per-run budget for every model. Resumable: a finished run is kept and only what is
# missing trains, so the script can be stopped and started again (one split at a time, so a
# session that stops mid-way loses at most the run in progress).
#
#   bash benchmarks/inductive.sh                      # every split, CPU budget below
#   SPLITS="ind-fb237-v1 ind-nell-v1" SEEDS=3 MINUTES=8 bash benchmarks/inductive.sh
#   DEVICE=cuda MINUTES=30 EPOCH_BATCHES= bash benchmarks/inductive.sh   # a GPU: NBFNet's 20 epochs
#
# CPU budget: an epoch is EPOCH_BATCHES random batches of 64 queries (so that the budget and
# early stopping are checked often), at most MINUTES of training + validation per run, early
# stopping after PATIENCE epochs without a better validation MRR. On 2 CPU cores NBFNet's
# published 20 full epochs take hours per split; the budget is the same for every model and the
# table states it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
splits=${SPLITS:-"ind-fb237-v1 ind-wn18rr-v1 ind-nell-v1 ind-fb237-v2 ind-wn18rr-v2 ind-nell-v2 ind-fb237-v3 ind-wn18rr-v3 ind-nell-v3 ind-fb237-v4 ind-wn18rr-v4 ind-nell-v4"}
seeds=${SEEDS:-3}
minutes=${MINUTES:-8}
epoch_batches=${EPOCH_BATCHES-20}
patience=${PATIENCE:-10}
epochs=${EPOCHS:-100}
out=${OUT:-benchmarks/results}
py=${PY:-./run python}
batches=()
[ -n "$epoch_batches" ] && batches=(--epoch-batches "$epoch_batches")
for task in $splits; do
    $py -m qgfd_pyg.bench "$task" --seeds "$seeds" --resume --no-progress --out "$out" \
        --max-minutes "$minutes" --epochs "$epochs" --patience "$patience" \
        --device "${DEVICE:-cpu}" --threads "${THREADS:-1}" "${batches[@]}" \
        --models "${MODELS:-ppr,rule,untrained,qgfd,attention,nbfnet}"
done
