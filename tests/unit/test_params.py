import pytest

from shardsearch import index_params as params
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


@pytest.mark.parametrize("opts,message", [
    (dict(train_threshold=1), "index.train_threshold: 1 is below 256"),
    (dict(train_threshold=255, pq_nbits=8), "index.train_threshold: 255 is below 256"),
    (dict(train_threshold=15, pq_nbits=4), "index.train_threshold: 15 is below 16"),
    (dict(train_threshold=500, nlist=501), "index.nlist: 501 lists need at least as many training vectors"),
    (dict(nlist=20_000), "but train_threshold is 10000"),
])
def test_options_that_could_never_train_are_rejected(opts: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        params.check_options(8, search_pb2.IndexOptions(**opts))


@pytest.mark.parametrize("opts", [dict(train_threshold=16, pq_nbits=4), dict(train_threshold=256),
                                  dict(train_threshold=40, nlist=40, pq_nbits=4)])
def test_smallest_accepted_options_train(opts: dict) -> None:
    """The boundary cases check_options accepts really train (FAISS refuses fewer points than centroids)."""
    import numpy as np

    from shardsearch.shard_server.index import Collection

    index = search_pb2.IndexOptions(**opts)
    params.check_options(8, index)
    coll = Collection(search_pb2.Collection(name="t", dim=8, metric=search_pb2.METRIC_L2, index=index))
    n = coll.train_threshold
    vectors = np.random.default_rng(0).standard_normal((n, 8)).astype(np.float32)
    coll.upsert([str(i) for i in range(n)], vectors)
    coll.maintain()
    assert coll.info().trained
    assert coll.search(vectors[:1], 1).labels[0, 0] == 0
