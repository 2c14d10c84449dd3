"""Generated protobuf/gRPC stubs for shardsearch.v1 (regenerate with scripts/gen_proto.sh; do not edit)."""
