#!/usr/bin/env bash
# The accelerator check (issue 26): one run on a machine with a GPU (or TPU), under 8 minutes,
# installing nothing from a registry. It uses a Python that already has a CUDA jax, adds the
# pure-Python wheels prepared here (clu, ml-collections, pytest and what they miss: .gpu-wheels/) on
# PYTHONPATH, reads the data from .gpu-data/fashion_mnist, and writes one JSON ($OUT/gpu_check.json):
# the accelerator-relevant tests, `cnn_dropout` for STEPS steps against the CPU reference curve
# (benchmarks/gpu_check_cpu_reference.jsonl), the attack on ATTACK_IMAGES images, images/s and
# attacks/s.
#
#   make gpu-prep                        # here, once: .gpu-wheels/ and .gpu-data/ (git-ignored)
#   bash benchmarks/gpu_check.sh         # there, with .gpu-wheels and .gpu-data carried along
#   JAX_PLATFORMS=cpu GPU_CHECK_PYTHON=.venv-latest/bin/python STEPS=200 ATTACK_IMAGES=100 \
#     bash benchmarks/gpu_check.sh       # the same path on a CPU, smaller
#   bash benchmarks/gpu_check.sh --cpu-reference   # on the development CPU: the reference curve
#
# Settings (environment): GPU_CHECK_PYTHON (default: the first of python3, python, /usr/bin/python3,
# /opt/conda/bin/python whose jax has a CUDA or TPU plugin, else the first with a supported jax),
# OUT (default /tmp/gpu_check), STEPS (2000), ATTACK_IMAGES (1000), ATTACK_METHODS
# (exercise,pgd), GPU_CHECK_TESTS (the test files below), FMNIST_DATA_DIR (.gpu-data/fashion_mnist),
# LIMIT_TESTS / LIMIT_TRAIN / LIMIT_ATTACK (210 / 120 / 90 s: each stage is stopped there, so the
# whole check ends within 8 minutes whatever hangs).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
OUT="${OUT:-/tmp/gpu_check}"
STEPS="${STEPS:-2000}"
ATTACK_IMAGES="${ATTACK_IMAGES:-1000}"
ATTACK_METHODS="${ATTACK_METHODS:-exercise,pgd}"
# The tests that compile the project's programs (layers, models, train steps, replicas, the
# attack's pool over devices); CPU-only canaries (perf_canary) are deselected below.
GPU_CHECK_TESTS="${GPU_CHECK_TESTS:-tests/test_layers.py tests/test_models.py tests/test_replicas.py \
tests/test_adversarial_search.py tests/test_adversarial_devices.py tests/test_adversarial_minl1.py \
tests/test_train.py}"
export FMNIST_DATA_DIR="${FMNIST_DATA_DIR:-$REPO/.gpu-data/fashion_mnist}"
export TF_CPP_MIN_LOG_LEVEL=3 TF_ENABLE_ONEDNN_OPTS=0 PYTHONUNBUFFERED=1
WORK=$(mktemp -d)  # checkpoints and attack outputs: only logs and the JSON go to $OUT
mkdir -p "$OUT"
train_args=(--config cnn_dropout --config.num_train_steps="$STEPS" --config.eval_every_steps=500
  --config.checkpoint_every_steps="$STEPS")

probe_jax='import importlib.metadata as m, sys
def v(n):
    try:
        return m.version(n)
    except m.PackageNotFoundError:
        return ""
plugins = [n for n in ("jax-cuda13-plugin", "jax-cuda12-plugin", "libtpu") if v(n)]
sys.exit(0 if v("jax") and (plugins or sys.argv[1] == "any") else 1)'

pick_python() {  # the first candidate with an accelerator jax, else the first with any jax
  local want
  for want in accel any; do
    for py in python3 python /usr/bin/python3 /opt/conda/bin/python /usr/local/bin/python3; do
      if command -v "$py" >/dev/null 2>&1 && "$py" -c "$probe_jax" "$want" 2>/dev/null; then
        command -v "$py"
        return
      fi
    done
  done
  echo "error: no Python with jax found (set GPU_CHECK_PYTHON)" >&2
  exit 2
}

if [ "${1:-}" = "--cpu-reference" ]; then  # on the development CPU, once
  PY="${GPU_CHECK_PYTHON:-.venv/bin/python}"
  "$PY" -m fmnist_jax.main "${train_args[@]}" --workdir "$WORK/cpu"
  cp "$WORK/cpu/metrics.jsonl" benchmarks/gpu_check_cpu_reference.jsonl
  exit 0
fi

t0=$(date +%s)
PY="${GPU_CHECK_PYTHON:-$(pick_python)}"
[ -f "$FMNIST_DATA_DIR/train-images-idx3-ubyte.gz" ] || {
  echo "error: no Fashion-MNIST in $FMNIST_DATA_DIR: run make gpu-prep and carry .gpu-data" >&2
  exit 2
}

# The prepared wheels that this Python lacks, unpacked (pure Python: a wheel is a zip of the
# files site-packages would hold) into one folder on PYTHONPATH; nothing else is installed.
SITE="$WORK/site"
"$PY" - "$REPO/.gpu-wheels" "$SITE" >"$OUT/overlay.log" <<'EOF'
import importlib.metadata as m, pathlib, sys, zipfile

wheels, site = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
site.mkdir(parents=True, exist_ok=True)
for wheel in sorted(wheels.glob("*.whl")):
    name, version = wheel.name.split("-")[:2]
    if not wheel.name.endswith("-py3-none-any.whl"):
        sys.exit(f"error: {wheel.name} is not a pure-Python wheel")
    try:
        print(f"{name} {version}: have {m.version(name)}")
    except m.PackageNotFoundError:
        zipfile.ZipFile(wheel).extractall(site)
        print(f"{name} {version}: added")
EOF
export PYTHONPATH="$REPO:$SITE"
"$PY" -c "import clu.metrics, ml_collections, pytest, fmnist_jax.train" 2>"$OUT/imports.log" || {
  echo "error: the package does not import with $PY (see $OUT/imports.log):" >&2
  tail -1 "$OUT/imports.log" >&2
  exit 1
}
"$PY" -c "import jax; print('jax', jax.__version__, jax.devices())" | tee "$OUT/devices.log"
setup_s=$(($(date +%s) - t0))

# Each stage writes its log to $OUT and may fail without ending the check: the JSON says which.
stage() {  # stage NAME SECONDS CMD...: runs CMD under a time limit, records seconds and status
  local name=$1 limit=$2 t=$(date +%s) rc=0
  shift 2
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1 || rc=$?
  echo "$name $rc $(($(date +%s) - t))" >>"$WORK/stages"
  echo "$name: exit $rc, $(($(date +%s) - t)) s"
}
: >"$WORK/stages"
# shellcheck disable=SC2086  # GPU_CHECK_TESTS is a list of paths
stage tests "${LIMIT_TESTS:-210}" "$PY" -m pytest -q -p no:cacheprovider -m "not perf_canary" \
  --junitxml="$WORK/tests.xml" $GPU_CHECK_TESTS
stage train "${LIMIT_TRAIN:-120}" "$PY" -m fmnist_jax.main "${train_args[@]}" --workdir "$WORK/train"
stage attack "${LIMIT_ATTACK:-90}" "$PY" -m fmnist_jax.adversarial --workdir "$WORK/train" \
  --output "$WORK/attack" --num_images "$ATTACK_IMAGES" --method "$ATTACK_METHODS"

"$PY" - "$WORK" "$OUT/gpu_check.json" "$setup_s" "$t0" "$PY" <<'EOF'
import json, platform, sys, time, xml.etree.ElementTree as ET
from pathlib import Path

import jax

work, out, setup_s, t0, python = Path(sys.argv[1]), Path(sys.argv[2]), *sys.argv[3:]


def read_json(path):
    return json.loads(path.read_text()) if path.is_file() else None


stages = {}
for line in (work / "stages").read_text().splitlines():
    name, rc, seconds = line.split()
    stages[name] = {"exit": int(rc), "seconds": int(seconds)}
tests = {}
if (work / "tests.xml").is_file():
    suite = ET.parse(work / "tests.xml").getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    failed = [
        f"{case.get('classname')}::{case.get('name')}"
        for case in suite.iter("testcase")
        if case.find("failure") is not None or case.find("error") is not None
    ]
    tests = {**counts, "failed": failed}
train = read_json(work / "train" / "summary.json") or {}
curve = [json.loads(line) for line in (work / "train" / "metrics.jsonl").open()] \
    if (work / "train" / "metrics.jsonl").is_file() else []
ref_path = Path("benchmarks/gpu_check_cpu_reference.jsonl")
reference = {r["step"]: r for r in map(json.loads, ref_path.open())} if ref_path.is_file() else {}
compared = []
for r in curve:
    c = reference.get(r.get("step"))
    if c and "test_accuracy" in r and "test_accuracy" in c:
        compared.append({"step": r["step"], "test_accuracy": r["test_accuracy"],
                         "cpu_test_accuracy": c["test_accuracy"], "test_loss": r["test_loss"],
                         "cpu_test_loss": c["test_loss"]})
# The same seed and batches: float rounding (TF32 products on a GPU) moves the curve a little;
# a wrong gradient or a broken program moves it far.
gap = max((abs(c["test_accuracy"] - c["cpu_test_accuracy"]) for c in compared), default=None)
attack = read_json(work / "attack" / "summary.json") or {}
methods = {
    name: {k: s[k] for k in ("success_rate", "attacks_per_sec", "median_steps", "images") if k in s}
    for name, s in attack.get("methods", {}).items()
}
result = {
    "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "python": f"{python} ({platform.python_version()})",
    "jax": jax.__version__,
    "backend": jax.default_backend(),
    "devices": [str(d) for d in jax.devices()],
    "device_kind": jax.devices()[0].device_kind,
    "setup_s": int(setup_s),
    "stages": stages,
    "tests": tests,
    "train": {
        "steps": curve[-1]["step"] if curve else None,
        "images_per_sec": train.get("images_per_sec"),
        "steps_per_sec": train.get("steps_per_sec"),
        "wall_time_s": train.get("wall_time_s"),
        "final_test_accuracy": compared[-1]["test_accuracy"] if compared else None,
        "vs_cpu_reference": compared,
        "max_test_accuracy_gap": gap,
        "curve_matches_cpu": gap is not None and gap <= 0.02,
    },
    "attack": {"num_images": attack.get("num_images"), "pool_size": attack.get("pool_size"),
               "pool_devices": attack.get("pool_devices"), "methods": methods},
    "total_s": int(time.time()) - int(t0),
}
# The attack writes summary.json before its figures (matplotlib, which a bare image may lack).
result["ok"] = (
    stages["tests"]["exit"] == 0
    and stages["train"]["exit"] == 0
    and result["train"]["curve_matches_cpu"]
    and bool(methods)
)
out.write_text(json.dumps(result, indent=1) + "\n")
print(json.dumps({k: result[k] for k in ("backend", "device_kind", "ok", "total_s")}))
print(f"tests: {tests.get('tests')} run, {tests.get('failures')} failed, "
      f"{tests.get('errors')} errors, {tests.get('skipped')} skipped")
print(f"train: {result['train']['images_per_sec']} img/s, test accuracy gap to the CPU "
      f"reference {gap} over {len(compared)} evaluations")
for name, m in methods.items():
    print(f"attack {name}: {m['attacks_per_sec']} attacks/s, success {m['success_rate']}")
EOF
rm -rf "$WORK"
