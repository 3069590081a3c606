#!/usr/bin/env bash
# Build a single-file zipapp, dist/ccn-node.pyz, with shiv (pip install shiv).
#
# Why shiv and not the stdlib zipapp: apsw, msgspec, numpy and cryptography ship compiled
# modules, which Python cannot import from inside a zip. A shiv file unpacks its
# site-packages once into $SHIV_ROOT (default ~/.shiv) on first start and reuses it after.
# The result contains compiled wheels for *this* machine's platform and Python version
# (here: CPython 3.11, linux x86_64): build it on (or for) the kind of machine it will run on,
# e.g. build on a Raspberry Pi for a Raspberry Pi.
#
# usage: packaging/build_zipapp.sh [OUTPUT]        (default dist/ccn-node.pyz)
#        PYTHON=python3.12 packaging/build_zipapp.sh   to build for another interpreter
set -euo pipefail
cd "$(dirname "$0")/.."

OUT="${1:-dist/ccn-node.pyz}"
PYTHON="${PYTHON:-python3}"

if ! "$PYTHON" -m shiv --version >/dev/null 2>&1; then
    echo "build_zipapp: shiv is not installed for $PYTHON (pip install shiv)" >&2
    exit 1
fi
mkdir -p "$(dirname "$OUT")"
# --reproducible: same sources and wheels → same bytes; the entry point is the CLI's main().
"$PYTHON" -m shiv \
    --entry-point ccn_node.cli:main \
    --output-file "$OUT" \
    --python "/usr/bin/env python3" \
    --compressed \
    --reproducible \
    --no-cache-dir \
    . >&2
echo "$OUT"
