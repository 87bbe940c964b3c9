#!/usr/bin/env bash
# The console's browser tests drive Debian's Chromium through Playwright (Playwright's own browser
# download cannot work here). Installs it when it can (root with apt-get), else stops at once with
# the command to run. Used by `make test` and `.ci/run`.
set -euo pipefail
chromium="${CONFIGCENTER_CHROMIUM:-/usr/bin/chromium}"
[ -x "$chromium" ] && exit 0
log=/tmp/configcenter-apt-chromium.log
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "== installing chromium for the console's browser tests (log: $log) =="
  timeout 600 apt-get install -y -q chromium >"$log" 2>&1 \
    || { timeout 300 apt-get update -q >>"$log" 2>&1 && timeout 600 apt-get install -y -q chromium >>"$log" 2>&1; } \
    || true
  [ -x "$chromium" ] && exit 0
  echo "== FAIL: chromium could not be installed (see $log) ==" >&2
  tail -20 "$log" >&2 2>/dev/null || true
  exit 1
fi
echo "== the console's browser tests need Chromium at $chromium. Install it, then run make test again:" >&2
echo "     sudo apt-get install -y chromium" >&2
echo "   (or point CONFIGCENTER_CHROMIUM at a Chromium binary) ==" >&2
exit 1
