#!/usr/bin/env bash
# The browser the chat-page test drives: Debian's Chromium and its driver, installed with apt when
# run as root. Playwright's own browser download is not used (it needs a download site); the test
# points Playwright at /usr/bin/chromium instead. Without root or apt this only says what is missing.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
  echo "chromium: $(/usr/bin/chromium --version 2>/dev/null || echo present)"
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
  echo "chromium: $(/usr/bin/chromium --version 2>/dev/null || echo installed)"
else
  echo "chromium not installed (needs root and apt-get); the browser test will be skipped" >&2
fi
