import pytest

from shard_server import params
from shardsearch.v1 import search_pb2


def test_rule_follows_data_size() -> None:
    p = params.choose(128, 1_000_000, search_pb2.IndexOptions())
    assert (p.nlist, p.pq_m, p.pq_nbits, p.default_nprobe) == (4000, 32, 4, 64)
    assert p.factory() == "IVF4000,PQ32x4fs"
    small = params.choose(128, 2_500, search_pb2.IndexOptions())
    assert small.nlist == 64 and small.default_nprobe == 16


def test_gpu_default_is_eight_bit_pq() -> None:
    assert params.choose(128, 100_000, search_pb2.IndexOptions(), gpu=True).factory().endswith("PQ32x8")


def test_explicit_options_win() -> None:
    p = params.choose(784, 50_000, search_pb2.IndexOptions(nlist=100, pq_m=98, default_nprobe=7, refine_factor=3))
    assert (p.nlist, p.pq_m, p.default_nprobe, p.refine_factor) == (100, 98, 7, 3)


def test_pq_m_divides_dim() -> None:
    for dim in (3, 64, 100, 768, 784, 1000):
        assert dim % params.auto_pq_m(dim) == 0


def test_impossible_options_are_rejected() -> None:
    with pytest.raises(ValueError, match="pq_m"):
        params.check_options(128, search_pb2.IndexOptions(pq_m=30))
    with pytest.raises(ValueError, match="pq_nbits"):
        params.check_options(128, search_pb2.IndexOptions(pq_nbits=6))
