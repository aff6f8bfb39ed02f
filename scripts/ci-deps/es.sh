#!/usr/bin/env bash
# Peers for tests/elasticsearch.rs and tests/end_to_end.rs: osmem-server (in-memory
# Elasticsearch/OpenSearch-compatible server). Idempotent: installs only when missing, then
# checks that the binary runs.
set -euo pipefail
if ! python3 -c "import osmem_server" 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check osmem-server
fi
bin=$(python3 -c "import osmem_server; print(osmem_server.resolve_binary())")
"$bin" -version >/dev/null
echo "osmem-server: $bin"
