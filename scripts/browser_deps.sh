#!/usr/bin/env bash
# The browser the browser tests drive: Debian's Chromium (Playwright for Python comes with the dev extra, and
# 'playwright install' cannot download browsers here). --install-deps installs it with apt-get when it is
# missing and we are root; without it the browser tests skip - except under CI=true, where they fail.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ${1:-} == --install-deps ]] && ! command -v chromium > /dev/null && [[ $(id -u) == 0 ]] \
        && command -v apt-get > /dev/null; then
    echo "browser_deps: installing chromium" >&2
    (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium) \
        > browser-deps.log 2>&1 || echo "browser_deps: apt-get failed (browser-deps.log)" >&2
fi
command -v chromium > /dev/null || echo "browser_deps: chromium missing - the browser tests will not run" >&2
