#!/usr/bin/env bash
# The VGG rows of Table 1 on one GPU: dense pretraining, then BC-GNJ and BC-GHS side by side.
#
#   bash reproduce/gpu/vgg.sh DATA_DIR RESULTS_DIR [PROFILE] [DEVICE]
#
# Run from the repository root (no install needed: PYTHONPATH=.). DATA_DIR holds CIFAR10/ as in
# ../shared/data; RESULTS_DIR receives results/<id>/<profile>/seed0/ exactly as `reproduce run` writes
# them (copy it over ./results and commit; *.large.pt stay out of git). The `paper` profile keeps the
# training data resident on the GPU, uses channels_last and bf16 autocast (experiments.toml:
# amp_bf16), and was sized for about 10 minutes on one H200 (REPRODUCING.md, "VGG on a GPU").
# Test it on a CPU at tiny size with:  bash reproduce/gpu/vgg.sh ../shared/data /tmp/r quick cpu
# The interpreter is `python` on PATH (the one `pip install .` installed into); PYTHON=/path/to/python overrides it.
set -euo pipefail
DATA=${1:?DATA_DIR (with CIFAR10/) missing}
OUT=${2:?RESULTS_DIR missing}
PROFILE=${3:-paper}
DEVICE=${4:-cuda}
PY=${PYTHON:-python}  # the interpreter with torch
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$(pwd)"
mkdir -p "$OUT"
LOG="$OUT/gpu_job_${PROFILE}.log"
run() {  # one experiment; its own log, timing on stdout
  local t0=$SECONDS
  "$PY" -m reproduce run "$1" --profile "$PROFILE" --device "$DEVICE" --data-dir "$DATA" \
    --results-dir "$OUT" --no-progress >"$OUT/$1.$PROFILE.log" 2>&1
  echo "$1 [$PROFILE] finished in $((SECONDS - t0)) s: $(tail -n 1 "$OUT/$1.$PROFILE.log")"
}
{
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
             torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')"
  run vgg_cifar.dense
  run vgg_cifar.bc_gnj & gnj=$!
  run vgg_cifar.bc_ghs & ghs=$!
  status=0
  wait $gnj || status=1
  wait $ghs || status=1
  echo "whole job: $SECONDS s, exit $status"
  exit $status
} 2>&1 | tee "$LOG"
