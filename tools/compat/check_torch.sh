#!/usr/bin/env bash
# Runs `make test-fast` against another torch, in a venv of its own.
#
#   bash tools/compat/check_torch.sh torch==2.1.2
#
# Builds .venv-compat-<torch spec> (e.g. .venv-compat-torch2.1.2) with that
# torch from PyPI, mmcv $MMCV_VERSION built from source for it (compiled CPU ops;
# about 20 minutes on 2 cores, once: the wheel is kept in the venv's wheels/),
# mmengine 0.10, mmdet 3.3.0 and this package (editable, test and deploy
# extras) through tools/install.sh, then runs `make test-fast` there. torch
# older than 2.4 was built against NumPy 1.x, so numpy<2 is pinned for it.
# The result (torch, pytest's summary line, date, CPU) goes to
# work_dirs/compat/<tag>.txt, the whole output to work_dirs/compat/<tag>.log.
# Exit status: 0 when the install and the tests passed, else non-zero.
# Knobs: PYTHON (python3.11), MMCV_VERSION (2.1.0), EXTRAS (tests,deploy),
# PYTEST_ARGS (-rs: the reason of every skip), VENV (.venv-compat-<tag>).
set -uo pipefail

SPEC=${1:?usage: bash tools/compat/check_torch.sh TORCH_SPEC   (e.g. torch==2.1.2)}
case "$SPEC" in torch==*) ;; *) echo "TORCH_SPEC must be torch==X.Y.Z, got '$SPEC'" >&2; exit 2 ;; esac
cd "$(dirname "$0")/../.."
TORCH_VERSION=${SPEC#torch==}
TAG=torch${TORCH_VERSION}
VENV=${VENV:-.venv-compat-$TAG}
PYTHON=${PYTHON:-python3.11}
MMCV_VERSION=${MMCV_VERSION:-2.1.0}
EXTRAS=${EXTRAS:-tests,deploy}
PYTEST_ARGS=${PYTEST_ARGS:--rs}
OUT_DIR=work_dirs/compat
LOG=$OUT_DIR/$TAG.log
RESULT=$OUT_DIR/$TAG.txt
mkdir -p "$OUT_DIR"
: > "$LOG"
START=$(date +%s)

say() { printf '[check_torch] %s\n' "$*" | tee -a "$LOG"; }
finish() {  # finish STATUS SUMMARY
  local status=$1 summary=$2 torch_v cpu
  torch_v=$("$VENV/bin/python" -c 'import torch;print(torch.__version__)' 2>/dev/null || echo "not installed")
  cpu=$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1)
  {
    echo "spec: $SPEC"
    echo "torch: $torch_v"
    echo "mmcv: $("$VENV/bin/python" -c 'import mmcv;print(mmcv.__version__)' 2>/dev/null || echo '-')"
    echo "numpy: $("$VENV/bin/python" -c 'import numpy;print(numpy.__version__)' 2>/dev/null || echo '-')"
    echo "venv: $VENV"
    echo "pytest: $summary"
    echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "cpu: ${cpu:-unknown} ($(nproc) cores)"
    echo "wall: $(( ($(date +%s) - START) / 60 )) min"
    echo "status: $status"
  } > "$RESULT"
  cat "$RESULT" >> "$LOG"
  echo
  cat "$RESULT"
  echo "[check_torch] $status: make test-fast with torch $torch_v: $summary (log: $LOG)"
  [ "$status" = PASSED ]
  exit $?
}

# torch before 2.4 was compiled against NumPy 1.x (numpy 2 breaks its C API
# use), and opencv-python-headless 4.12+ needs numpy 2
CONSTRAINTS=$VENV/compat-constraints.txt
minor=$(echo "$TORCH_VERSION" | awk -F. '{printf "%d%03d", $1, $2}')

say "1/3 venv $VENV with $SPEC"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV" 2>&1 | tee -a "$LOG" || finish FAILED "no venv"
fi
: > "$CONSTRAINTS"
if [ "$minor" -lt 2004 ]; then
  printf 'numpy<2\nopencv-python-headless<4.12\n' >> "$CONSTRAINTS"
fi
echo "$SPEC" >> "$CONSTRAINTS"
PIP="$VENV/bin/python -m pip --disable-pip-version-check"
$PIP install -c "$CONSTRAINTS" 'setuptools>=77,<81' wheel packaging ninja "$SPEC" \
  'mmengine>=0.10.4,<0.11' opencv-python-headless numpy 2>&1 | tee -a "$LOG" \
  || finish FAILED "pip could not install $SPEC"

say "2/3 mmcv $MMCV_VERSION from source for this torch (kept in $VENV/wheels)"
if ls "$VENV"/wheels/mmcv-"$MMCV_VERSION"-*.whl >/dev/null 2>&1; then
  say "built before: $(ls "$VENV"/wheels/mmcv-"$MMCV_VERSION"-*.whl)"
else
  # FORCE_CUDA=0 and no visible GPU: CPU ops only. --no-cache-dir: a wheel
  # built for this torch must not land in pip's cache, where another venv's
  # source build could pick it up. --no-build-isolation: against this torch.
  MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS=${MAX_JOBS:-$(nproc)} \
    $PIP wheel -c "$CONSTRAINTS" --no-deps --no-build-isolation --no-cache-dir \
      --no-binary mmcv -w "$VENV/wheels" "mmcv==$MMCV_VERSION" 2>&1 | tee -a "$LOG" \
    || finish FAILED "mmcv $MMCV_VERSION did not build"
fi

say "3/3 make test-fast VENV=$VENV TORCH_SPEC=$SPEC (tools/install.sh installs the rest)"
WHEELS="$VENV/wheels" EXTRAS="$EXTRAS" PIP_EXTRA="-c $CONSTRAINTS" \
  make test-fast VENV="$VENV" TORCH_SPEC="$SPEC" PYTEST_ARGS="$PYTEST_ARGS" 2>&1 | tee -a "$LOG"
rc=${PIPESTATUS[0]}
# pytest's closing line, e.g. "812 passed, 24 skipped, 40 deselected in 95.12s"
summary=$(grep -E '^(=+ )?[0-9]+ (passed|failed|error|skipped|deselected)' "$LOG" | tail -1 | sed 's/=//g; s/^ *//; s/ *$//')
[ -n "$summary" ] || summary="no pytest summary (install failed? see $LOG)"
if [ "$rc" -eq 0 ]; then finish PASSED "$summary"; else finish FAILED "$summary (exit $rc)"; fi
