#!/usr/bin/env bash
# Headless Chromium and its WebDriver for tests/test_mlflow_ui.py: Debian's chromium and
# chromium-driver (apt-get, as root or through sudo), unless both are already on PATH.
set -euo pipefail

die() { echo "tests/browser/install.sh: $*" >&2; exit 1; }

if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    exit 0
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || die "chromium and chromium-driver are missing; install them as root: apt-get install chromium chromium-driver"
    sudo="sudo"
fi
command -v apt-get >/dev/null || die "chromium and chromium-driver are missing and this is not a Debian/Ubuntu machine: install Chromium and a matching chromedriver by hand"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver >/dev/null
command -v chromium >/dev/null && command -v chromedriver >/dev/null || die "apt-get ran but chromium or chromedriver is still not on PATH"
