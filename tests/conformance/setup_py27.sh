#!/usr/bin/env bash
# Idempotently create the Python 2.7 venv that runs Autobahn|Testsuite (wstest).
#
#   bash tests/conformance/setup_py27.sh          # create / update .conformance/venv27
#   PY27=/path/to/python2.7 bash tests/conformance/setup_py27.sh
#
# Needs: a CPython 2.7 interpreter (pyenv's 2.7.18 is found automatically), a Python 3
# interpreter (python3 / $PYTHON3) to run virtualenv==20.21.1 (the last virtualenv that
# can create 2.7 venvs) and PyPI access. Every package is pinned in requirements-py27.txt
# and installed with --no-deps, so nothing floats. wsaccel and ujson build from sdists
# (gcc + Python.h, both present here); everything else installs from cp27mu wheels.
# Exit codes: 0 ok, 3 no python2.7 on this machine (callers skip), other = failure.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
CONF_DIR="${CONFORMANCE_DIR:-$ROOT/.conformance}"
VENV="$CONF_DIR/venv27"
TOOLS="$CONF_DIR/venv-tools"          # throwaway py3 venv holding virtualenv==20.21.1
REQ="$HERE/requirements-py27.txt"
STAMP="$VENV/.requirements.sha256"
PYTHON3="${PYTHON3:-python3}"

find_py27() {
    local c
    if [ -n "${PY27:-}" ]; then echo "$PY27"; return 0; fi
    if command -v pyenv >/dev/null 2>&1; then
        for c in "$(pyenv root)"/versions/2.7*/bin/python2.7; do
            [ -x "$c" ] && { echo "$c"; return 0; }
        done
    fi
    for c in "$HOME"/.pyenv/versions/2.7*/bin/python2.7 python2.7 python2; do
        if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys; sys.exit(sys.version_info[:2] != (2, 7))' 2>/dev/null; then
            command -v "$c"; return 0
        fi
    done
    return 1
}

if ! PY27_BIN="$(find_py27)"; then
    echo "setup_py27: no CPython 2.7 interpreter found (set PY27=...)" >&2
    exit 3
fi

want="$(cat "$REQ" "$0" | sha256sum | cut -d' ' -f1)"
if [ -x "$VENV/bin/wstest" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
    echo "setup_py27: $VENV is up to date"
    exit 0
fi

mkdir -p "$CONF_DIR"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PYTHONWARNINGS=ignore

if [ ! -x "$TOOLS/bin/virtualenv" ]; then
    echo "setup_py27: installing virtualenv==20.21.1 into $TOOLS"
    "$PYTHON3" -m venv "$TOOLS"
    "$TOOLS/bin/python" -m pip install -q "virtualenv==20.21.1"
fi

if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info[:2] != (2, 7))' 2>/dev/null; then
    echo "setup_py27: creating $VENV from $PY27_BIN"
    rm -rf "$VENV"
    # 20.21.1 embeds pip 20.3.4 / setuptools 44.1.1 / wheel 0.37.1 for 2.7: no download.
    "$TOOLS/bin/virtualenv" -q --no-periodic-update -p "$PY27_BIN" "$VENV"
fi

echo "setup_py27: installing pinned requirements"
"$VENV/bin/python" -m pip install -q --no-deps -r "$REQ"
"$VENV/bin/python" -m pip check
"$VENV/bin/wstest" --help >/dev/null
echo "$want" > "$STAMP"
echo "setup_py27: ready: $VENV/bin/wstest"
