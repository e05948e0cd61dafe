#!/usr/bin/env bash
# One command: set up, generate the bundled synthetic cohort and run the whole pipeline through Dagster.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/rtmap demo "$@"
