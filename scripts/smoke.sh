#!/usr/bin/env bash
# Smoke check of a running scoring service: clean synthetic clips must beat their degraded twins.
#
#   bash scripts/smoke.sh [URL]        # default http://127.0.0.1:8000
#
# Renders a clean clip and, per dimension (VQ, MQ, TA), the same clip degraded on that dimension, sends the
# pairs to /compare, prints the scores, and exits 0 when the clean clip wins on every dimension, 1 when it
# loses on one, 2 when the server cannot be reached. Meant for the demo model (scripts/serve-demo.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-}
if [[ -z $python ]]; then
    if [[ -x .venv/bin/python ]]; then python=.venv/bin/python; else python=python3; fi
fi
exec "$python" -m training.demo smoke --url "${1:-http://127.0.0.1:8000}"
