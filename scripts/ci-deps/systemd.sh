#!/usr/bin/env bash
# What tests/deploy.rs needs to check deploy/sheepdog.service: systemd-analyze (Debian package
# systemd; only the tool is used, no init system is started). Idempotent: installs only when
# missing.
set -euo pipefail
if ! command -v systemd-analyze >/dev/null; then
  if command -v apt-get >/dev/null; then
    sudo_cmd=""
    [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq && $sudo_cmd apt-get install -y -qq --no-install-recommends systemd
  else
    echo "systemd-analyze is missing and apt-get is not available: install systemd" >&2
    exit 1
  fi
fi
systemd-analyze --version | head -n1
