#!/usr/bin/env bash
# Every GPU measurement of the GPU issue with one command, on a machine with a CUDA GPU.
#
# Usage:
#   bash tools/gpu_check.sh [OUT_DIR] [tools/gpu_check.py options]    # OUT_DIR default: $OUT, else gpu_check_out
#   bash tools/gpu_check.sh --fetch-wheels [DIR]                       # once, where PyPI is reachable (default .whl)
#
# The Python is $PYTHON, else .venv/bin/python when it exists, else python3; speechcl runs from this
# checkout (PYTHONPATH), uninstalled. What that Python lacks among speechcl's needs on this path (soundfile,
# and cffi under it) is installed from the wheels in .whl/ into a temporary folder; `--fetch-wheels` downloads
# them (CPython 3.12, x86-64 Linux: the GPU image's Python). About 9 minutes on an H200; results in OUT_DIR
# (results.json, summary.md, log.txt). Exit status as tools/gpu_check.py's.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--fetch-wheels" ]; then
  dest=${2:-.whl}
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$dest" soundfile==0.14.0 cffi==2.1.1 pycparser==3.12
  exit 0
fi

out_dir=${1:-${OUT:-gpu_check_out}}
[ $# -gt 0 ] && shift
py=${PYTHON:-}
if [ -z "$py" ]; then
  if [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=python3; fi
fi
if ! "$py" -c "import soundfile" 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/speechcl-site .whl/*.whl
    export PYTHONPATH=/tmp/speechcl-site${PYTHONPATH:+:$PYTHONPATH}
  else
    echo "tools/gpu_check.sh: $py cannot import soundfile and there is no .whl/ folder:" \
         "run 'bash tools/gpu_check.sh --fetch-wheels' where PyPI is reachable and carry .whl along" >&2
    exit 2
  fi
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
exec "$py" tools/gpu_check.py --out "$out_dir" "$@"
