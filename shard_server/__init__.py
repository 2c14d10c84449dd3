"""Shard server: owns one shard of every collection (FAISS IVF-PQ + an exact fresh buffer)."""
