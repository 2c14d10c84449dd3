"""A no-op `grpc.aio` SearchService: Search answers 10 canned hits, BatchSearch n x 10, whatever was asked.

The Python gRPC transport's ceiling for a unary search with a given client, measured in the same run as the
cluster (benchmarks/latency.py). Usage: python benchmarks/noop_server.py --port-file FILE

With `--forward SHARD_ADDRESS` it is instead the floor of any two-tier Python design: each Search makes one
`ShardService.Search` call to that shard (collection "bench") and answers with its ids, with no other logic (no
validation, batching, metrics, merging or retries): what one grpc.aio server hop plus one grpc.aio client hop cost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

import grpc

from shardsearch.v1 import search_pb2, search_pb2_grpc, shard_pb2, shard_pb2_grpc

HITS = [search_pb2.Hit(id=f"doc-{i}", score=1.0 - i / 100) for i in range(10)]


class NoopSearch(search_pb2_grpc.SearchServiceServicer):
    def __init__(self) -> None:
        self._answer = search_pb2.SearchResponse(hits=HITS)

    async def Search(self, request: search_pb2.SearchRequest, context: Any) -> search_pb2.SearchResponse:
        return self._answer

    async def BatchSearch(self, request: search_pb2.BatchSearchRequest, context: Any) -> search_pb2.BatchSearchResponse:
        rows = len(request.vectors_f32) // (4 * 384) or 1
        return search_pb2.BatchSearchResponse(results=[self._answer] * rows)


class Forward(search_pb2_grpc.SearchServiceServicer):
    def __init__(self, shard: str) -> None:
        self._stub = shard_pb2_grpc.ShardServiceStub(grpc.aio.insecure_channel(shard))

    async def Search(self, request: search_pb2.SearchRequest, context: Any) -> search_pb2.SearchResponse:
        answer = await self._stub.Search(shard_pb2.ShardSearchRequest(
            collection="bench", queries_f32=request.vector_f32, n=1, k=request.k, nprobe=request.nprobe), timeout=10)
        response = search_pb2.SearchResponse()
        for item_id in answer.ids:
            response.hits.add(id=item_id)
        return response


async def serve(port_file: str, forward: str | None) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    search_pb2_grpc.add_SearchServiceServicer_to_server(Forward(forward) if forward else NoopSearch(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    with open(port_file, "w") as fh:
        json.dump({"grpc": port}, fh)
    await server.wait_for_termination()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--forward", help="a shard's address: forward each Search to it (the two-hop floor)")
    args = parser.parse_args()
    asyncio.run(serve(args.port_file, args.forward))
