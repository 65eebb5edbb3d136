#!/usr/bin/env bash
# Set up this machine and run sendlab's jobs; needs no make.
#   ./sendlab.sh demo    set up, run the conformance scripts and the black-hole experiment (results/demo)
#   ./sendlab.sh test    set up, run the tests and the conformance scripts
#   ./sendlab.sh bench   set up, run every benchmarks/*.py (files starting with _ are helpers)
#   ./sendlab.sh setup   only set up (Debian packages when root, .venv, sendlab installed)
#   ./sendlab.sh clean   remove .venv, results/ and caches inside this repo
# SHARED (default ../shared, relative to the repo root) is the folder holding conformance/*.pkt.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
SHARED="${SHARED:-../shared}"
VENV=.venv

usage() { sed -n '2,9s/^# \{0,1\}//p' "$0" >&2; }

setup() { bash scripts/setup.sh; }

conform() {
    local scripts
    shopt -s nullglob
    scripts=("$SHARED"/conformance/*.pkt)
    shopt -u nullglob
    if [ ${#scripts[@]} -eq 0 ]; then
        echo "sendlab.sh: no conformance scripts in $SHARED/conformance (set SHARED=DIR)" >&2
        return 1
    fi
    "$VENV/bin/sendlab" conform "${scripts[@]}"
}

bench() {
    local b ran=0
    for b in benchmarks/*.py; do
        [ -f "$b" ] || continue
        case "$(basename "$b")" in _*) continue ;; esac
        echo "== $b"
        "$VENV/bin/python" "$b"
        ran=1
    done
    [ "$ran" = 1 ] || echo "sendlab.sh: no benchmarks in benchmarks/"
}

clean() {
    rm -rf "$VENV" results .pytest_cache .hypothesis .ruff_cache .coverage htmlcov build dist \
        ./*.egg-info
    find . -path ./.git -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +
}

case "${1:-}" in
    setup) setup ;;
    demo) setup && conform && "$VENV/bin/sendlab" sweep experiments/pmtu_blackhole_quick.yaml \
            --jobs 2 --out results/demo && "$VENV/bin/sendlab" report results/demo ;;
    test) setup && "$VENV/bin/python" -m pytest -q && conform ;;
    bench) setup && bench ;;
    clean) clean ;;
    *) usage; exit 2 ;;
esac
