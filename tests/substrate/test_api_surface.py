"""Must hold 1: the agent surface is exactly four methods with the brief's signatures."""

from __future__ import annotations

import dataclasses
import inspect
import typing
from uuid import UUID

import numpy as np
import pytest

from moneta import EntityState, Memory, Moneta, MonetaClosedError, MonetaConfig
from moneta.types import Vector
from tests.substrate.conftest import FakeClock, unit_vector

AGENT_METHODS = {"deposit", "query", "signal_attention", "get_consolidation_manifest"}
# The brief's operator names, plus ``protect`` (move a pinned memory into the cold
# tier's protected layer). A new public method must be added here on purpose.
OPERATOR_METHODS = {
    "run_sleep_pass",
    "preview_sleep_pass",
    "forget",
    "unpin",
    "protect",
    "stats",
    "close",
}


def _public_callables() -> set[str]:
    return {
        name
        for name, member in inspect.getmembers(Moneta)
        if not name.startswith("_") and callable(member)
    }


def test_exactly_four_agent_methods_and_only_named_operator_tools() -> None:
    public = _public_callables()
    assert public == AGENT_METHODS | OPERATOR_METHODS
    assert public - OPERATOR_METHODS == AGENT_METHODS
    assert len(public - OPERATOR_METHODS) == 4
    # The only other public attribute is the read-only config property.
    others = {n for n, _ in inspect.getmembers(Moneta) if not n.startswith("_")} - public
    assert others == {"config"}


def test_agent_method_signatures_match_the_brief() -> None:
    hints = {name: typing.get_type_hints(getattr(Moneta, name)) for name in AGENT_METHODS}
    sig = inspect.signature(Moneta.deposit)
    assert list(sig.parameters) == ["self", "payload", "embedding", "protected_floor"]
    assert sig.parameters["protected_floor"].default == 0.0
    assert hints["deposit"] == {
        "payload": str,
        "embedding": list[float],
        "protected_floor": float,
        "return": UUID,
    }
    sig = inspect.signature(Moneta.query)
    assert list(sig.parameters) == ["self", "embedding", "limit"]
    assert sig.parameters["limit"].default == 5
    assert hints["query"] == {"embedding": list[float], "limit": int, "return": list[Memory]}
    sig = inspect.signature(Moneta.signal_attention)
    assert list(sig.parameters) == ["self", "weights"]
    assert hints["signal_attention"] == {"weights": dict[UUID, float], "return": type(None)}
    sig = inspect.signature(Moneta.get_consolidation_manifest)
    assert list(sig.parameters) == ["self"]
    assert hints["get_consolidation_manifest"] == {"return": list[Memory]}


def test_memory_carries_every_field() -> None:
    fields = [f.name for f in dataclasses.fields(Memory)]
    assert fields == [
        "entity_id",
        "payload",
        "semantic_vector",
        "utility",
        "attended_count",
        "protected_floor",
        "last_evaluated",
        "state",
        "usd_link",
    ]
    assert {s.name for s in EntityState} == {"VOLATILE", "STAGED_FOR_SYNC", "CONSOLIDATED"}


def test_config_is_frozen_keyword_only_with_ephemeral() -> None:
    config = MonetaConfig.ephemeral()
    assert str(config.storage_uri).startswith("memory://")
    assert MonetaConfig.ephemeral().storage_uri != config.storage_uri
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.half_life_seconds = 100.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        MonetaConfig("memory://positional")  # type: ignore[misc]
    assert config.half_life_seconds == 6 * 3600
    assert config.quota_override == 100
    assert config.max_entities == 10_000
    assert config.embedding_dim is None


def test_new_deposit_starts_at_utility_one_volatile(clock: FakeClock) -> None:
    rng = np.random.default_rng(0)
    vector = unit_vector(rng)
    with Moneta(MonetaConfig.ephemeral(clock=clock, auto_sleep=False)) as m:
        entity_id = m.deposit("the user prefers tabs", vector)
        assert isinstance(entity_id, UUID)
        [hit] = m.query(vector, limit=1)
    assert hit.entity_id == entity_id
    assert hit.payload == "the user prefers tabs"
    assert hit.utility == 1.0
    assert hit.attended_count == 0
    assert hit.protected_floor == 0.0
    assert hit.last_evaluated == clock()
    assert hit.state is EntityState.VOLATILE
    assert hit.usd_link is None
    assert np.allclose(hit.semantic_vector, vector, atol=1e-6)


def test_context_manager_and_idempotent_close() -> None:
    config = MonetaConfig.ephemeral(auto_sleep=False)
    with Moneta(config) as m:
        m.deposit("x", [1.0, 0.0])
    m.close()
    m.close()
    for call in (
        lambda: m.deposit("y", [1.0, 0.0]),
        lambda: m.query([1.0, 0.0]),
        lambda: m.signal_attention({}),
        m.get_consolidation_manifest,
        m.run_sleep_pass,
    ):
        with pytest.raises(MonetaClosedError):
            call()
    # Closing released the store name: a new handle opens it.
    with Moneta(config) as again:
        assert again.stats().hot == 0  # memory stores do not outlive their handle


def test_semantic_vector_is_an_immutable_sequence_of_the_stored_floats(clock: FakeClock) -> None:
    import copy
    import pickle

    rng = np.random.default_rng(11)
    vector = unit_vector(rng)
    with Moneta(MonetaConfig.ephemeral(clock=clock, auto_sleep=False)) as m:
        m.deposit("a", vector)
        m.deposit("b", unit_vector(rng))
        [hit, other] = m.query(vector, limit=2)
    v = hit.semantic_vector
    want = np.asarray(vector, dtype=np.float32) / np.linalg.norm(vector)
    assert len(v) == len(vector) == 16
    assert list(v) == want.tolist() and v.tolist() == want.tolist()
    assert v[0] == float(want[0]) and v[-1] == float(want[-1])
    assert tuple(v[2:5]) == tuple(want[2:5].tolist())
    # Equal to (and hashed like) the tuple of its floats; Memory stays hashable.
    assert v == tuple(want.tolist()) and hash(v) == hash(tuple(want.tolist()))
    assert v != other.semantic_vector and v != list(v)
    assert len({hit, dataclasses.replace(hit), other}) == 2
    # Nothing reachable from it writes back: not the array, not the store.
    array = np.asarray(v)
    assert array.dtype == np.float32 and not array.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        array[0] = 5.0
    with pytest.raises(TypeError):
        v[0] = 5.0  # type: ignore[index]
    assert np.asarray(v, dtype=np.float64).flags.writeable  # a converted copy is the caller's
    assert pickle.loads(pickle.dumps(hit)) == hit and copy.deepcopy(hit) == hit
    # A Memory built by hand from any sequence gets the same type.
    built = dataclasses.replace(hit, semantic_vector=[1.0, 0.5])
    assert built.semantic_vector == (1.0, 0.5) and isinstance(built.semantic_vector, Vector)
