#!/usr/bin/env bash
# The explorer in a real browser: start JupyterLab on 127.0.0.1 with a token, open
# notebooks/explore_layers.ipynb in headless Chromium, run it, click one control, and save a
# screenshot of the rendered widget (default docs/explorer.png).
#
#   scripts/browser_check.sh [screenshot.png]
#
# Needs Debian's chromium + chromium-driver; as root it installs them with apt-get (set
# BROWSER_CHECK_INSTALL=0 to never install). Without them it prints SKIP and exits 0.
# The notebook runs from a temporary copy, so JupyterLab's autosave never writes outputs into notebooks/.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=$(realpath -m "${1:-docs/explorer.png}")
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3

have_browser() { command -v chromium >/dev/null && command -v chromedriver >/dev/null; }
if ! have_browser && [ "${BROWSER_CHECK_INSTALL:-1}" = 1 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "[browser_check] installing chromium and chromium-driver with apt-get"
  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      chromium chromium-driver; } >/dev/null 2>&1 || echo "[browser_check] apt-get could not install them"
fi
if ! have_browser; then
  echo "SKIP browser check: chromium and chromedriver are not installed (Debian: apt-get install chromium chromium-driver)."
  exit 0
fi

work=$(mktemp -d)
cp notebooks/explore_layers.ipynb "$work/"
port=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
token=$("$PY" -c 'import secrets; print(secrets.token_hex(16))')
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the kernel imports this checkout's t2istudy
export JUPYTER_RUNTIME_DIR="$work/runtime" OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
"$PY" -m jupyter lab --no-browser --ServerApp.ip=127.0.0.1 --ServerApp.port="$port" \
  --IdentityProvider.token="$token" --ServerApp.root_dir="$work" --LabApp.expose_app_in_browser=True \
  --LabApp.workspaces_dir="$work/workspaces" $([ "$(id -u)" = 0 ] && echo --ServerApp.allow_root=True) \
  >"$work/lab.log" 2>&1 &
lab=$!
cleanup() { kill "$lab" 2>/dev/null || true; wait "$lab" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

# wait (up to 10 min on a loaded machine) until the server answers, or report why it stopped
if ! "$PY" - "$port" "$token" "$lab" <<'EOF'
import sys, time, urllib.request
port, token, pid = sys.argv[1:4]
for _ in range(600):
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=5)
        sys.exit(0)
    except OSError:
        pass
    try:  # JupyterLab stopped (gone, or a zombie until this script reaps it)
        if open(f"/proc/{pid}/stat").read().rsplit(") ", 1)[1][0] == "Z":
            sys.exit(3)
    except OSError:
        sys.exit(3)
    time.sleep(1)
sys.exit(4)
EOF
then
  echo "[browser_check] JupyterLab did not come up:"; tail -20 "$work/lab.log"; exit 1
fi
echo "[browser_check] JupyterLab on 127.0.0.1:$port"
"$PY" scripts/browser_check.py --url "http://127.0.0.1:$port/lab/tree/explore_layers.ipynb?token=$token" --out "$OUT" \
  || { status=$?; echo "[browser_check] JupyterLab log:"; tail -30 "$work/lab.log"; exit "$status"; }
