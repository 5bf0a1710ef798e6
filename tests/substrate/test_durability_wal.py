"""WriteAheadLog: binary codec round trips, segment order, torn-tail recovery, corruption."""

from __future__ import annotations

import re
import threading
import uuid
import warnings
from pathlib import Path
from uuid import UUID

import numpy as np
import pytest

from moneta.durability import (
    AttentionRecord,
    DeleteRecord,
    DepositRecord,
    RowsUpdateRecord,
    UnpinRecord,
    WalCorruptError,
    WalRecord,
    WalTornTailWarning,
    WriteAheadLog,
    encode_record,
)

DIM = 384


def _deposit(rng: np.random.Generator, payload: str = "a memory") -> DepositRecord:
    return DepositRecord(
        entity_id=uuid.uuid4(),
        payload=payload,
        vector=rng.standard_normal(DIM).astype(np.float32),
        protected_floor=float(rng.random()),
        created_at=1_700_000_000.0 + float(rng.random()),
    )


def _one_of_each(rng: np.random.Generator) -> list[WalRecord]:
    ids = [uuid.uuid4() for _ in range(5)]
    return [
        _deposit(rng, "plain ascii"),
        _deposit(rng, ""),
        _deposit(rng, "ünïcødé 🧠 and a lone surrogate \ud800 and a NUL \x00"),
        AttentionRecord(entity_ids=ids[:3], weights=np.array([0.25, -0.5, 1e-9]), at=12.5),
        AttentionRecord(entity_ids=[], weights=np.array([], dtype=np.float64), at=13.0),
        RowsUpdateRecord(
            entity_ids=ids,
            utility=rng.random(5),
            attended_count=np.array([0, 1, 2, 3, 2**40]),
            last_evaluated=rng.random(5) * 1e9,
            state=np.array([0, 1, 2, 1, 0], dtype=np.int8),
            usd_links=[None, "/Memory_ab12", "", None, "/Memory_é"],
        ),
        DeleteRecord(entity_ids=ids[1:4], reason="prune"),
        DeleteRecord(entity_ids=[], reason="consolidated"),
        UnpinRecord(entity_id=ids[0]),
    ]


def _assert_same(got: WalRecord, want: WalRecord) -> None:
    assert type(got) is type(want)
    for name in want.__dataclass_fields__:
        g, w = getattr(got, name), getattr(want, name)
        if isinstance(w, np.ndarray):
            assert isinstance(g, np.ndarray), name
            assert g.dtype == np.asarray(w).dtype or name == "weights", (name, g.dtype)
            assert np.array_equal(g, w), name
        else:
            assert g == w, name


def _replay_all(directory: Path, after: int = 0) -> list[WalRecord]:
    wal = WriteAheadLog(directory)
    try:
        return list(wal.replay(after))
    finally:
        wal.close()


def _write(directory: Path, records: list[WalRecord]) -> Path:
    """Append records to a fresh log, close it, return the segment written."""
    wal = WriteAheadLog(directory)
    for record in records:
        wal.append(record)
    segment = wal.active_segment
    wal.close()
    assert segment is not None
    return wal.segment_path(segment)


def test_every_record_type_round_trips(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    records = _one_of_each(rng)
    path = _write(tmp_path, records)
    assert path.parent == tmp_path / "wal"
    assert path.stat().st_size == sum(len(encode_record(r)) for r in records)

    got = _replay_all(tmp_path)
    assert len(got) == len(records) == 9
    for g, w in zip(got, records, strict=True):
        _assert_same(g, w)
    deposit = got[0]
    assert isinstance(deposit, DepositRecord)
    assert deposit.vector.dtype == np.float32 and deposit.vector.shape == (DIM,)
    assert all(isinstance(u, UUID) for u in got[5].entity_ids)  # type: ignore[union-attr]


def test_segments_replay_in_order_and_after_a_covered_segment(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    batches = [[_deposit(rng, f"batch {b} item {i}") for i in range(10)] for b in range(3)]
    wal = WriteAheadLog(tmp_path)
    closed = []
    for batch in batches:
        for record in batch:
            wal.append(record)
        closed.append(wal.rotate())
    wal.append(_deposit(rng, "in the active segment"))
    assert closed == [1, 2, 3] and wal.active_segment == 4
    wal.close()

    payloads = [r.payload for r in _replay_all(tmp_path)]  # type: ignore[union-attr]
    assert payloads == [r.payload for b in batches for r in b] + ["in the active segment"]
    assert len(_replay_all(tmp_path, after=1)) == 21
    assert len(_replay_all(tmp_path, after=3)) == 1

    wal = WriteAheadLog(tmp_path)
    wal.append(_deposit(rng))  # opens segment 5 (after checking segment 4's tail)
    wal.drop_through(2)
    assert wal.segments() == [3, 4, 5]
    with pytest.raises(ValueError, match="active segment 5"):
        wal.drop_through(5)
    wal.close()
    assert len(_replay_all(tmp_path)) == 10 + 1 + 1


def test_new_segments_stay_above_everything_dropped(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    wal = WriteAheadLog(tmp_path)
    wal.append(_deposit(rng))
    covered = wal.rotate()
    wal.close()
    wal = WriteAheadLog(tmp_path)
    wal.drop_through(covered + 1)  # deletes every file, including the empty segment 2
    assert wal.segments() == []
    wal.append(_deposit(rng, "after the drop"))
    assert wal.active_segment == covered + 2
    wal.close()

    # A snapshot's covers_segment passed as start_after keeps numbering above it even
    # when no segment file is left on disk.
    for p in (tmp_path / "wal").iterdir():
        p.unlink()
    wal = WriteAheadLog(tmp_path, start_after=41)
    wal.append(_deposit(rng, "numbered above the snapshot"))
    assert wal.active_segment == 42
    wal.close()
    got = _replay_all(tmp_path, after=41)
    assert [r.payload for r in got] == ["numbered above the snapshot"]  # type: ignore[union-attr]


def _frame_offsets(records: list[WalRecord]) -> list[int]:
    offsets, off = [], 0
    for record in records:
        offsets.append(off)
        off += len(encode_record(record))
    return offsets


@pytest.mark.parametrize(
    "damage",
    ["cut_inside_body", "cut_inside_header", "crc_flip_in_last_record", "copy_cut_short"],
)
def test_torn_final_record_is_skipped_with_a_warning(tmp_path: Path, damage: str) -> None:
    rng = np.random.default_rng(4)
    records = [_deposit(rng, f"memory {i}") for i in range(25)]
    path = _write(tmp_path, records)
    size = path.stat().st_size
    last = _frame_offsets(records)[-1]
    data = bytearray(path.read_bytes())
    if damage == "cut_inside_body":
        data = data[: size - 100]
    elif damage == "cut_inside_header":
        data = data[: last + 5]
    elif damage == "crc_flip_in_last_record":
        data[last + 40] ^= 0x01
    else:  # killed while copying into a mapped segment: the rest is the zero fill
        data[size - 100 :] = bytes(100)
        data += bytes(4096)
    path.write_bytes(bytes(data))
    intact = 24

    wal = WriteAheadLog(tmp_path)
    with pytest.warns(WalTornTailWarning, match=re.escape(str(path))) as caught:
        got = list(wal.replay(0))
    assert "never acknowledged" in str(caught[0].message)
    assert len(got) == intact
    for g, w in zip(got, records[:intact], strict=True):
        _assert_same(g, w)
    # The torn bytes were cut off, so new appends never sit behind garbage.
    assert path.stat().st_size == sum(len(encode_record(r)) for r in records[:intact])
    wal.append(_deposit(rng, "after recovery"))
    wal.close()

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = _replay_all(tmp_path)
    assert len(again) == intact + 1
    assert again[-1].payload == "after recovery"  # type: ignore[union-attr]


def test_torn_tail_is_repaired_by_the_first_append_even_without_replay(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    records = [_deposit(rng, f"memory {i}") for i in range(5)]
    path = _write(tmp_path, records)
    path.write_bytes(path.read_bytes()[:-7])

    wal = WriteAheadLog(tmp_path)
    with pytest.warns(WalTornTailWarning):
        wal.append(_deposit(rng, "new process"))
    wal.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = _replay_all(tmp_path)
    assert [r.payload for r in got] == [  # type: ignore[union-attr]
        "memory 0",
        "memory 1",
        "memory 2",
        "memory 3",
        "new process",
    ]


def test_zero_fill_after_the_last_record_is_the_end_of_the_log(tmp_path: Path) -> None:
    """A mapped segment is preallocated: after a crash its file runs on in zeros past
    the last record (as blocks past the last write do after power loss). That is the
    end of the log, not damage: every record replays, nothing is reported, and the
    zeros are cut off before appends go on."""
    rng = np.random.default_rng(5)
    records = [_deposit(rng, f"memory {i}") for i in range(25)]
    path = _write(tmp_path, records)
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size + 3 * 4096 + 17)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        wal = WriteAheadLog(tmp_path)
        got = list(wal.replay(0))
    assert len(got) == 25
    for g, w in zip(got, records, strict=True):
        _assert_same(g, w)
    assert path.stat().st_size == size
    wal.append(_deposit(rng, "after recovery"))
    wal.close()
    again = _replay_all(tmp_path)
    assert [r.payload for r in again[-2:]] == ["memory 24", "after recovery"]  # type: ignore[union-attr]


def test_damage_before_the_final_record_raises_naming_file_and_offset(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    records = [_deposit(rng, f"memory {i}") for i in range(10)]
    path = _write(tmp_path, records)
    third = _frame_offsets(records)[3]
    data = bytearray(path.read_bytes())
    data[third + 60] ^= 0xFF
    path.write_bytes(bytes(data))

    with pytest.raises(WalCorruptError) as err:
        _replay_all(tmp_path)
    assert str(path) in str(err.value)
    assert f"offset {third}" in str(err.value)
    # Nothing was cut: the damaged log is left for an operator to inspect.
    assert path.read_bytes() == bytes(data)
    wal = WriteAheadLog(tmp_path)
    with pytest.raises(WalCorruptError, match=re.escape(str(path))):
        wal.append(_deposit(rng))
    wal.close()


def test_a_torn_tail_in_an_older_segment_is_corruption(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    wal = WriteAheadLog(tmp_path)
    for i in range(4):
        wal.append(_deposit(rng, f"old {i}"))
    first = wal.rotate()
    for i in range(4):
        wal.append(_deposit(rng, f"new {i}"))
    wal.close()
    old = wal.segment_path(first)
    old.write_bytes(old.read_bytes()[:-3])

    with pytest.raises(WalCorruptError, match=re.escape(str(old))):
        _replay_all(tmp_path)


def test_concurrent_appends_are_all_logged_whole_and_in_per_thread_order(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    vector = rng.standard_normal(DIM).astype(np.float32)
    wal = WriteAheadLog(tmp_path, fsync_interval_s=0.01)
    threads, per_thread = 8, 300

    def worker(t: int) -> None:
        for i in range(per_thread):
            wal.append(DepositRecord(uuid.uuid4(), f"{t}:{i}", vector, 0.0, float(i)))

    pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    wal.close()

    got = _replay_all(tmp_path)
    assert len(got) == threads * per_thread
    seen: dict[int, list[int]] = {t: [] for t in range(threads)}
    for record in got:
        t, i = record.payload.split(":")  # type: ignore[union-attr]
        seen[int(t)].append(int(i))
        assert np.array_equal(record.vector, vector)  # type: ignore[union-attr]
    assert all(seq == list(range(per_thread)) for seq in seen.values())


def test_fsync_every_append_mode_logs_everything(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    records = [_deposit(rng, f"memory {i}") for i in range(20)]
    wal = WriteAheadLog(tmp_path, fsync_interval_s=0)
    for record in records:
        wal.append(record)
    wal.sync()
    wal.close()
    got = _replay_all(tmp_path)
    assert [r.payload for r in got] == [r.payload for r in records]  # type: ignore[union-attr]


def test_bad_arguments_and_closed_log(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fsync_interval_s"):
        WriteAheadLog(tmp_path, fsync_interval_s=-1)
    with pytest.raises(ValueError, match="fsync_interval_s"):
        WriteAheadLog(tmp_path, fsync_interval_s=float("nan"))
    with pytest.raises(ValueError, match="start_after"):
        WriteAheadLog(tmp_path, start_after=-3)

    wal = WriteAheadLog(tmp_path)
    with pytest.raises(TypeError, match="record must be one of"):
        wal.append({"payload": "not a record"})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"AttentionRecord.weights must have shape \(2,\)"):
        wal.append(AttentionRecord([uuid.uuid4(), uuid.uuid4()], np.array([1.0]), 0.0))
    wal.append(UnpinRecord(uuid.uuid4()))
    wal.close()
    wal.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        wal.append(UnpinRecord(uuid.uuid4()))
    # Rejected records wrote nothing.
    assert len(_replay_all(tmp_path)) == 1
