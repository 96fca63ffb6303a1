#!/usr/bin/env bash
# Two ConvNet members of 1,000 steps each, four ways (docs/speed-cpu.md, "Members on two
# cores"): `procs` = two processes at once, `shares` = the same, each on its half of the cores
# (FMNIST_CPU_SHARE, as `make reproduce` runs them), `plain` = the two one after the other,
# `unroll` = one process training both (--config.num_replicas=2). Time each as a whole process.
# REPLICAS=3 trains 3 members in each process (as `make reproduce` does; `unroll`: ignored).
#   [REPLICAS=N] bash benchmarks/members.sh procs|shares|plain|unroll [PYTHON]
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:?procs, shares, plain or unroll}
python=${2:-.venv/bin/python}
export GLIBC_TUNABLES=${GLIBC_TUNABLES:-glibc.malloc.hugetlb=1}
runs=$(mktemp -d)
trap 'rm -rf "$runs"' EXIT
train() {
  "$python" -m fmnist_jax.main --config experiments/cnn.py --config.num_train_steps=1000 \
    --config.eval_every_steps=500 --config.checkpoint_every_steps=1000 \
    --config.num_replicas="${REPLICAS:-1}" "$@" >/dev/null 2>&1
}
case $mode in
  procs) train --workdir "$runs/a" & train --workdir "$runs/b" --config.seed=7; wait ;;
  shares) FMNIST_CPU_SHARE=0/2 train --workdir "$runs/a" &
    FMNIST_CPU_SHARE=1/2 train --workdir "$runs/b" --config.seed=7; wait ;;
  plain) train --workdir "$runs/a"; train --workdir "$runs/b" --config.seed=7 ;;
  unroll) train --workdir "$runs/a" --config.num_replicas=2 ;;
  *) echo "usage: bash benchmarks/members.sh procs|shares|plain|unroll [PYTHON]" >&2; exit 2 ;;
esac
