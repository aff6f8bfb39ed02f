#!/usr/bin/env bash
# What tests/email.rs needs: aiosmtpd (the SMTP test server) and openssl (test certificates).
# Idempotent: installs only what is missing.
set -euo pipefail
if ! python3 -c "import aiosmtpd" 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check aiosmtpd
fi
if ! command -v openssl >/dev/null; then
  if command -v apt-get >/dev/null; then
    sudo_cmd=""
    [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq && $sudo_cmd apt-get install -y -qq openssl
  else
    echo "openssl is missing and apt-get is not available: install openssl" >&2
    exit 1
  fi
fi
python3 -c "import aiosmtpd" && openssl version >/dev/null
