#!/usr/bin/env bash
# Installs what the benchmark needs beyond the Python venv: nginx (the static-file ceiling)
# and autocannon (the load generator; it speaks HTTP/1.1 over a Unix socket with -S).
# Idempotent: a tool already on PATH (or in bench/.npm) is left alone.
# Debian/Ubuntu, run as root (or with sudo available).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
fi

if command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; then
    echo "nginx: present ($(/usr/sbin/nginx -v 2>&1 || nginx -v 2>&1))"
else
    echo "nginx: installing from the Debian archive"
    $sudo apt-get update -qq
    # nginx-light is enough; the package's own service is not wanted: the benchmark starts
    # its own nginx with its own config in a temp dir.
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends nginx-light \
        || DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends nginx
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet nginx 2>/dev/null; then
        $sudo systemctl stop nginx || true
        $sudo systemctl disable nginx || true
    fi
fi

if command -v autocannon >/dev/null 2>&1; then
    echo "autocannon: present ($(command -v autocannon))"
elif [ -x "$here/.npm/bin/autocannon" ]; then
    echo "autocannon: present ($here/.npm/bin/autocannon)"
else
    if ! command -v npm >/dev/null 2>&1; then
        echo "npm: installing from the Debian archive"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends nodejs npm
    fi
    if [ "$(id -u)" -eq 0 ]; then
        echo "autocannon: installing globally with npm"
        npm install -g --no-fund --no-audit autocannon
    else
        echo "autocannon: installing into $here/.npm with npm"
        npm install --prefix "$here/.npm" -g --no-fund --no-audit autocannon
    fi
fi
echo "ready: python bench/serve.py --duration 5"
