#!/usr/bin/env bash
# Makes the Python environment the spec-only test peer (tests/peers/spec_peer.py)
# runs in: a venv under target/py with pyzmq and msgpack from PyPI, and
# kubernetes-validate (it carries the Kubernetes schemas: deploy/k8s is checked
# offline against them by tests/e2e/deploy.rs). Prints the
# interpreter's path; prints nothing (and exits 0) when python3 or the packages
# cannot be had, and the test then says it is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/py
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import zmq, msgpack, kubernetes_validate' 2>/dev/null; then
    command -v python3 >/dev/null 2>&1 || { echo "python-peer-env: no python3; the spec peer test is skipped" >&2; exit 0; }
    python3 -m venv "$venv" >&2 || { echo "python-peer-env: python3 -m venv failed; skipped" >&2; exit 0; }
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        'pyzmq>=25,<28' 'msgpack>=1,<2' 'kubernetes-validate>=1.30,<2' >&2 ||
        { echo "python-peer-env: pip could not install pyzmq, msgpack and kubernetes-validate; skipped" >&2; exit 0; }
fi
echo "$(pwd)/$venv/bin/python"
