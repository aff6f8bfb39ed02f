#!/usr/bin/env bash
# What tests/status_page.rs needs: Debian's headless-capable chromium, which renders the status
# page and dumps its DOM. Idempotent: installs only when /usr/bin/chromium is missing.
set -euo pipefail
if [ ! -x /usr/bin/chromium ]; then
  if command -v apt-get >/dev/null; then
    sudo_cmd=""
    [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq && $sudo_cmd apt-get install -y -qq chromium
  else
    echo "chromium is missing and apt-get is not available: install chromium" >&2
    exit 1
  fi
fi
/usr/bin/chromium --version
