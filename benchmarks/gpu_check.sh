#!/usr/bin/env bash
# The accelerator check (multi-host issue, item 10): one prepared run on a GPU machine, under
# ten minutes. It installs the CUDA build of the same jax, runs the test suite, trains the
# ConvNet with dropout for 2,000 steps, attacks 1,000 images, and prints images/s, attacks/s
# and how the metrics compare with the same 2,000 steps on the development CPU
# (benchmarks/gpu_check_cpu_reference.json, made by `benchmarks/gpu_check.sh --cpu-reference`).
#
#   FMNIST_DATA_DIR=/path/to/fashion_mnist OUT=/tmp/out bash benchmarks/gpu_check.sh
#
# Needs: python3 with venv and pip reaching PyPI (or wheels in .whl/), an NVIDIA driver.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/gpu_check}"
DATA="${FMNIST_DATA_DIR:?set FMNIST_DATA_DIR to the folder with the four IDX gz files}"
STEPS="${STEPS:-2000}"
mkdir -p "$OUT"
export FMNIST_DATA_DIR="$DATA" TF_CPP_MIN_LOG_LEVEL=3 PYTHONUNBUFFERED=1

if [ "${1:-}" = "--cpu-reference" ]; then  # on the development CPU, once
  .venv/bin/python -m fmnist_jax.main --config cnn_dropout --workdir "$OUT/cpu" \
    --config.num_train_steps="$STEPS" --config.eval_every_steps=500 \
    --config.checkpoint_every_steps=1000
  cp "$OUT/cpu/metrics.jsonl" benchmarks/gpu_check_cpu_reference.jsonl
  exit 0
fi

t0=$(date +%s)
python3 -m venv "$OUT/venv"
PY="$OUT/venv/bin/python"
if ls .whl/*.whl >/dev/null 2>&1; then  # wheels carried to a machine without PyPI
  "$PY" -m pip install -q --no-index --find-links .whl -r requirements.txt -r requirements-dev.txt
else
  "$PY" -m pip install -q -r requirements.txt -r requirements-dev.txt "jax[cuda12]==0.10.2"
fi
"$PY" -m pip install -q --no-deps -e .
echo "install: $(( $(date +%s) - t0 )) s"
"$PY" -c "import jax; print('devices:', jax.devices())"

# The suite (the CPU-only performance canaries and multi-process CPU tests are CPU-specific).
t=$(date +%s)
"$PY" -m pytest -q -x -m "not perf_canary" --deselect tests/test_distributed.py 2>&1 | tail -3
echo "tests: $(( $(date +%s) - t )) s"

t=$(date +%s)
"$PY" -m fmnist_jax.main --config cnn_dropout --workdir "$OUT/gpu" \
  --config.num_train_steps="$STEPS" --config.eval_every_steps=500 \
  --config.checkpoint_every_steps=1000
echo "train $STEPS steps: $(( $(date +%s) - t )) s"
t=$(date +%s)
"$PY" -m fmnist_jax.adversarial --workdir "$OUT/gpu" --output "$OUT/adversarial" \
  --num_images 1000 --method sign,pgd
echo "attack: $(( $(date +%s) - t )) s"

"$PY" - "$OUT" <<'EOF'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
summary = json.loads((out / "gpu" / "summary.json").read_text())
print(f"device {summary['device_kind']} x {summary['device_count']}: "
      f"{summary['images_per_sec']} img/s, {summary['steps_per_sec']} steps/s")
attack = json.loads((out / "adversarial" / "summary.json").read_text())
for name, s in attack["methods"].items():
    print(f"attack {name}: {s['attacks_per_sec']} attacks/s, success {s['success_rate']:.1%}")
gpu = [json.loads(line) for line in (out / "gpu" / "metrics.jsonl").open()]
ref_path = Path("benchmarks/gpu_check_cpu_reference.jsonl")
if ref_path.is_file():
    cpu = {r["step"]: r for r in map(json.loads, ref_path.open())}
    for r in gpu:
        c = cpu.get(r["step"])
        if c:
            print(f"step {r['step']}: test loss GPU {r['test_loss']:.4f} CPU {c['test_loss']:.4f}"
                  f" | test acc GPU {r['test_accuracy']:.4f} CPU {c['test_accuracy']:.4f}")
EOF
echo "total: $(( $(date +%s) - t0 )) s"
