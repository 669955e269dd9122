#!/usr/bin/env bash
# Stage this checkout for the device tool's call of the GPU job, and undo it afterwards.
#
#   bash reproduce/gpu/stage.sh prepare [DATA_DIR]   # before the call (DATA_DIR default ../shared/data)
#   bash reproduce/gpu/stage.sh restore              # after it
#
# The device tool sends the working tree (tracked files, untracked files git does not ignore, and the
# paths named in `carry`), at most 64 MiB. `prepare` copies CIFAR10/ (19 MB) and MNIST/ (11 MB, for
# Table 2 and the LeNet rows) into .gpu_data/ (ignored through .git/info/exclude: name it in `carry`),
# moves the recorded posteriors and weight files (results/*/*/seed*/{posterior.pt,model.bcw}, about
# 40 MB; the job never reads them) and the committed resume points (results/.work/*/checkpoint.pt) out
# of the tree to ../gpu-job-aside/, and prints what would travel,
# failing if it is over the limit. `restore` moves them back (.gpu_data/ stays, ignored).
# WITH_MNIST=0 leaves MNIST out (Table 2 on the GPU then fails; the VGG rows do not need it).
# Untracked files travel too: the in-progress checkpoints under results/.work/ count.
# It also puts into .gpu_data/wheels/ the wheels of the dependencies the GPU machine lacks (it fetches
# nothing): constriction (bayescomp.entropy), for its Python 3.12 on x86-64, at the version installed
# here; reproduce/gpu/job.sh installs them there. PYTHON=/path/to/python: the interpreter with pip.
set -euo pipefail
cd "$(dirname "$0")/../.."
ASIDE=../gpu-job-aside
LIMIT=$((64 * 1024 * 1024))
case "${1:?prepare or restore}" in
prepare)
  DATA=${2:-../shared/data}
  mkdir -p .gpu_data
  cp -rn "$DATA/CIFAR10" .gpu_data/
  if [ "${WITH_MNIST:-1}" = 1 ]; then cp -rn "$DATA/MNIST" .gpu_data/; fi
  PY=${PYTHON:-python}
  version=$("$PY" -c "import importlib.metadata as m; print(m.version('constriction'))")
  ls .gpu_data/wheels/constriction-"$version"-cp312-*.whl >/dev/null 2>&1 ||
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d .gpu_data/wheels "constriction==$version"
  grep -qxF '/.gpu_data/' .git/info/exclude || echo '/.gpu_data/' >> .git/info/exclude
  git ls-files 'results/*/posterior.pt' 'results/*/model.bcw' 'results/.work/*/checkpoint.pt' | while read -r f; do
    [ -f "$f" ] || continue
    mkdir -p "$ASIDE/$(dirname "$f")" && mv "$f" "$ASIDE/$f"
  done
  size() { { xargs -0 -r stat -c %s 2>/dev/null || true; } | awk '{s += $1} END {print s + 0}'; }  # moved files: skipped
  tracked=$(git ls-files -z | size)
  untracked=$(git ls-files -z -o --exclude-standard | size)
  carried=$(find .gpu_data -type f -print0 | size)
  total=$((tracked + untracked + carried))
  echo "would travel: tracked $((tracked / 1048576)) MiB + untracked $((untracked / 1048576)) MiB + .gpu_data" \
       "$((carried / 1048576)) MiB = $((total / 1048576)) MiB of 64 MiB"
  git ls-files -o --exclude-standard | sed 's/^/  untracked: /' | head -20
  if [ "$total" -gt "$LIMIT" ]; then
    echo "OVER the 64 MiB limit: leave out more (WITH_MNIST=0, or untracked files such as results/.work/)" >&2
    exit 1
  fi
  ;;
restore)
  [ -d "$ASIDE/results" ] || { echo "nothing to restore in $ASIDE"; exit 0; }
  (cd "$ASIDE" && find results -type f) | while read -r f; do mv "$ASIDE/$f" "$f"; done
  find "$ASIDE" -depth -type d -empty -delete
  git status --short results | head
  ;;
*) echo "usage: bash reproduce/gpu/stage.sh prepare [DATA_DIR] | restore" >&2; exit 2 ;;
esac
