#!/usr/bin/env bash
# Make sure Debian/Ubuntu packages are installed: with apt-get when root, otherwise stop
# and print the exact command to run. Usage: scripts/require-packages.sh PKG...
set -euo pipefail
missing=()
for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ]; then
    echo ">> installing ${missing[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
    echo "error: missing system packages: ${missing[*]}" >&2
    echo "run:   sudo apt-get install -y ${missing[*]}" >&2
    exit 1
fi
