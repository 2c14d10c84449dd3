"""ShardService RPCs: each a few lines over the shard's core (core.py: collections, writes, reads, the ring layout)
and its search path (queries.py); SearchStream's window and ExportCollection's stream (export.py) are the only
handlers that do more than map a request to a call. Errors become statuses through `errors.rpc`.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

import grpc

from shardsearch import validation
from shardsearch.errors import FailedPrecondition, InvalidArgument, rpc, rpc_stream
from shardsearch.shard_server import export
from shardsearch.shard_server.core import ShardCore
from shardsearch.shard_server.queries import DEFAULT_TIMEOUT_S, ShardQueries
from shardsearch.v1 import shard_pb2, shard_pb2_grpc

Context = grpc.aio.ServicerContext


def _deadline(context: Context) -> float:
    remaining = context.time_remaining()
    return DEFAULT_TIMEOUT_S if remaining is None else remaining


class ShardServicer(shard_pb2_grpc.ShardServiceServicer):
    def __init__(self, core: ShardCore, queries: ShardQueries) -> None:
        self.core = core
        self.queries = queries

    @property
    def name(self) -> str:
        return self.core.name

    @property
    def catching_up(self) -> bool:
        return self.core.catching_up

    async def close(self) -> None:
        await self.queries.close()
        await self.core.close()

    # ---- collections ------------------------------------------------------------------------------------------

    @rpc("CreateCollection")
    async def CreateCollection(
        self, request: shard_pb2.ShardCreateCollectionRequest, context: Context
    ) -> shard_pb2.ShardCreateCollectionResponse:
        validation.check_collection(request.collection)
        await self.core.create(request.collection)
        return shard_pb2.ShardCreateCollectionResponse(collection=request.collection)

    @rpc("DropCollection")
    async def DropCollection(
        self, request: shard_pb2.ShardDropCollectionRequest, context: Context
    ) -> shard_pb2.ShardDropCollectionResponse:
        await self.core.drop(request.name)
        return shard_pb2.ShardDropCollectionResponse()

    @rpc("ListCollections")
    async def ListCollections(
        self, request: shard_pb2.ShardListCollectionsRequest, context: Context
    ) -> shard_pb2.ShardListCollectionsResponse:
        return shard_pb2.ShardListCollectionsResponse(collections=self.core.specs())

    @rpc("Stats")
    async def Stats(self, request: shard_pb2.ShardStatsRequest, context: Context) -> shard_pb2.ShardStatsResponse:
        coll = self.core.collection(request.collection, read=True)
        return shard_pb2.ShardStatsResponse(info=await self.core.run(coll.info))

    # ---- writes and reads by id -------------------------------------------------------------------------------

    @rpc("Upsert")
    async def Upsert(self, request: shard_pb2.ShardUpsertRequest, context: Context) -> shard_pb2.ShardUpsertResponse:
        return shard_pb2.ShardUpsertResponse(upserted=await self.core.upsert(request, _deadline(context)))

    @rpc("Delete")
    async def Delete(self, request: shard_pb2.ShardDeleteRequest, context: Context) -> shard_pb2.ShardDeleteResponse:
        return shard_pb2.ShardDeleteResponse(deleted=await self.core.delete(request, _deadline(context)))

    @rpc("Get")
    async def Get(self, request: shard_pb2.ShardGetRequest, context: Context) -> shard_pb2.ShardGetResponse:
        return await self.core.get(request)

    @rpc("ListIds")
    async def ListIds(self, request: shard_pb2.ShardListIdsRequest, context: Context) -> shard_pb2.ShardListIdsResponse:
        return await self.core.list_ids(request)

    # ---- search -----------------------------------------------------------------------------------------------

    @rpc("Search")
    async def Search(self, request: shard_pb2.ShardSearchRequest, context: Context) -> shard_pb2.ShardSearchResponse:
        return await self.queries.search(request, _deadline(context))

    async def SearchStream(
        self, requests: AsyncIterator[shard_pb2.ShardSearchStreamRequest], context: Context
    ) -> None:
        """Each message is a Search of its own (its own deadline, request id, status, metrics and access line),
        answered as soon as it is done; the stream ends when the caller closes its side and every answer is sent."""
        replies: asyncio.Queue[shard_pb2.ShardSearchStreamResponse | None] = asyncio.Queue()
        running: set[asyncio.Task[None]] = set()

        async def answer(message: shard_pb2.ShardSearchStreamRequest) -> None:
            reply = shard_pb2.ShardSearchStreamResponse(tag=message.tag)
            reply.code, reply.message = await self.queries.stream_message(message, reply.response)
            replies.put_nowait(reply)

        async def read() -> None:
            try:
                async for message in requests:
                    task = asyncio.create_task(answer(message))
                    running.add(task)
                    task.add_done_callback(running.discard)
                if running:
                    await asyncio.wait(list(running))
            finally:
                replies.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (reply := await replies.get()) is not None:
                await context.write(reply)
        finally:
            reader.cancel()
            for task in list(running):
                task.cancel()

    # ---- replication ------------------------------------------------------------------------------------------

    @rpc_stream("ExportCollection")
    async def ExportCollection(
        self, request: shard_pb2.ShardExportRequest, context: Context
    ) -> AsyncIterator[shard_pb2.ShardExportChunk]:
        async for chunk in export.export(self.core, request):
            yield chunk

    @rpc("Resync")
    async def Resync(self, request: shard_pb2.ShardResyncRequest, context: Context) -> shard_pb2.ShardResyncResponse:
        if self.core.on_resync is None:
            raise FailedPrecondition(f"replica {self.core.name} has no peers configured (--peers) to catch up from")
        # Before answering, reads stop (unless a later catch-up already covers the write): from then on no reader
        # can see the missed write's absence here.
        self.core.on_resync(request.reason or "asked by a coordinator", request.missed_version)
        return shard_pb2.ShardResyncResponse()

    @rpc("Checksum")
    async def Checksum(
        self, request: shard_pb2.ShardChecksumRequest, context: Context
    ) -> shard_pb2.ShardChecksumResponse:
        return await self.core.checksum(request)

    # ---- ring layout (resharding) -----------------------------------------------------------------------------

    @rpc("GetTopology")
    async def GetTopology(
        self, request: shard_pb2.ShardGetTopologyRequest, context: Context
    ) -> shard_pb2.ShardGetTopologyResponse:
        return self.core.layout.shown()

    @rpc("SetTopology")
    async def SetTopology(
        self, request: shard_pb2.ShardSetTopologyRequest, context: Context
    ) -> shard_pb2.ShardSetTopologyResponse:
        if not request.topology.version or not request.shard:
            raise InvalidArgument("topology.version and shard are required")
        return shard_pb2.ShardSetTopologyResponse(dropped=await self.core.layout.store(request))

    # ---- retraining -------------------------------------------------------------------------------------------

    @rpc("Retrain")
    async def Retrain(self, request: shard_pb2.ShardRetrainRequest, context: Context) -> shard_pb2.ShardRetrainResponse:
        return shard_pb2.ShardRetrainResponse(status=await self.core.retrain(request.collection, request.force))

    @rpc("RetrainStatus")
    async def RetrainStatus(
        self, request: shard_pb2.ShardRetrainStatusRequest, context: Context
    ) -> shard_pb2.ShardRetrainResponse:
        return shard_pb2.ShardRetrainResponse(
            status=await self.core.retrain_status(request.collection, request.measure))
