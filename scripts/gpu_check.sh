#!/usr/bin/env bash
# The GPU check (issue 12), as one prepared script: the test suite on CUDA (device=auto picks the GPU), the
# throughput benchmark with --device cuda, and the full comparison (all six losses x 3 seeds, all 50,000 CIFAR-10
# training images, 10 epochs) with its wall time, report and figures. Everything lands in $OUT (the device
# tool's output folder; gpu_check_out/ elsewhere): gpu_check.log, tests.log, bench.log, compare.log, summary.md,
# test_acc.png and comparison.tar.gz (the whole report and every run's metrics, no checkpoints).
#
# The GPU machine has python3 with torch, pandas, matplotlib, typer and pytest, no network, and lacks Hydra. So:
#
#   scripts/gpu_check.sh prepare [ARCHIVE]   here, once: copies into .gpu/ (git-ignored)
#       the pure-Python packages the GPU machine lacks, taken from this venv (hydra-core, omegaconf, antlr4, the
#       joblib launcher plugin), and the CIFAR-10 JPEG archive (default ../shared/data/cifar10-jpeg.tar.gz),
#       about 25 MB in all.
#   scripts/gpu_check.sh run                 there, e.g. with the device tool:
#       run(command="bash scripts/gpu_check.sh run", carry=[".gpu"], timeout_s=600)
#
# Each step has its own time limit, so that the whole run ends within 9 minutes and returns what it has.
# Knobs (environment): COMPARE_ARGS (extra overrides for the comparison, default: 6 runs at a time through the
# joblib launcher, as one run cannot fill the GPU; e.g. COMPARE_ARGS="train.compile=true" to try torch.compile),
# BENCH_ARGS (extra bench_throughput.py options, e.g. "--compile --batch-size 512"),
# GPU_CHECK_SMOKE=1 (the same steps on the CPU, tiny and on synthetic data: checks this script without a GPU).
set -uo pipefail
cd "$(dirname "$0")/.."

prepare() {
  local archive=${1:-../shared/data/cifar10-jpeg.tar.gz} python=${PYTHON:-.venv/bin/python}
  rm -rf .gpu && mkdir -p .gpu/site/hydra_plugins
  # Where this venv has them; all are pure Python, so they run on the GPU machine's Python too.
  "$python" - <<'EOF' || exit 1
import importlib, shutil
for name, dest in [("hydra", "hydra"), ("omegaconf", "omegaconf"), ("antlr4", "antlr4"),
                   ("hydra_plugins.hydra_joblib_launcher", "hydra_plugins/hydra_joblib_launcher")]:
    module = importlib.import_module(name)
    shutil.copytree(module.__path__[0], f".gpu/site/{dest}", ignore=shutil.ignore_patterns("__pycache__"))
EOF
  cp "$archive" .gpu/cifar10-jpeg.tar.gz || exit 1
  du -sh .gpu
}

# One step: its command under a time limit, its output in $out/NAME.log and in the main log; never stops the run.
step() {
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit}s): $*" | tee -a "$log"
  local began=$SECONDS
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  tail -n 25 "$out/$name.log" >>"$log"
  echo "== $name: exit $rc after $((SECONDS - began)) s" | tee -a "$log"
  return $rc
}

run() {
  out=${OUT:-gpu_check_out}
  mkdir -p "$out"
  log="$out/gpu_check.log"
  : >"$log"
  local work=${TMPDIR:-/tmp}/lossbench_gpu_check
  rm -rf "$work" && mkdir -p "$work"
  export PYTHONUNBUFFERED=1 XDG_CACHE_HOME="$work/cache" LOSSBENCH_DEBUG=1
  local python=python3 device=cuda
  if [ -n "${GPU_CHECK_SMOKE:-}" ]; then python=${PYTHON:-.venv/bin/python} device=cpu; fi
  if [ -d .gpu/site ]; then export PYTHONPATH="$PWD/.gpu/site${PYTHONPATH:+:$PYTHONPATH}"; fi

  # lossbench as its wheel lays it out (configs inside the package, wherever the checkout keeps them), without
  # pip: the GPU machine has no network, and a build needs tools that may be missing.
  mkdir -p "$work/site" && cp -r src/lossbench "$work/site/" || return 1
  if [ ! -d src/lossbench/configs ]; then cp -r configs "$work/site/lossbench/configs" || return 1; fi
  export PYTHONPATH="$work/site${PYTHONPATH:+:$PYTHONPATH}"
  "$python" - <<'EOF' 2>&1 | tee -a "$log"
import torch, lossbench, hydra
name = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {name}; hydra {hydra.__version__}; lossbench from {lossbench.__file__}")
EOF

  local tests=(tests) bench=(--device "$device") data compare
  data=(experiment=cifar10_folder "data.root=$work/data/cifar10" data.train_size=null "seeds=[0,1,2]" train.epochs=10)
  compare=(${COMPARE_ARGS:-hydra/launcher=joblib hydra.launcher.n_jobs=6})
  if [ -n "${GPU_CHECK_SMOKE:-}" ]; then
    tests=(tests/test_precision.py)
    bench+=(--rounds 1 --steps 1 --warmup 0)
    data=("losses=[ce,expected_score]" data.train_size=512 data.test_size=256 "model.widths=[8,8,8]" train.epochs=1)
    compare=(${COMPARE_ARGS:-hydra/launcher=joblib hydra.launcher.n_jobs=2})
  fi

  # The whole fast suite with device=auto, i.e. on the GPU, plus the CUDA-only tests it holds.
  step tests 170 "$python" -m pytest -q -m "not slow" -p no:cacheprovider "${tests[@]}"
  step bench 110 "$python" scripts/bench_throughput.py "${bench[@]}" ${BENCH_ARGS:-}

  if [ -z "${GPU_CHECK_SMOKE:-}" ]; then
    mkdir -p "$work/data" && tar -xzf .gpu/cifar10-jpeg.tar.gz -C "$work/data" || return 1
    # Decode the JPEGs once into the tensor cache, outside the comparison's wall time.
    step decode 150 "$python" - "$work/data/cifar10" <<'EOF'
import sys, time
from hydra import compose, initialize_config_module
from lossbench.data import load_dataset
from lossbench.train import absolute_paths, prepare
began = time.perf_counter()
with initialize_config_module("lossbench.configs", version_base="1.3"):
    cfg = compose("config", overrides=["experiment=cifar10_folder", f"data.root={sys.argv[1]}", "data.train_size=null"])
cfg = absolute_paths(cfg)
scores = prepare(cfg)
data = load_dataset(cfg.data, scores.classes, scores.matrix)
print(f"decoded {len(data.train_y)} training and {len(data.test_y)} test images in {time.perf_counter() - began:.1f} s")
EOF
  fi

  local comparison="$work/comparison" began=$SECONDS
  step compare 260 "$python" -m lossbench.cli compare "${data[@]}" device="$device" train.progress=false \
    "${compare[@]}" --out "$comparison"
  echo "comparison wall time: $((SECONDS - began)) s (${data[*]} ${compare[*]}, $device)" | tee -a "$log"
  cp "$comparison/summary.md" "$comparison/test_acc.png" "$out/" 2>/dev/null
  tar -czf "$out/comparison.tar.gz" -C "$work" --exclude=checkpoint.pt comparison 2>/dev/null
  ls -la "$out" | tee -a "$log"
}

case "${1:-}" in
  prepare) shift; prepare "$@" ;;
  run) run ;;
  *) echo "usage: scripts/gpu_check.sh prepare [ARCHIVE] | run" >&2; exit 2 ;;
esac
