#!/usr/bin/env bash
# The knowledge-graph tables on one GPU in one go: wn18rr and fb15k-237 (every KG model, 1 seed)
# and path-qa on kinship (every model, 10 seeds), each model in its own process, all at once.
# Every run has a wall-clock budget (--max-minutes) instead of a fixed number of epochs, the
# same for every model of a table; results land in $OUT/<task>-<model>/ and are merged with
#   python benchmarks/merge_results.py benchmarks/results/wn18rr.json DIR/wn18rr-*/wn18rr.json
#
#   OUT=/tmp/gpu WN_MINUTES=5.5 QA_MINUTES=0.5 bash benchmarks/gpu_kg.sh
#   SMOKE=1 DEVICE=cpu bash benchmarks/gpu_kg.sh      # the same commands on the --quick budget
#
# WN18RR and FB15k-237 train on random batches of any relations (the runner's default for them:
# every query its own transitions: on a GPU gathers over the (source, relation) pairs and CSR
# products, or FLOW_BACKEND=triton for the Triton kernels); BATCHES=relation gives one query
# relation per batch instead (each flow one sparse product per step). The rule reference
# (nothing learnt; scipy on the CPU, one epoch: 10 s on WN18RR, about 8 CPU minutes here on
# FB15k-237) runs beside them so that the GPU tables carry it too.
#
# PY may name another interpreter command; wheels in .whl/ (e.g. ogb for a machine without
# it) are installed first.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out="${OUT:?set OUT to the output folder}"
py=${PY:-python3}
device=${DEVICE:-cuda}
wn=${WN_MINUTES:-5.5}
fb=${FB_MINUTES:-$wn}
qa=${QA_MINUTES:-0.5}
qa_seeds=${QA_SEEDS:-10}
qa_kg=${QA_KG:-kinship}
wn_seeds=${WN_SEEDS:-1}
batches=${BATCHES:-mixed}
flow_backend=${FLOW_BACKEND:-torch}
export PYTHONUNBUFFERED=1 OUTDATED_IGNORE=1
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
quick=()
[ -n "${SMOKE:-}" ] && quick=(--quick --epochs 2 --patience 1)
# --resume: runs already in $OUT (an earlier call's seeds) are kept, only new seeds train
common=(--device "$device" --threads 1 --no-progress --resume --flow-backend "$flow_backend"
        "${quick[@]}")
mkdir -p "$out"
# the first load processes the raw files; the processes below then only read them
$py -c "from qgfd_pyg.bench.tasks import load_task as t; t('wn18rr', 'datasets', None, {}); \
t('fb15k-237', 'datasets', None, {})" || exit 1
pids=()
for model in qgfd gat appnp distmult rotate attention rule; do
    $py -m qgfd_pyg.bench wn18rr --models "$model" --seeds "$wn_seeds" --epochs 1000 --patience 5 \
        --max-minutes "$wn" --batches "$batches" --out "$out/wn18rr-$model" "${common[@]}" \
        >"$out/wn18rr-$model.log" 2>&1 &
    pids+=($!)
done
for model in qgfd rotate distmult attention rule; do
    $py -m qgfd_pyg.bench fb15k-237 --models "$model" --seeds "$wn_seeds" --epochs 1000 \
        --patience 5 --max-minutes "$fb" --batches "$batches" --out "$out/fb15k-237-$model" \
        "${common[@]}" \
        >"$out/fb15k-237-$model.log" 2>&1 &
    pids+=($!)
done
for model in qgfd attention gat appnp rule; do
    $py -m qgfd_pyg.bench path-qa --kg "$qa_kg" --models "$model" --seeds "$qa_seeds" \
        --max-minutes "$qa" --out "$out/path-qa-$qa_kg-$model" "${common[@]}" \
        >"$out/path-qa-$qa_kg-$model.log" 2>&1 &
    pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
tail -n 3 "$out"/*.log
exit $status
