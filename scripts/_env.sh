# Shared by quickstart.sh and test.sh: create .venv and install what is needed,
# once per version of the dependency lists (a stamp file records it).
PY=${PYTHON:-python3}

# The cellpose extra (tests/test_seg_backends.py) needs torch. Only this CPU build is
# taken, and only from a local file (pip's find-links, e.g. /opt/wheels): torch from
# the index, or any newer release, would be a CUDA build of several GB.
TORCH_PIN=torch==2.13.0

cpu_torch_on_disk() {  # installs $TORCH_PIN into .venv if a local file has it (no download)
  .venv/bin/python -m pip install -q --no-index --no-deps "$TORCH_PIN" >/dev/null 2>&1
}

ensure_venv() {  # $1 = core | test
  local kind=$1
  if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
    echo "tibspace needs Python >= 3.10 (found $("$PY" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
    exit 1
  fi
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  local sum
  sum=$(cat pyproject.toml plugins/napari/pyproject.toml scripts/_env.sh 2>/dev/null | sha1sum | cut -c1-12)
  local stamp=".venv/.installed-$kind-$sum"
  if [ ! -f "$stamp" ]; then
    echo "setting up .venv ($kind dependencies; first run takes a few minutes)..."
    .venv/bin/python -m pip install -q --upgrade pip
    if [ "$kind" = core ]; then
      .venv/bin/python -m pip install -q -e .
    else
      local extras=test torch=()
      if cpu_torch_on_disk; then
        extras=test,cellpose torch=("$TORCH_PIN")
      else
        echo "$TORCH_PIN (CPU build) is not on this machine's disk: installing without the cellpose extra, its tests will skip" >&2
      fi
      .venv/bin/python -m pip install -q -e ".[$extras]" "${torch[@]}" -e plugins/napari "napari[pyqt6]" pytest-qt
    fi
    touch "$stamp"
  fi
}

ensure_gui_system_packages() {  # Xvfb + Mesa for the napari tests, Chromium for the report screenshot
  if command -v xvfb-run >/dev/null 2>&1 && ldconfig -p 2>/dev/null | grep -q libxcb-cursor \
      && command -v chromium >/dev/null 2>&1; then
    return 0
  fi
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      xvfb xauth libgl1 libegl1 libglx-mesa0 libgl1-mesa-dri \
      libxkbcommon-x11-0 libxcb-cursor0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 \
      libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-xinerama0 libxcb-xfixes0 \
      libxcb-xkb1 libdbus-1-3 libfontconfig1 fonts-dejavu-core chromium >/dev/null
  else
    echo "xvfb-run and the Qt/xcb libraries are missing; install them as root (see scripts/_env.sh)" >&2
    exit 1
  fi
}
