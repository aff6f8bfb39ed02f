#!/usr/bin/env bash
# GeoIP tests: the full-size GeoLite2-City database (tests/geoip.rs start-up test, benches).
# Idempotent: scripts/fetch-geolite2 does nothing when the file is already there.
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/fetch-geolite2
