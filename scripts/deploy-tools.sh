#!/usr/bin/env bash
# Installs the real consumers of deploy/ and of the metrics endpoints that
# tests/e2e/deploy_run.rs runs, when they are missing (idempotent; quick when
# everything is there):
#   systemd-analyze  (Debian `systemd`)      verify and rate the units
#   promtool         (Debian `prometheus`)   check live /metrics scrapes
#   checkov          (PyPI, venv target/checkov)  the Dockerfile and the manifests
#   tsc              (npm, target/tsc)        the docs' TypeScript/JavaScript blocks
# Prints the checkov program's path (nothing when it cannot be had). Never
# fails the caller: a test whose tool is missing says it is skipped.
set -uo pipefail
cd "$(dirname "$0")/.."
apt_pkgs=()
command -v systemd-analyze >/dev/null 2>&1 || apt_pkgs+=(systemd)
command -v promtool >/dev/null 2>&1 || apt_pkgs+=(prometheus)
if [ ${#apt_pkgs[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "deploy-tools: apt-get install ${apt_pkgs[*]}" >&2
        inst() { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt_pkgs[@]}" >/dev/null 2>&1; }
        inst || { apt-get update -qq >/dev/null 2>&1; inst; } ||
            echo "deploy-tools: could not install ${apt_pkgs[*]}; their tests are skipped" >&2
    else
        echo "deploy-tools: not root or no apt-get: ${apt_pkgs[*]} missing; their tests are skipped" >&2
    fi
fi
if [ ! -x target/tsc/node_modules/.bin/tsc ] && command -v npm >/dev/null 2>&1; then
    npm install --prefix target/tsc --no-audit --no-fund --silent 'typescript@5' >&2 ||
        echo "deploy-tools: npm could not install typescript; the docs' tsc test is skipped" >&2
fi
venv=target/checkov
if [ ! -x "$venv/bin/checkov" ]; then
    if command -v python3 >/dev/null 2>&1 && python3 -m venv "$venv" >&2 &&
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check 'checkov>=3.2,<4' >&2; then
        :
    else
        echo "deploy-tools: pip could not install checkov; its tests are skipped" >&2
        exit 0
    fi
fi
echo "$(pwd)/$venv/bin/checkov"
