"""`shardsearch admin`: the coordinator's AdminService from the command line (ring layout, moves, retraining).

Every command prints the answer as JSON (protobuf's JSON mapping), so scripts can read it.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import grpc
from google.protobuf import json_format

from shardsearch import security
from shardsearch.client import AsyncClient
from shardsearch.tools.exits import fail
from shardsearch.v1 import admin_pb2, admin_pb2_grpc

DONE_POLL_S = 1.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--coordinator", default="127.0.0.1:50051", help="coordinator address (default 127.0.0.1:50051)")
    parser.add_argument("--timeout", type=float, default=60.0, help="deadline of each call, seconds (default 60)")
    security.ClientSecurity.add_arguments(parser)
    actions = parser.add_subparsers(dest="action", required=True)

    actions.add_parser("topology", help="show the ring layout and the move in progress")
    add = actions.add_parser("add-shard", help="add a running, empty shard to the ring (moves ~1/(N+1) of the ids)")
    add.add_argument("name", help="its name on the ring, e.g. shard-4")
    add.add_argument("addresses", nargs="+", help="host:port of each of its replicas")
    add.add_argument("--wait", action="store_true", help="wait until the move has finished")
    remove = actions.add_parser("remove-shard", help="move a shard's ids to the others and take it off the ring")
    remove.add_argument("name")
    remove.add_argument("--wait", action="store_true", help="wait until the move has finished")
    resume = actions.add_parser("resume-move", help="drive an interrupted move to its end")
    resume.add_argument("--wait", action="store_true", help="wait until the move has finished")

    retrain = actions.add_parser("retrain", help="retrain a collection's IVF-PQ index on its shards (where due)")
    retrain.add_argument("collection")
    retrain.add_argument("--shard", action="append", default=[], help="only this shard (repeatable)")
    retrain.add_argument("--force", action="store_true", help="retrain even where no retrain is due")
    status = actions.add_parser("retrain-status", help="each shard's retrain state: due or not, why, last outcome")
    status.add_argument("collection")
    status.add_argument("--measure", action="store_true", help="measure the current recall on a fresh sample now")


def run(args: argparse.Namespace) -> None:
    try:
        answer = asyncio.run(_call(args))
    except grpc.aio.AioRpcError as exc:
        print(f"{exc.code().name}: {exc.details()}", file=sys.stderr)
        sys.exit(1)
    except ValueError as exc:  # settings that cannot work (TLS files, token file)
        fail("admin", exc)
    print(json_format.MessageToJson(answer, indent=2))


async def _call(args: argparse.Namespace) -> object:
    settings = security.ClientSecurity(**security.ClientSecurity.from_args(args)).client_kwargs()
    async with AsyncClient(args.coordinator, timeout=args.timeout, **settings) as client:
        return await call(admin_pb2_grpc.AdminServiceStub(client.channel), args)


async def call(stub: admin_pb2_grpc.AdminServiceStub, args: argparse.Namespace) -> object:
    timeout = args.timeout
    action = args.action
    if action == "topology":
        return await stub.GetTopology(admin_pb2.GetTopologyRequest(), timeout=timeout)
    if action == "retrain":
        request = admin_pb2.RetrainRequest(collection=args.collection, shards=args.shard, force=args.force)
        return await stub.Retrain(request, timeout=timeout)
    if action == "retrain-status":
        request = admin_pb2.GetRetrainStatusRequest(collection=args.collection, measure=args.measure)
        return await stub.GetRetrainStatus(request, timeout=timeout)
    if action == "add-shard":
        spec = admin_pb2.ShardSpec(name=args.name, addresses=args.addresses)
        topology = await stub.AddShard(admin_pb2.AddShardRequest(shard=spec), timeout=timeout)
    elif action == "remove-shard":
        topology = await stub.RemoveShard(admin_pb2.RemoveShardRequest(name=args.name), timeout=timeout)
    else:
        topology = await stub.ResumeMove(admin_pb2.ResumeMoveRequest(), timeout=timeout)
    return await wait_for_move(stub, topology, timeout) if args.wait else topology


async def wait_for_move(
    stub: admin_pb2_grpc.AdminServiceStub, topology: admin_pb2.Topology, timeout: float
) -> admin_pb2.Topology:
    """Polls until the move has finished; progress (and any error the move is retrying) goes to stderr."""
    while topology.HasField("move") and not topology.move.finished_unix_ms:
        move = topology.move
        copied = sum(r.copied for r in move.ranges)
        verified = sum(r.verified for r in move.ranges)
        print(f"{admin_pb2.Move.Phase.Name(move.phase)}: {copied} items copied, {verified}/{len(move.ranges)} "
              f"ranges verified{'; retrying: ' + move.error if move.error else ''}", file=sys.stderr, flush=True)
        await asyncio.sleep(DONE_POLL_S)
        topology = await stub.GetTopology(admin_pb2.GetTopologyRequest(), timeout=timeout)
    return topology
