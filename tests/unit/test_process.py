"""Ports picked up front for a child to bind: outside the range outgoing connections take theirs from."""

import socket

import pytest

from shardsearch import process


def test_free_ports_are_below_the_ephemeral_range_distinct_and_bindable() -> None:
    low, _ = process._ephemeral_range()
    ports = [process.free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    assert all(process._FIRST_FIXED_PORT <= port < low for port in ports)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", ports[0]))


def test_a_port_in_use_is_not_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as busy:
        taken = process.free_port()
        busy.bind(("127.0.0.1", taken))
        busy.listen()
        process._handed_out.discard(taken)
        offered = iter([taken, taken + 1])
        monkeypatch.setattr(process.random, "randrange", lambda *_: next(offered, taken + 2))
        assert process.free_port() != taken
