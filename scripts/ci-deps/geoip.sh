#!/usr/bin/env bash
# GeoIP tests: the full-size GeoLite2-City database for tests/geoip.rs (start-up while the
# database is verified). Kept out of GeoLite2/ so the other black-box tests keep running the
# shipped pipeline without a database, as before. Idempotent: scripts/fetch-geolite2 does
# nothing when the file is already there.
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/fetch-geolite2 target/geolite2/GeoLite2-City.mmdb
