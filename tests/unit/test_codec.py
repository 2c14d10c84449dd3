import numpy as np
import pytest

from shardsearch import codec
from shardsearch.errors import InvalidArgument


def test_pack_unpack_round_trip() -> None:
    m = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert np.array_equal(codec.unpack(codec.pack(m), 4), m)


def test_unpack_rejects_partial_vectors() -> None:
    with pytest.raises(InvalidArgument, match="whole number"):
        codec.unpack(b"\0" * 12, 4)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_rejected(bad: float) -> None:
    with pytest.raises(InvalidArgument, match="NaN or Inf"):
        codec.one_vector([1.0, bad], b"", 2, "vector")


def test_both_forms_at_once_are_rejected() -> None:
    with pytest.raises(InvalidArgument, match="not both"):
        codec.one_vector([1.0, 2.0], codec.pack(np.ones(2)), 2, "vector")


def test_wrong_dimension_names_the_field() -> None:
    with pytest.raises(InvalidArgument, match="vector: 3 values, but the collection has dim 2"):
        codec.one_vector([1.0, 2.0, 3.0], b"", 2, "vector")


def test_many_vectors_from_floats_and_bytes_agree() -> None:
    m = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    assert np.array_equal(codec.many_vectors(m.ravel().tolist(), b"", 3, "v"), codec.many_vectors([], codec.pack(m), 3, "v"))


@pytest.mark.parametrize("big", [1.9e19, -1e16, 3.0e38])
def test_values_whose_scores_would_overflow_are_rejected(big: float) -> None:
    matrix = np.zeros((3, 4), dtype=np.float32)
    matrix[2, 1] = big
    with pytest.raises(InvalidArgument, match=r"^v\[2\]: value .* exceeds the maximum magnitude 1e\+15$"):
        codec.many_vectors([], codec.pack(matrix), 4, "v")
    matrix[2, 1] = codec.MAX_ABS_VALUE
    assert codec.many_vectors([], codec.pack(matrix), 4, "v")[2, 1] == np.float32(codec.MAX_ABS_VALUE)
