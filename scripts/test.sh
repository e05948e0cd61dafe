#!/usr/bin/env bash
# One command: set up (incl. Debian chromium for the UI test and elastix for the seed engine) and run the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
RTMAP_SYSTEM_PACKAGES=1 scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
