#!/usr/bin/env bash
# The README's first command: set up, then run the whole pipeline on the embedded real data.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/cpgformer demo "$@"
