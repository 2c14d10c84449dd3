"""shardsearch: a gRPC sharded vector-search cluster (coordinator + FAISS shard servers)."""

__version__ = "0.1.0"
