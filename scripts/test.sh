#!/usr/bin/env bash
# The README's test command: set up, then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export CPGFORMER_NO_PROGRESS=1
exec .venv/bin/python -m pytest -q "$@"
