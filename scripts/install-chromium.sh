#!/usr/bin/env bash
# Installs Debian's chromium and chromium-driver for the dashboard's browser test
# (tests/e2e/dashboard.rs), when they are missing and this is root with apt.
# Never fails the caller: without them the test says it is skipped.
set -uo pipefail
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install-chromium: not root or no apt-get; the browser test will be skipped" >&2
    exit 0
fi
echo "install-chromium: apt-get install chromium chromium-driver" >&2
if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1; then
    apt-get update -qq >/dev/null 2>&1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 ||
        echo "install-chromium: could not install; the browser test will be skipped" >&2
fi
exit 0
