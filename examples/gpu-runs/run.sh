#!/usr/bin/env bash
# The one-command GPU run, offline (issue 13): install the wheels bundle into a temporary folder, then
# execute at full scale the notebooks that hold GPU rows and store each with its provenance.
#
#   examples/gpu-runs/run.sh                       # on one H100/H200: all four notebooks + smoke check
#   examples/gpu-runs/run.sh --out DIR [NB.md ...] # elsewhere, or a subset
#   RLREF_SCALE=small examples/gpu-runs/run.sh --out /tmp/x   # the CPU check CI runs (tests/test_gpu_runs.py)
#
# The wheels come from `nox -s gpu-bundle` on a networked machine (examples/gpu-runs/wheels/, or
# $RLREF_GPU_WHEELS). Without network: pip runs with --no-index. torch and the project are never
# installed: the machine's torch is used as it is and examples/ goes on PYTHONPATH.
# $PYTHON picks the interpreter (default python3). Exit status: 0 when every notebook and the smoke
# check passed, 1 when any failed (all are run and reported), 2 when nothing could run.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
py="${PYTHON:-python3}"
wheels="${RLREF_GPU_WHEELS:-$here/wheels}"
export RLREF_SCALE="${RLREF_SCALE:-full}"

site="$(mktemp -d "${TMPDIR:-/tmp}/rlref-gpu-site.XXXXXX")"
trap 'rm -rf "$site"' EXIT
shopt -s nullglob
whl=("$wheels"/*.whl)
if [ ${#whl[@]} -gt 0 ]; then
  # the bundle was resolved when it was made: install exactly its files, nothing from an index
  if "$py" -m pip --version >/dev/null 2>&1; then
    PIP_ROOT_USER_ACTION=ignore "$py" -m pip install -q --no-index --no-deps --disable-pip-version-check --no-compile --target "$site" "${whl[@]}" \
      || { echo "run.sh: installing the wheels from $wheels failed" >&2; exit 2; }
  else  # no pip: a wheel is a zip archive of what goes on the path
    "$py" -c 'import sys, zipfile; [zipfile.ZipFile(w).extractall(sys.argv[1]) for w in sys.argv[2:]]' \
      "$site" "${whl[@]}" || exit 2
  fi
  echo "run.sh: installed ${#whl[@]} wheels from $wheels into $site (no network; torch untouched)"
elif "$py" -c 'import nbclient, ipykernel, myst_nb.core.read, yaml' 2>/dev/null; then
  echo "run.sh: no wheels in $wheels; nbclient, ipykernel and myst-nb are importable already"
else
  echo "run.sh: no wheels in $wheels and nbclient/ipykernel/myst-nb are not importable: run" \
       "'nox -s gpu-bundle' on a machine with network and copy examples/gpu-runs/wheels/ here" >&2
  exit 2
fi
export PYTHONPATH="$site:$root/examples${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
"$py" -c 'import torch, nbclient, ipykernel, myst_nb.core.read' || { echo "run.sh: imports failed" >&2; exit 2; }
"$py" "$here/run.py" "$@"
