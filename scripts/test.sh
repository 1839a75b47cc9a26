#!/usr/bin/env bash
# Set up tibspace + test dependencies in .venv (first time only; installs Xvfb
# via apt when run as root) and run the whole test suite, napari tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_env.sh
ensure_venv test
ensure_gui_system_packages
export QT_API=pyqt6 PYTEST_QT_API=pyqt6 QT_QPA_PLATFORM=xcb MPLBACKEND=Agg
export XDG_RUNTIME_DIR=/tmp/runtime-$(id -u); mkdir -p -m 700 "$XDG_RUNTIME_DIR"
exec xvfb-run -a -s "-screen 0 1920x1080x24" .venv/bin/python -m pytest -W "ignore::DeprecationWarning" "$@"
