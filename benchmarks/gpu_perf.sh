#!/usr/bin/env bash
# The performance tables on one GPU in one go, for a machine lent for a few minutes (torch with
# CUDA, PyG, Triton; torch-sparse, torch-scatter and pyg-lib need not be there):
#   1. the device-parametrised tests and the Triton kernels' tests on CUDA (kNN, flow),
#   2. perf_attention.py on CUDA (bf16, causal, L = 1024 / 4096 / 16384, the issue's setting),
#   3. perf_uncached.py part 1 on CUDA (the NeighborLoader part needs pyg-lib or torch-sparse),
#   4. perf_graph.py on CUDA up to ogbn-products' size,
#   5. perf_flow.py on CUDA (the query-conditioned flow step against torch's CSR product; the
#      torch path and set_flow_backend("triton")'s kernels).
# Each step writes its tables under $OUT/results/ as it goes; a step that fails or runs out of
# time leaves the earlier ones intact (copy them to benchmarks/results/ afterwards). The
# steps' time limits add up to 9.5 minutes, inside one 10-minute device command.
#
#   OUT=/tmp/gpu bash benchmarks/gpu_perf.sh
#   SMOKE=1 OUT=/tmp/gpu DEVICE=cpu bash benchmarks/gpu_perf.sh   # tiny sizes, to check it runs
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out="${OUT:?set OUT to the output folder}"
py=${PY:-python3}
device=${DEVICE:-cuda}
export PYTHONUNBUFFERED=1 OUTDATED_IGNORE=1
mkdir -p "$out/results"
lengths=1024,4096,16384
sizes=100000,1000000
graph_extra=(--products)
uncached=(--sizes 20000,200000,1000000)
if [ -n "${SMOKE:-}" ]; then
    lengths=256
    sizes=2000
    graph_extra=(--no-cora --max-dense-bytes 0)
    uncached=(--sizes 2000 --repeats 1 --loader-nodes 3000 --batches 1)
fi
echo "== tests on $device" | tee "$out/tests.log"
timeout 90 $py -m pytest -q -p no:cacheprovider tests/test_conv.py tests/test_attention.py \
    tests/test_diffusion.py tests/test_knn_triton.py tests/test_structure.py tests/test_flow.py \
    -k "$device or triton" >>"$out/tests.log" 2>&1
tail -3 "$out/tests.log"
echo "== perf_attention"
timeout 150 $py benchmarks/perf_attention.py --device "$device" --dtype bfloat16 --causal \
    --lengths "$lengths" --out "$out/results" >"$out/perf_attention.log" 2>&1
tail -2 "$out/perf_attention.log"
echo "== perf_uncached"
timeout 90 $py benchmarks/perf_uncached.py --device "$device" "${uncached[@]}" \
    --out "$out/results" >"$out/perf_uncached.log" 2>&1
tail -2 "$out/perf_uncached.log"
echo "== perf_graph"
timeout 180 $py benchmarks/perf_graph.py --device "$device" --sizes "$sizes" \
    "${graph_extra[@]}" --out "$out/results" >"$out/perf_graph.log" 2>&1
tail -2 "$out/perf_graph.log"
echo "== perf_flow"
flow_graphs=40943:215000:23,14541:559000:475,200000:4000000:20
[ -n "${SMOKE:-}" ] && flow_graphs=2000:10000:5
timeout 60 $py benchmarks/perf_flow.py --device "$device" --graphs "$flow_graphs" \
    --out "$out/results" >"$out/perf_flow.log" 2>&1
tail -2 "$out/perf_flow.log"
ls "$out/results"
