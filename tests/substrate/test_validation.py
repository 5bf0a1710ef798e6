"""Must hold 7: bad input raises ValueError/TypeError naming the argument, and a
rejected call stores nothing (not in the hot tier, the index, the log or the WAL)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from moneta import Moneta, MonetaConfig, validation

GOOD = [0.6, 0.8, 0.0]


def _pin(value: object) -> Callable[[Moneta], object]:
    return lambda m: m.deposit("x", GOOD, protected_floor=value)  # type: ignore[arg-type]


BAD_DEPOSITS: list[tuple[str, Callable[[Moneta], object], type[Exception], str]] = [
    ("wrong dim", lambda m: m.deposit("x", [1.0, 0.0]), ValueError, "embedding"),
    ("longer dim", lambda m: m.deposit("x", [1.0, 0.0, 0.0, 0.0]), ValueError, "embedding"),
    ("empty", lambda m: m.deposit("x", []), ValueError, "embedding"),
    ("nan", lambda m: m.deposit("x", [float("nan"), 1.0, 0.0]), ValueError, "embedding"),
    ("inf", lambda m: m.deposit("x", [float("inf"), 1.0, 0.0]), ValueError, "embedding"),
    ("-inf", lambda m: m.deposit("x", [0.0, -float("inf"), 0.0]), ValueError, "embedding"),
    ("zero vector", lambda m: m.deposit("x", [0.0, 0.0, 0.0]), ValueError, "embedding"),
    ("2-D", lambda m: m.deposit("x", [[1.0, 0.0, 0.0]]), ValueError, "embedding"),
    ("text embedding", lambda m: m.deposit("x", "1,0,0"), TypeError, "embedding"),
    ("str items", lambda m: m.deposit("x", ["a", "b", "c"]), TypeError, "embedding"),
    ("one str item", lambda m: m.deposit("x", [0.6, "b", 0.0]), TypeError, "embedding"),
    ("None item", lambda m: m.deposit("x", [None, 0.8, 0.0]), TypeError, "embedding"),
    ("float32 overflow", lambda m: m.deposit("x", [1e39, 0.8, 0.0]), ValueError, "embedding"),
    ("bytes payload", lambda m: m.deposit(b"x", GOOD), TypeError, "payload"),
    ("None payload", lambda m: m.deposit(None, GOOD), TypeError, "payload"),
    ("int payload", lambda m: m.deposit(3, GOOD), TypeError, "payload"),
    ("floor < 0", _pin(-0.01), ValueError, "protected_floor"),
    ("floor > 1", _pin(1.01), ValueError, "protected_floor"),
    ("floor nan", _pin(float("nan")), ValueError, "protected_floor"),
    ("floor str", _pin("0.5"), TypeError, "protected_floor"),
]  # fmt: skip

BAD_QUERIES: list[tuple[str, Callable[[Moneta], object], type[Exception], str]] = [
    ("limit 0", lambda m: m.query(GOOD, limit=0), ValueError, "limit"),
    ("limit -1", lambda m: m.query(GOOD, limit=-1), ValueError, "limit"),
    ("limit float", lambda m: m.query(GOOD, limit=2.0), TypeError, "limit"),
    ("limit bool", lambda m: m.query(GOOD, limit=True), TypeError, "limit"),
    ("query dim", lambda m: m.query([1.0, 0.0]), ValueError, "embedding"),
    ("query nan", lambda m: m.query([float("nan"), 0.0, 1.0]), ValueError, "embedding"),
    ("query empty", lambda m: m.query([]), ValueError, "embedding"),
]  # fmt: skip

BAD_SIGNALS: list[tuple[str, Callable[[Moneta, uuid.UUID], object], type[Exception], str]] = [
    ("str key", lambda m, e: m.signal_attention({e: 0.1, str(e): 0.1}), TypeError, "weights"),
    ("int key", lambda m, e: m.signal_attention({e: 0.1, 7: 0.1}), TypeError, "weights"),
    ("str weight", lambda m, e: m.signal_attention({e: "0.1"}), TypeError, "weights"),
    ("None weight", lambda m, e: m.signal_attention({e: None}), TypeError, "weights"),
    ("nan weight", lambda m, e: m.signal_attention({e: float("nan")}), ValueError, "weights"),
    ("inf weight", lambda m, e: m.signal_attention({e: float("inf")}), ValueError, "weights"),
    ("list", lambda m, e: m.signal_attention([(e, 0.1)]), TypeError, "weights"),
]  # fmt: skip


def _file_config(path: Path) -> MonetaConfig:
    return MonetaConfig(storage_uri=path, cold_tier="jsonl", auto_sleep=False)


@pytest.mark.parametrize(
    ("call", "error", "names"), [c[1:] for c in BAD_DEPOSITS], ids=[c[0] for c in BAD_DEPOSITS]
)
def test_rejected_deposit_names_the_argument_and_stores_nothing(
    tmp_path: Path, call: Callable[[Moneta], object], error: type[Exception], names: str
) -> None:
    config = _file_config(tmp_path / "store")
    with Moneta(config) as m:
        kept = m.deposit("the only memory", GOOD)  # fixes the dimension at 3
        with pytest.raises(error, match=names):
            call(m)
        stats = m.stats()
        assert (stats.hot, stats.index_records, stats.protected) == (1, 1, 0)
    with Moneta(config) as m:  # nothing reached the write-ahead log either
        assert [h.entity_id for h in m.query(GOOD, limit=10)] == [kept]
        assert m.stats().hot == 1


@pytest.mark.parametrize(
    ("call", "error", "names"), [c[1:] for c in BAD_QUERIES], ids=[c[0] for c in BAD_QUERIES]
)
def test_rejected_query_names_the_argument(
    call: Callable[[Moneta], object], error: type[Exception], names: str
) -> None:
    with Moneta(MonetaConfig.ephemeral(auto_sleep=False)) as m:
        m.deposit("x", GOOD)
        with pytest.raises(error, match=names):
            call(m)


@pytest.mark.parametrize(
    ("call", "error", "names"), [c[1:] for c in BAD_SIGNALS], ids=[c[0] for c in BAD_SIGNALS]
)
def test_rejected_signal_names_the_argument_and_appends_nothing(
    tmp_path: Path,
    call: Callable[[Moneta, uuid.UUID], object],
    error: type[Exception],
    names: str,
) -> None:
    config = _file_config(tmp_path / "store")
    with Moneta(config) as m:
        e = m.deposit("x", GOOD)
        with pytest.raises(error, match=names):
            call(m, e)
        assert m.stats().pending_attention == 0
    with Moneta(config) as m:
        assert m.stats().pending_attention == 0
        assert m.run_sleep_pass().attention_applied == 0
        [hit] = m.query(GOOD)
        assert hit.attended_count == 0


def test_a_list_embedding_converts_exactly_as_an_array_does() -> None:
    """Lists of the store's dimension are packed straight to float32; the result must be
    the bytes numpy's cast gives, over magnitudes from subnormal up to where the squared
    length still fits in float32."""
    rng = np.random.default_rng(3)
    for _ in range(300):
        values = rng.standard_normal(16) * 10.0 ** rng.integers(-44, 18, 16)
        as_list: list[object] = values.tolist()
        as_list[:3] = [1, True, np.float32(0.25)]  # ints, bools and numpy scalars too
        expected = validation.embedding(np.array(as_list, dtype=np.float32), 16)
        assert validation.embedding(as_list, 16).tobytes() == expected.tobytes()


def test_first_deposit_fixes_the_dimension_even_on_an_empty_store() -> None:
    with Moneta(MonetaConfig.ephemeral(auto_sleep=False, embedding_dim=4)) as m:
        with pytest.raises(ValueError, match="embedding"):
            m.deposit("x", GOOD)
        assert m.stats().hot == 0
        m.deposit("x", [0.0, 0.0, 0.0, 1.0])
        assert m.stats().embedding_dim == 4
    with Moneta(MonetaConfig.ephemeral(auto_sleep=False)) as m:
        m.deposit("x", np.array(GOOD))  # a 1-D numpy array is a list of floats too
        with pytest.raises(ValueError, match="embedding"):
            m.deposit("y", [1.0, 0.0])
        assert m.stats().hot == 1


def test_forget_and_unpin_reject_non_uuid() -> None:
    with Moneta(MonetaConfig.ephemeral(auto_sleep=False)) as m:
        e = m.deposit("x", GOOD)
        with pytest.raises(TypeError, match="entity_id"):
            m.forget(str(e))  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="entity_id"):
            m.unpin(e.hex)  # type: ignore[arg-type]
        assert m.stats().hot == 1


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("storage_uri", "", ValueError),
        ("storage_uri", "memory://", ValueError),
        ("storage_uri", 42, TypeError),
        ("max_entities", 0, ValueError),
        ("embedding_dim", 0, ValueError),
        ("clock", 5.0, TypeError),
        ("idle_window_seconds", 0.0, ValueError),
        ("auto_sleep", "yes", TypeError),
        ("cold_tier", "s3", ValueError),
        ("vector_backend", "faiss", ValueError),
    ],
)
def test_bad_config_names_the_field(field: str, value: object, error: type[Exception]) -> None:
    kwargs = {"storage_uri": "memory://cfg", field: value}
    with pytest.raises(error, match=field):
        MonetaConfig(**kwargs)
