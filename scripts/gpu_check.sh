#!/usr/bin/env bash
# The GPU check (issue 12), as one prepared script: the full comparison (every loss x 3 seeds, all 50,000 CIFAR-10
# training images, 10 epochs) with its wall time, report and figures, once with 21 processes and once with all
# runs packed into one network in one process (hydra/launcher=packed), the packed step's levers (its kernels
# profiled in two layouts, cuDNN autotuning), the throughput benchmark with --device cuda,
# and the test suite there (tests/test_cuda.py and the CUDA precision tests; LOSSBENCH_TEST_DEVICE=cuda moves the
# tiny test runs to the GPU too). Most important first, each step under its own time limit, so that whatever the
# lease allows comes back. Everything lands in $OUT (the device tool's output folder; gpu_check_out/ elsewhere),
# at most 11 files: gpu_check.log (the steps' tails and times), decode.log, startup.log, comparison.log and
# comparison_packed.log (with the GPU's load during each, from nvidia-smi dmon, appended), levers.log, bench.log,
# tests.log, comparison.tar.gz and comparison_packed.tar.gz (the reports, their figures and every run's metrics,
# no checkpoints).
#
# The GPU machine has python3 with torch, pandas, matplotlib, typer, joblib and pytest(-xdist), no network, and
# lacks Hydra. So:
#
#   scripts/gpu_check.sh prepare [ARCHIVE]   here, once: copies into .gpu/ (git-ignored)
#       the pure-Python packages the GPU machine lacks, taken from this venv (hydra-core, omegaconf, antlr4, the
#       joblib launcher plugin), and the CIFAR-10 JPEG archive (default ../shared/data/cifar10-jpeg.tar.gz),
#       about 25 MB in all.
#   scripts/gpu_check.sh run                 there, e.g. with the device tool:
#       run(command="bash scripts/gpu_check.sh run", carry=[".gpu"], timeout_s=540)
#   scripts/gpu_check.sh STEP...             only these steps, in this order (decode, packed, tests, levers,
#       startup, bench, compare: `run`'s order, the target first; startup times a job's start-up phase by phase),
#       e.g. "decode packed tests": the decoded images are kept in /tmp while the machine stays warm.
#       All steps take over 10 minutes, more than one call may run: choose, e.g. "decode packed levers".
#       On an H100 (2026-11-27): decode 48-60 s (with threads; worker processes decode now), packed 67 s,
#       the CUDA tests (TESTS="tests/test_cuda.py tests/test_pack.py tests/test_precision.py") 67 s, each
#       levers variant 20-45 s; a machine takes about 40 s to start.
#
# Knobs (environment): COMPARE_ARGS (the comparison's launcher overrides, default: all 21 runs at once through the
# joblib launcher, as one run cannot keep the GPU busy; e.g. add train.compile=reduce-overhead for CUDA graphs or
# train.cudnn_benchmark=true),
# COMPARE_NAME (its directory, log and archive name, default comparison), MPS (1, the default: run the comparison
# under CUDA MPS, so that the runs' kernels share the GPU's multiprocessors instead of taking turns; 0: without).
# Measured on an H200: 112 s with 7 runs at a time without MPS, 91 s with all 21 under MPS (docs/performance.md, GPU).
# PACKED_ARGS (the packed comparison's launcher overrides, default hydra/launcher=packed; e.g. add
# hydra.launcher.size=7 for three packs of 7), PACKED_NAME (default comparison_packed),
# BENCH_ARGS (extra bench_throughput.py options, e.g. "--compile reduce-overhead --batch-size 512"),
# TESTS (the tests step's pytest targets, default the whole suite, e.g. "tests/test_cuda.py tests/test_pack.py"),
# LEVERS (the levers step's benchmark variants, separated by ';', e.g. "--pack 7;--compile reduce-overhead"),
# LEVER_LIMIT (seconds each levers variant may take, default 120),
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

# Paths, packages and lossbench as its wheel lays it out (configs inside the package), without pip: the GPU
# machine has no network, and a build needs tools that may be missing.
setup() {
  out=${OUT:-gpu_check_out}
  mkdir -p "$out"
  log="$out/gpu_check.log"
  work=${TMPDIR:-/tmp}/lossbench_gpu_check
  mkdir -p "$work" && rm -rf "$work/site"
  export PYTHONUNBUFFERED=1 XDG_CACHE_HOME="$work/cache"
  python=python3 device=cuda
  if [ -n "${GPU_CHECK_SMOKE:-}" ]; then python=${PYTHON:-.venv/bin/python} device=cpu; fi
  if [ -d .gpu/site ]; then export PYTHONPATH="$PWD/.gpu/site${PYTHONPATH:+:$PYTHONPATH}"; fi
  mkdir -p "$work/site/hydra_plugins" && cp -r src/lossbench "$work/site/" || return 1
  cp -r src/hydra_plugins/lossbench_launcher "$work/site/hydra_plugins/" || return 1
  export PYTHONPATH="$work/site${PYTHONPATH:+:$PYTHONPATH}"
  write_probe
  { nvidia-smi -L 2>/dev/null; nproc; } | tee -a "$log"
  "$python" - <<'PY' 2>&1 | tee -a "$log"
import torch, lossbench, hydra
name = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {name}; hydra {hydra.__version__}; lossbench from {lossbench.__file__}")
PY
}

# A fresh process that times a job's start-up, phase by phase, up to its first training step. Its load phase
# decodes the JPEGs the first time (into lossbench's tensor cache) and reads that cache afterwards.
write_probe() {
  cat >"$work/probe.py" <<'PY'
import sys, time
began = last = time.perf_counter()
def phase(name):
    global last
    now = time.perf_counter()
    print(f"{name:<40} {now - last:6.2f} s")
    last = now
import torch; phase("import torch")
from hydra import compose, initialize_config_module
from lossbench.data.loading import load_dataset
from lossbench.config import absolute_paths, prepare
from lossbench.device import configure_cudnn, resolve_device
from lossbench.step import build_training
phase("import hydra, lossbench")
with initialize_config_module("lossbench.configs", version_base="1.3"):
    cfg = compose("config", overrides=["experiment=cifar10_folder", f"data.root={sys.argv[1]}", "data.train_size=null"])
cfg = absolute_paths(cfg); phase("compose")
scores = prepare(cfg); phase("prepare (classes, scores, loss)")
data = load_dataset(cfg.data, scores.classes, scores.matrix)
phase(f"load_dataset ({len(data.train_y)} train, {len(data.test_y)} test)")
model = build_training(cfg, data, 1)[0]; phase("build_training (its optimiser imports torch._dynamo)")
device = resolve_device(sys.argv[2]); configure_cudnn(device, False); on = data.to(device)
if device.type == "cuda": torch.cuda.synchronize()
phase(f"data to {device} (CUDA init)")
x = on.train_x[:256].float().contiguous(memory_format=torch.channels_last)
model = model.to(device, memory_format=torch.channels_last)
with torch.autocast(device.type, dtype=torch.bfloat16):
    model(x).float().sum().backward()
if device.type == "cuda": torch.cuda.synchronize()
phase("first step")
print(f"{'total':<40} {time.perf_counter() - began:6.2f} s")
PY
}

# The JPEGs extracted and decoded once, outside the comparison's wall time.
decode() {
  [ -n "${GPU_CHECK_SMOKE:-}" ] && return 0
  if [ ! -d "$work/data/cifar10" ]; then
    mkdir -p "$work/data" && tar -xzf .gpu/cifar10-jpeg.tar.gz -C "$work/data" || return 1
  fi
  step decode 120 "$python" "$work/probe.py" "$work/data/cifar10" "$device"
}

# The same probe on the decoded cache: what each of a comparison's processes pays before its first step.
startup() {
  [ -n "${GPU_CHECK_SMOKE:-}" ] && return 0
  step startup 60 "$python" "$work/probe.py" "$work/data/cifar10" "$device"
}

compare() {
  local name=${COMPARE_NAME:-comparison} data launcher
  data=(experiment=cifar10_folder "data.root=$work/data/cifar10" data.train_size=null "seeds=[0,1,2]" train.epochs=10)
  launcher=(${COMPARE_ARGS:-hydra/launcher=joblib hydra.launcher.n_jobs=21})
  if [ -n "${GPU_CHECK_SMOKE:-}" ]; then
    data=("losses=[ce,expected_score]" data.train_size=512 data.test_size=256 "model.widths=[8,8,8]" train.epochs=1)
    launcher=(${COMPARE_ARGS:-hydra/launcher=joblib hydra.launcher.n_jobs=2})
  fi
  [ "${MPS:-1}" = 1 ] && start_mps
  local comparison="$work/$name" began=$SECONDS monitor=""
  rm -rf "$comparison"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi dmon -s u -d 1 >"$work/$name-gpu.log" 2>&1 &
    monitor=$!
  fi
  # Each job drives the GPU from one thread; torch's 16 CPU threads per job would only contend.
  # LOSSBENCH_DEBUG: a failing job shows its traceback (not for the tests, which check the one-line errors).
  LOSSBENCH_DEBUG=1 OMP_NUM_THREADS=2 step "$name" 180 "$python" -m lossbench.cli compare "${data[@]}" device="$device" \
    train.progress=false "${launcher[@]}" --out "$comparison"
  echo "$name wall time: $((SECONDS - began)) s (${data[*]} ${launcher[*]}, $device, MPS=${MPS:-1})" | tee -a "$log"
  if [ -n "$monitor" ]; then
    kill "$monitor"
    { echo "== GPU load during the comparison (nvidia-smi dmon, one line a second)"; cat "$work/$name-gpu.log"; } >>"$out/$name.log"
  fi
  [ "${MPS:-1}" = 1 ] && stop_mps
  tar -czf "$out/$name.tar.gz" -C "$work" --exclude=checkpoint.pt "$name" 2>/dev/null
}

# The same comparison with every run in one process, packed into one network (hydra/launcher=packed): one start-up
# instead of 21, and kernels that each work on all the runs.
packed() {
  COMPARE_NAME=${PACKED_NAME:-comparison_packed} COMPARE_ARGS=${PACKED_ARGS:-hydra/launcher=packed} MPS=0 compare
}

# CUDA MPS: one server process runs the kernels of every CUDA process of this user side by side.
start_mps() {
  export CUDA_MPS_PIPE_DIRECTORY="$work/mps/pipe" CUDA_MPS_LOG_DIRECTORY="$work/mps/log"
  mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
  if nvidia-cuda-mps-control -d 2>/dev/null; then
    echo "MPS: control daemon started" | tee -a "$log"
  else
    echo "MPS: could not start nvidia-cuda-mps-control; running without" | tee -a "$log"
    unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
  fi
}

stop_mps() {
  [ -n "${CUDA_MPS_PIPE_DIRECTORY:-}" ] || return 0
  echo "MPS servers: $(echo get_server_list | timeout 5 nvidia-cuda-mps-control 2>&1 | tr '\n' ' ')" | tee -a "$log"
  echo quit | timeout 10 nvidia-cuda-mps-control
  tail -n 5 "$CUDA_MPS_LOG_DIRECTORY/control.log" >>"$log" 2>/dev/null
  unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
}

bench() {
  local args=(--device "$device" --steps 40 --rounds 3 --warmup 10)
  [ -n "${GPU_CHECK_SMOKE:-}" ] && args=(--device "$device" --rounds 1 --steps 1 --warmup 0)
  step bench 75 "$python" scripts/bench_throughput.py "${args[@]}" ${BENCH_ARGS:-}
}

# Levers, each as one benchmark run against lossbench's one-run loop in the same process (LEVERS: the variants'
# bench_throughput.py options, separated by ';'). By default, what decides the packed comparison's speed: the
# packed step of 21 runs with its kernels profiled, in channels_last and in contiguous NCHW (which layout serves
# grouped convolutions best), and with cuDNN autotuning (what it costs at the first step and buys afterwards). All
# land in levers.log.
levers() {
  local args=(--device "$device" --steps 40 --rounds 3 --warmup 10) variants variant began rc
  local default="--pack 21 --profile 10;--pack 21 --contiguous --profile 10;--pack 21 --cudnn-benchmark"
  IFS=';' read -ra variants <<<"${LEVERS:-$default}"
  [ -n "${GPU_CHECK_SMOKE:-}" ] && args=(--device "$device" --rounds 1 --steps 1 --warmup 0 --batch-size 16)
  : >"$out/levers.log"
  for variant in "${variants[@]}"; do
    began=$SECONDS
    echo "== levers: $variant" | tee -a "$log" >>"$out/levers.log"
    timeout "${LEVER_LIMIT:-120}" "$python" scripts/bench_throughput.py "${args[@]}" $variant >"$work/lever.log" 2>&1
    rc=$?
    grep -E "^(warmup|median|efficiency|ratio|pack):?" "$work/lever.log" >>"$log"
    grep -A 24 "^profile:" "$work/lever.log" | cut -c1-200 >>"$log"
    cat "$work/lever.log" >>"$out/levers.log"
    echo "== levers: $variant exit $rc after $((SECONDS - began)) s" | tee -a "$log" >>"$out/levers.log"
  done
}

# The whole suite, with its CUDA-only tests, 8 at a time where pytest-xdist is installed; -v names each test
# as it ends, so a suite cut off by its limit still says which failed.
tests() {
  local targets=(${TESTS:-tests})
  [ -n "${GPU_CHECK_SMOKE:-}" ] && targets=(${TESTS:-tests/test_precision.py})
  local parallel=()
  "$python" -c "import xdist" 2>/dev/null && parallel=(-n 8)
  # The cores shared out between the workers: 8 workers of torch's one thread per core each slowed the suite
  # past its limit on a 16-core machine.
  OMP_NUM_THREADS=$(( $(nproc) / 8 > 0 ? $(nproc) / 8 : 1 )) step tests 200 "$python" -m pytest -v "${parallel[@]}" \
    -p no:cacheprovider --tb=short -rf "${targets[@]}"
  grep -E "FAILED|ERROR" "$out/tests.log" | cut -c1-300 >>"$log"
}

case "${1:-}" in
  prepare) shift; prepare "$@" ;;
  run) setup && decode && { packed; tests; levers; startup; bench; compare; ls -la "$out" | tee -a "$log"; } ;;
  decode | startup | compare | packed | bench | levers | tests)
    setup || exit 1
    for name in "$@"; do
      case "$name" in
        decode) decode || exit 1 ;;
        startup | compare | packed | bench | levers | tests) "$name" ;;
        *) echo "unknown step '$name' (decode, startup, compare, packed, bench, levers, tests)" >&2; exit 2 ;;
      esac
    done ;;
  *) echo "usage: scripts/gpu_check.sh prepare [ARCHIVE] | run | STEP... (decode, startup, compare, packed, bench, levers, tests)" >&2
     exit 2 ;;
esac
