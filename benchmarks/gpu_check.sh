#!/usr/bin/env bash
# The GPU check of issue 14 in one call, on a CUDA machine that already has PyTorch and Triton and no
# internet (the lent H200: Python 3.12, its own torch). From anywhere:
#   bash benchmarks/gpu_check.sh [--smoke] [more benchmarks/gpu_check.py options]
# Beforehand, where pip reaches PyPI: bash benchmarks/gpu_wheels.sh (wheels into .whl/), and bring
# .whl/ along (the device tool: carry [".whl"]).
#  1. the carried wheels go into a private folder on PYTHONPATH (never into torch's environment);
#  2. capsbench itself: pip install --no-deps -e . (falls back to the checkout on PYTHONPATH);
#     torch's version is checked before and after: nothing here may change it;
#  3. the CUDA-relevant tests (fused kernels against the reference, determinism);
#  4. the table: train-step ms and peak memory, every routing x depth 1/5/10 x reference/fused x
#     fp32/bf16 at batch 128, 32x32, plus a paper-protocol step per method (benchmarks/gpu_check.py).
# Under 8 minutes in all (--smoke: about one to two, mostly Triton compiling; estimated, not yet run). Results: benchmarks/results/gpu-check-<gpu>[-smoke]/
# (environment.json, routing.json, paper.json, table.md, tests.log), copied into $OUT when it is set.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
TOTAL_S=465  # leaves a margin under 8 minutes for the last configuration in flight
smoke=""
for arg in "$@"; do [[ $arg == --smoke ]] && smoke="-smoke"; done

"$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' \
  || { echo "gpu_check: $PY sees no CUDA device" >&2; exit 2; }
torch_before=$("$PY" -c 'import torch; print(torch.__version__)')

if compgen -G ".whl/*.whl" >/dev/null; then
  site=${CAPSBENCH_WHEEL_SITE:-/tmp/capsbench-wheels}
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl \
    || { echo "gpu_check: installing the carried wheels failed" >&2; exit 2; }
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! "$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e . ; then
  echo "gpu_check: pip install --no-deps -e . failed; using the checkout through PYTHONPATH"
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
[[ $("$PY" -c 'import torch; print(torch.__version__)') == "$torch_before" ]] \
  || { echo "gpu_check: torch changed during the install" >&2; exit 2; }
"$PY" -c 'import capsbench.bench, capsbench.spec' \
  || { echo "gpu_check: capsbench does not import: run benchmarks/gpu_wheels.sh and carry .whl" >&2; exit 2; }

gpu=$("$PY" -c 'import torch; print(torch.cuda.get_device_name(0).replace(" ", "_").lower())')
results="benchmarks/results/gpu-check-$gpu$smoke"
mkdir -p "$results"
echo "gpu_check: torch $torch_before on $gpu; results in $results"

tests=(tests/test_triton_em.py)
for extra in tests/test_*fused*.py tests/test_*routing_impl*.py; do [[ -e $extra ]] && tests+=("$extra"); done
selection=()
[[ -n $smoke ]] && selection=(-k "cuda")
timeout 150 "$PY" -m pytest -q -p no:cacheprovider -n 4 "${selection[@]}" "${tests[@]}" 2>&1 | tee "$results/tests.log"
tests_status=${PIPESTATUS[0]}

budget=$(( TOTAL_S - SECONDS - 45 ))
(( budget < 60 )) && budget=60
PYTHONUNBUFFERED=1 "$PY" benchmarks/gpu_check.py --out "$results" --budget-s "$budget" "$@"
bench_status=$?

[[ -n ${OUT:-} ]] && cp -r "$results" "$OUT/"
echo "gpu_check: tests exit $tests_status, benchmark exit $bench_status, ${SECONDS} s in all"
(( tests_status == 0 && bench_status == 0 ))
