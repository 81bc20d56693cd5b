#!/usr/bin/env bash
# One prepared check on a CUDA machine, at most ~8 minutes on one GPU.
#
#   bash tools/gpu_check.sh [--out DIR] [--python PY] [--wheels DIR]
#       [--mmcv-src mmcv-2.1.0.tar.gz] [--mmcv-build-timeout S] [--iters N]
#       [--skip-tests] [--budget S] [--dry-run]
#
# 1. environment (GPU, driver, torch, CUDA); 2. mmcv with CUDA kernels: a
# one-box batched_nms on CUDA, and if that fails and --mmcv-src is given,
# mmcv's ops built for this GPU (MMCV_WITH_OPS=1 FORCE_CUDA=1, its compute
# capability only); 3. in the background, the fast test suite (make
# test-fast's selection) in this environment; 4. tools/gpu_check.py: p
# under CUDA fp16/bf16 autocast vs float64, the authors' placement under
# autocast, FusedFocalLoss vs mmcv's CUDA kernel, N iterations of fp16 AMP
# training of the R-50 reference-exact model on the built-in data (finite
# losses, s/iter, memory), R-50 800x1333 latency fp32/fp16 EmbedMask vs
# CondInst, the exported graph under ONNX Runtime (CUDA provider if the
# installed onnxruntime has one) vs PyTorch on CUDA. Figures: DIR/summary.md
# and DIR/gpu_check.json.
#
# --wheels DIR installs the wheels in DIR (--no-index --no-deps) into a
# private target first, for a machine without a package index.
# --budget S (default 570) bounds the run: the tests get what is left of it,
# and no section of tools/gpu_check.py starts in its last minute.
# --dry-run checks the arguments, the imports and the configs without a GPU
# (CI runs it).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

OUT=work_dirs/gpu_check
PY=${PYTHON:-python3}
WHEELS=
MMCV_SRC=
MMCV_BUILD_TIMEOUT=360
ITERS=50
BUDGET=570
SKIP_TESTS=0
DRY_RUN=0

usage() { sed -n '3,6p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
die() { echo "[gpu_check] ERROR: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT=${2:?--out needs a folder}; shift 2 ;;
    --python) PY=${2:?--python needs an interpreter}; shift 2 ;;
    --wheels) WHEELS=${2:?--wheels needs a folder}; shift 2 ;;
    --mmcv-src) MMCV_SRC=${2:?--mmcv-src needs a tarball}; shift 2 ;;
    --mmcv-build-timeout) MMCV_BUILD_TIMEOUT=${2:?}; shift 2 ;;
    --iters) ITERS=${2:?--iters needs a number}; shift 2 ;;
    --skip-tests) SKIP_TESTS=1; shift ;;
    --budget) BUDGET=${2:?--budget needs seconds}; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage ;;
    *) echo "[gpu_check] unknown argument: $1" >&2; usage ;;
  esac
done
[[ "$ITERS" =~ ^[0-9]+$ ]] && [ "$ITERS" -ge 1 ] || die "--iters must be a positive integer, got '$ITERS'"
[[ "$BUDGET" =~ ^[0-9]+$ ]] || die "--budget must be seconds, got '$BUDGET'"
[[ "$MMCV_BUILD_TIMEOUT" =~ ^[0-9]+$ ]] || die "--mmcv-build-timeout must be seconds, got '$MMCV_BUILD_TIMEOUT'"
[ -z "$WHEELS" ] || [ -d "$WHEELS" ] || die "--wheels $WHEELS: no such folder"
[ -z "$MMCV_SRC" ] || [ -f "$MMCV_SRC" ] || die "--mmcv-src $MMCV_SRC: no such file (mmcv's source archive, e.g. mmcv-2.1.0.tar.gz from PyPI)"
command -v "$PY" >/dev/null || die "--python $PY: not found"
mkdir -p "$OUT" || die "cannot create $OUT"
OUT=$(cd "$OUT" && pwd)
SUMMARY=$OUT/summary.md
log() { echo "[gpu_check] $*"; }
START=$(date +%s)

if [ -n "$WHEELS" ]; then
  SITE=${TMPDIR:-/tmp}/gpu_check_site
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target "$SITE" "$WHEELS"/*.whl || die "installing the wheels of $WHEELS failed"
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

if [ "$DRY_RUN" = 1 ]; then
  "$PY" - <<'PYEOF' || die "imports failed (see above)"
import torch, mmcv, mmengine, mmdet  # noqa: F401
import embedmask_mmdet  # noqa: F401
print(f'[gpu_check] torch {torch.__version__}, mmcv {mmcv.__version__}, '
      f'mmdet {mmdet.__version__}, cuda available {torch.cuda.is_available()}')
PYEOF
  "$PY" tools/gpu_check.py --out "$OUT" --iters "$ITERS" --dry-run || die "tools/gpu_check.py --dry-run failed"
  log "dry run ok (arguments, imports, configs); no GPU used"
  exit 0
fi

{
  echo "# GPU check ($(date -u +%Y-%m-%dT%H:%MZ))"
  echo
  echo '```'
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | head -3
  "$PY" -c 'import torch, platform; print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.version.cuda, "| gpu", torch.cuda.get_device_name() if torch.cuda.is_available() else None)'
  echo "cpus $(nproc)"
  echo '```'
} > "$SUMMARY" 2>&1
cat "$SUMMARY"
"$PY" -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null || die "torch sees no CUDA device; use --dry-run on a CPU machine"

mmcv_cuda_ok() {
  "$PY" - <<'PYEOF' >/dev/null 2>&1
import torch
from mmcv.ops import batched_nms
b = torch.tensor([[0., 0., 10., 10.]], device='cuda')
batched_nms(b, torch.ones(1, device='cuda'), torch.zeros(1, dtype=torch.long, device='cuda'), dict(type='nms', iou_threshold=0.5))
PYEOF
}
if mmcv_cuda_ok; then
  MMCV_NOTE="installed mmcv runs batched_nms on CUDA"
elif [ -n "$MMCV_SRC" ]; then
  BUILD=${TMPDIR:-/tmp}/gpu_check_mmcv
  rm -rf "$BUILD" && mkdir -p "$BUILD" && tar xzf "$MMCV_SRC" -C "$BUILD" --strip-components=1 \
    || die "cannot unpack $MMCV_SRC"
  ARCH=$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')
  log "mmcv has no CUDA kernels here: building its ops from $MMCV_SRC for sm_$ARCH with $(nproc) jobs (at most ${MMCV_BUILD_TIMEOUT}s)"
  t0=$(date +%s)
  (cd "$BUILD" && MMCV_WITH_OPS=1 FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="$ARCH" MAX_JOBS=$(nproc) \
     timeout "$MMCV_BUILD_TIMEOUT" "$PY" setup.py build_ext --inplace) > "$OUT/mmcv_build.log" 2>&1
  rc=$?
  export PYTHONPATH="$BUILD:$PYTHONPATH"
  if [ $rc = 0 ] && mmcv_cuda_ok; then
    MMCV_NOTE="mmcv ops built from source for sm_$ARCH in $(( $(date +%s) - t0 ))s"
  else
    MMCV_NOTE="mmcv CUDA build FAILED (rc $rc after $(( $(date +%s) - t0 ))s): $(grep -m1 -i 'error' "$OUT/mmcv_build.log" | cut -c1-200)"
    tail -30 "$OUT/mmcv_build.log"
  fi
else
  MMCV_NOTE="installed mmcv has no CUDA kernels and no --mmcv-src was given: NMS-based sections will fail"
fi
log "$MMCV_NOTE"
printf '\nmmcv: %s\n' "$MMCV_NOTE" >> "$SUMMARY"

pin_check=()
if [ "$SKIP_TESTS" = 0 ]; then
  log "fast tests in the background -> $OUT/pytest.log"
  left=$(( START + BUDGET - 15 - $(date +%s) ))
  [ $left -gt 30 ] || left=30
  # on cores of their own where the machine has 8 or more, so that the
  # timings below run beside no other work on their cores
  pin_tests=() pin_check=()
  if command -v taskset >/dev/null && [ "$(nproc)" -ge 8 ]; then
    half=$(( $(nproc) / 2 ))
    pin_tests=(taskset -c "$half-$(( $(nproc) - 1 ))")
    pin_check=(taskset -c "0-$(( half - 1 ))")
  fi
  (OMP_NUM_THREADS=4 timeout $left "${pin_tests[@]}" "$PY" -m pytest tests -q -p no:cacheprovider -m 'not slow' \
     > "$OUT/pytest.log" 2>&1; echo "exit $?" >> "$OUT/pytest.log") &
  TESTS_PID=$!
fi

# no section starts in the last 60 s of the budget
"${pin_check[@]}" "$PY" tools/gpu_check.py --out "$OUT" --iters "$ITERS" --deadline $(( START + BUDGET - 60 ))
CHECK_RC=$?

if [ "$SKIP_TESTS" = 0 ]; then
  wait "$TESTS_PID"
  printf '\nfast tests: %s (%s)\n' "$(grep -E '(passed|failed|error)' "$OUT/pytest.log" | tail -1)" \
    "$(tail -1 "$OUT/pytest.log")" >> "$SUMMARY"
  grep -E '^(FAILED|ERROR)' "$OUT/pytest.log" | head -20 >> "$SUMMARY"
fi
{
  echo
  echo "tools/gpu_check.py exit $CHECK_RC; total $(( $(date +%s) - START ))s"
  echo
  echo '```json'
  cat "$OUT/gpu_check.json" 2>/dev/null
  echo '```'
} >> "$SUMMARY"
log "summary: $SUMMARY"
exit $CHECK_RC
