#!/usr/bin/env bash
# Set up rtmap on a fresh machine (Python 3.11 + pip + root): a venv in .venv with the pinned stack.
#   scripts/setup.sh            runtime + test dependencies
#   RTMAP_SYSTEM_PACKAGES=1     also apt-get Debian's chromium (UI test), elastix (seed engine) and
#                               redis-server (broker of the Celery executor profile and its test)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3

if ! "$PY" -m uv --version >/dev/null 2>&1; then
  "$PY" -m pip install --quiet --disable-pip-version-check uv   # uv installs the stack ~10x faster than pip
fi
[ -x .venv/bin/python ] || "$PY" -m uv venv --quiet --python "$PY" .venv
"$PY" -m uv pip install --quiet --python .venv/bin/python -r requirements/dev.txt
# scikit-rt's metadata pins 112 old versions: install it alone, its real imports come from base.txt.
"$PY" -m uv pip install --quiet --python .venv/bin/python --no-deps scikit-rt==0.8.2
"$PY" -m uv pip install --quiet --python .venv/bin/python --no-deps -e .

if [ "${RTMAP_SYSTEM_PACKAGES:-0}" = 1 ]; then
  need=()
  command -v chromium >/dev/null || need+=(chromium chromium-driver)
  command -v elastix >/dev/null || need+=(elastix)
  command -v redis-server >/dev/null || need+=(redis-server)
  if [ ${#need[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
  fi
fi

# Bytecode once, here: with PYTHONDONTWRITEBYTECODE=1 (this environment) and uv's default of installing
# without .pyc, every fresh process (each Dagster step, each benchmark child) recompiled every module it
# imported: ~6 s of CPU before a patient's work, 2 s with the caches (benchmarks/SPEED.md, round 2).
# Up-to-date files are skipped, so a re-run costs seconds; rtmap's own sources are recompiled in memory
# when edited (the .pyc is only used while its source mtime matches).
.venv/bin/python -m compileall -q -j 0 "$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
  rtmap_assets rtmap_synth benchmarks >/dev/null || echo "compileall: some files did not compile (ignored)"

# The registration objective's compiled kernels (numba caches them beside their source): once here, not in the
# first patient's run (~3 s).
.venv/bin/python -c "from rtmap_assets.imaging.registration.bspline_mi import compile_kernels; compile_kernels()"

# dagster-dbt reads the dbt manifest when the code location loads: build it once here (offline).
(cd dbt_models && DBT_SEND_ANONYMOUS_USAGE_STATS=false ../.venv/bin/dbt parse --quiet --profiles-dir .)
echo "rtmap set up in .venv ($(.venv/bin/python --version))"
