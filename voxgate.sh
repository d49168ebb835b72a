#!/usr/bin/env bash
# voxgate's two commands, each self-contained on a fresh Debian machine:
#   ./voxgate.sh run  [voxgate serve options]   set everything up, start the server
#   ./voxgate.sh test [pytest options]          set everything up, run ruff, mypy and the tests
# Set-up is idempotent: Debian packages are installed only when missing, the
# virtualenv only when its inputs changed, the native kernels only when stale.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
cd "$ROOT"

log() { printf '\033[1m[voxgate]\033[0m %s\n' "$*" >&2; }

# Debian packages: toolchain for the Cython build, and the real peers and
# tools the tests drive (espeak-ng synthesises the speech used in tests).
RUN_DEBS=(python3 python3-venv python3-dev gcc espeak-ng)
TEST_DEBS=("${RUN_DEBS[@]}" sox chromium sip-tester baresip-core)

install_debs() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then sudo=(sudo); else
            log "missing Debian packages: ${missing[*]} (not root and no sudo: install them, then rerun)"
            exit 1
        fi
    fi
    log "installing Debian packages: ${missing[*]}"
    "${sudo[@]}" apt-get update -q
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
}

setup_venv() {
    local extras="$1" stamp="$VENV/.voxgate-stamp" want
    if [ ! -x "$PY" ]; then
        log "creating $VENV"
        python3 -m venv "$VENV"
    fi
    want="$extras $(cat pyproject.toml setup.py | sha256sum | cut -c1-16)"
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        log "installing voxgate[$extras] into $VENV"
        "$PY" -m pip install -q --upgrade pip setuptools wheel
        "$PY" -m pip install -q -e ".[$extras]"
        echo "$want" > "$stamp"
    fi
    # Rebuild native kernels whose .pyx changed (a no-op when up to date).
    "$PY" setup.py -q build_ext --inplace >/dev/null
}

cmd_run() {
    install_debs "${RUN_DEBS[@]}"
    setup_venv dev
    exec "$VENV/bin/voxgate" serve "$@"
}

cmd_test() {
    install_debs "${TEST_DEBS[@]}"
    setup_venv dev
    log "ruff"
    "$VENV/bin/ruff" check engine server bench tests
    "$VENV/bin/ruff" format --check engine server bench tests
    log "mypy"
    "$VENV/bin/mypy"
    log "pytest"
    # Benchmarks run once each as smoke tests here; `voxgate bench engine` times them.
    # pytest exits 5 when no test ran: set -e makes that a failure.  Chromium was
    # installed above, so the browser and SIP peer tests must run, not skip.
    export E2E_REQUIRE_BROWSER="${E2E_REQUIRE_BROWSER:-1}"
    export E2E_REQUIRE_PEERS="${E2E_REQUIRE_PEERS:-1}"   # sipp and baresip likewise
    "$PY" -m pytest -p no:cacheprovider --benchmark-disable "$@"
}

case "${1:-}" in
    run) shift; cmd_run "$@" ;;
    test) shift; cmd_test "$@" ;;
    *) echo "usage: $0 run [serve options] | test [pytest options]" >&2; exit 2 ;;
esac
