#!/usr/bin/env bash
# Regenerates the checked-in Python stubs in shardsearch/v1/ from proto/ (grpcio-tools pinned in pyproject's dev extra).
# `scripts/gen_proto.sh --check` fails if the checked-in stubs are out of date.
set -euo pipefail
cd "$(dirname "$0")/.."
out=.
if [[ "${1:-}" == "--check" ]]; then out=$(mktemp -d); mkdir -p "$out/shardsearch/v1"; fi
python -m grpc_tools.protoc -Iproto --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  proto/shardsearch/v1/search.proto proto/shardsearch/v1/shard.proto proto/shardsearch/v1/admin.proto
if [[ "${1:-}" == "--check" ]]; then
  for f in "$out"/shardsearch/v1/*.py*; do
    cmp -s "$f" "shardsearch/v1/$(basename "$f")" || { echo "stale generated stub: shardsearch/v1/$(basename "$f"); run scripts/gen_proto.sh" >&2; exit 1; }
  done
  echo "generated stubs are up to date"
fi
