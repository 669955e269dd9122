#!/usr/bin/env bash
# Table 2 on a GPU: inference speed of every recorded model (dense, structured, sparse CSR) and the
# training cost of each method, timed on the device (torch.cuda.synchronize around every pass).
#
#   bash reproduce/gpu/table2.sh RESULTS_DIR [DEVICE] [DATA_DIR]
#
# Run from the repository root after reproduce/gpu/vgg.sh wrote its VGG results into the same
# RESULTS_DIR (without them the table covers the LeNets). The committed LeNet results are copied
# into RESULTS_DIR first; RESULTS_DIR/bench/cuda/ and RESULTS_DIR/figures/table2.* come back: copy
# bench/cuda/ over results/bench/ and rerun `python -m reproduce table2 --no-measure` to render both
# devices. Test on a CPU with:  bash reproduce/gpu/table2.sh /tmp/t2 cpu
# The interpreter is `python` on PATH (the one `pip install .` installed into); PYTHON=/path/to/python overrides it.
set -euo pipefail
OUT=${1:?RESULTS_DIR missing}
DEVICE=${2:-cuda}
PY=${PYTHON:-python}
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$(pwd)"
mkdir -p "$OUT"
cp -rn results/. "$OUT"/  # the recorded LeNet models; keeps what vgg.sh wrote
DATA_ARGS=()
[ -n "${3:-}" ] && DATA_ARGS=(--data-dir "$3")
t0=$SECONDS
"$PY" -m reproduce table2 --device "$DEVICE" --threads 1 --results-dir "$OUT" --figures-dir "$OUT/figures" \
  --no-progress "${DATA_ARGS[@]}" 2>&1 | tee "$OUT/table2_$DEVICE.log"
echo "table2 on $DEVICE: $((SECONDS - t0)) s"
