#!/usr/bin/env bash
# Set up tibspace in .venv (first time only) and run the whole pipeline on the
# bundled synthetic HCC sample. Results land in results/demo/ (open report.html).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_env.sh
ensure_venv core
.venv/bin/tibspace demo --out results/demo "$@"
