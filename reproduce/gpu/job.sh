#!/usr/bin/env bash
# The GPU job (reproduce/gpu_job.py, REPRODUCING.md "The GPU job"): the VGG rows of Table 1 (dense, then
# BC-GNJ and BC-GHS side by side), the VGG baselines, Table 2 and the LeNet-5-Caffe BC rows as far as
# the budget allows, on one GPU, from source (no install: PYTHONPATH=.).
#
#   bash reproduce/gpu/job.sh OUT DATA_DIR [options of python -m reproduce.gpu_job]
#
# e.g.  bash reproduce/gpu/job.sh "$OUT" .gpu_data --budget 540      (on the GPU machine; installs the
#       wheels of DATA_DIR/wheels/, which reproduce/gpu/stage.sh prepare put there, into a temporary folder)
#       bash reproduce/gpu/job.sh /tmp/out ../shared/data --rehearsal --budget 300   (CPU dress rehearsal)
# The interpreter is python3 (the GPU machine's, with torch); PYTHON=/path/to/python overrides it.
set -euo pipefail
OUT=$(realpath -m "${1:?OUT (output folder) missing}")
DATA=$(realpath -m "${2:?DATA_DIR (with CIFAR10/, and MNIST/raw/ for the LeNet rows and Table 2) missing}")
shift 2
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if compgen -G "$DATA/wheels/*.whl" >/dev/null; then  # dependencies the machine lacks (reproduce/gpu/stage.sh)
  SITE=$(mktemp -d)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$DATA"/wheels/*.whl
  export PYTHONPATH="$PYTHONPATH:$SITE"
fi
"$PY" -c "import constriction" 2>/dev/null || {
  echo "error: python package constriction missing (bayescomp.entropy); run reproduce/gpu/stage.sh prepare here," \
       "which puts its wheel into DATA_DIR/wheels/" >&2; exit 2; }
exec "$PY" -m reproduce.gpu_job --out "$OUT" --data "$DATA" "$@"
