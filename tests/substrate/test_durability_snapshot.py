"""Snapshots: column round trip, corruption errors, atomic replace under kill -9, the
snapshot-vs-append race (no acknowledged record lost or applied twice), and a hot-tier
image that stays intact while the table prunes and grows (copy on write)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from moneta.durability import (
    SNAPSHOT_FILE_NAME,
    AttentionRecord,
    DepositRecord,
    HotImage,
    SharedRows,
    WriteAheadLog,
    array_to_uuids,
    read_snapshot,
    uuids_to_array,
    write_snapshot,
)
from moneta.errors import SnapshotCorruptError

COLUMNS = (
    "entity_ids",
    "vectors",
    "utility",
    "attended_count",
    "protected_floor",
    "last_evaluated",
    "state",
)


def _image(n: int, dim: int = 384, seed: int = 0) -> HotImage:
    rng = np.random.default_rng(seed)
    payloads = [f"memory {i} " + "ü🧠\ud800"[: i % 4] for i in range(n)]
    if n:
        payloads[0] = ""
    return HotImage(
        entity_ids=uuids_to_array([uuid.uuid4() for _ in range(n)]),
        vectors=rng.standard_normal((n, dim)).astype(np.float32),
        utility=rng.random(n),
        attended_count=rng.integers(0, 50, n),
        protected_floor=np.where(rng.random(n) < 0.1, 0.5, 0.0),
        last_evaluated=1.7e9 + rng.random(n) * 1e5,
        state=rng.integers(0, 3, n).astype(np.int8),
        payloads=payloads,
        usd_links=[None if i % 3 else f"/Memory_{i:032x}" for i in range(n)],
        meta={"embedding_dim": dim, "half_life_seconds": 21600.0, "note": "é"},
    )


def _assert_images_equal(got: HotImage, want: HotImage) -> None:
    for name in COLUMNS:
        g, w = getattr(got, name), getattr(want, name)
        assert g.dtype == w.dtype, name
        assert g.shape == w.shape, name
        assert np.array_equal(g, w), name
    assert got.payloads == want.payloads
    assert got.usd_links == want.usd_links
    assert got.meta == want.meta


@pytest.mark.parametrize("n", [0, 1, 2_000])
def test_snapshot_round_trips_every_column(tmp_path: Path, n: int) -> None:
    path = tmp_path / SNAPSHOT_FILE_NAME
    image = _image(n)
    write_snapshot(path, image, covers_segment=17)
    got = read_snapshot(path)
    assert got is not None
    loaded, covers = got
    assert covers == 17
    _assert_images_equal(loaded, image)
    assert len(array_to_uuids(loaded.entity_ids)) == n
    assert sorted(p.name for p in tmp_path.iterdir()) == [SNAPSHOT_FILE_NAME]  # no temp left


def test_missing_snapshot_reads_as_none(tmp_path: Path) -> None:
    assert read_snapshot(tmp_path / SNAPSHOT_FILE_NAME) is None


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage",
    [
        "magic",
        "header",
        "vectors",
        "payload_blob",
        "checksum",
        "truncate",
        "truncate_half",
        "empty",
    ],
)
def test_corrupt_snapshot_raises_naming_the_file(tmp_path: Path, damage: str) -> None:
    path = tmp_path / SNAPSHOT_FILE_NAME
    write_snapshot(path, _image(300), covers_segment=3)
    size = path.stat().st_size
    if damage == "magic":
        _flip(path, 0)
    elif damage == "header":
        _flip(path, 20)
    elif damage == "vectors":
        _flip(path, size // 2)
    elif damage == "payload_blob":
        _flip(path, size - 2_000)
    elif damage == "checksum":
        _flip(path, size - 10)
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[:-1])
    elif damage == "truncate_half":
        path.write_bytes(path.read_bytes()[: size // 2])
    else:
        path.write_bytes(b"")
    with pytest.raises(SnapshotCorruptError) as err:
        read_snapshot(path)
    assert str(path) in str(err.value)


def test_a_rejected_image_leaves_the_previous_snapshot_intact(tmp_path: Path) -> None:
    path = tmp_path / SNAPSHOT_FILE_NAME
    good = _image(50)
    write_snapshot(path, good, covers_segment=5)

    ragged = _image(50)
    ragged.utility = ragged.utility[:-1]
    with pytest.raises(ValueError, match=r"HotImage.utility must have shape \(50,\)"):
        write_snapshot(path, ragged, covers_segment=6)
    unserialisable = _image(50)
    unserialisable.meta = {"clock": object()}
    with pytest.raises(TypeError, match=r"HotImage\.meta"):
        write_snapshot(path, unserialisable, covers_segment=6)

    got = read_snapshot(path)
    assert got is not None
    _assert_images_equal(got[0], good)
    assert got[1] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == [SNAPSHOT_FILE_NAME]


# Rewrites the snapshot in a loop, alternating two images, until killed. With
# "pin", the third write stops just before its rename (temp file complete and
# fsynced) so the kill lands at that exact point of the protocol.
REWRITE_FOREVER = """
import os, sys, threading
from pathlib import Path
from tests.substrate.test_durability_snapshot import KILL_SIZES, _image
from moneta.durability import write_snapshot
path, mode = Path(sys.argv[1]), sys.argv[2]
images = [_image(n, seed=n) for n in KILL_SIZES]
real_replace = os.replace
def replace(src, dst):
    if mode == "pin" and i == 2:
        print("before rename", flush=True)
        threading.Event().wait()
    real_replace(src, dst)
os.replace = replace
i = 0
while True:
    write_snapshot(path, images[i % 2], covers_segment=i)
    print(f"wrote {i}", flush=True)
    i += 1
"""
KILL_SIZES = (20_000, 24_000)


def _run_until(path: Path, mode: str, marker: str) -> None:
    """Start the rewriting child, SIGKILL it as soon as it prints ``marker``."""
    child = subprocess.Popen(
        [sys.executable, "-c", REWRITE_FOREVER, str(path), mode],
        cwd=Path(__file__).resolve().parents[2],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        while (line := child.stdout.readline()) and line.strip() != marker:
            pass
        assert line.strip() == marker
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)


def _assert_whole_snapshot(path: Path, min_covers: int) -> None:
    got = read_snapshot(path)
    assert got is not None
    image, covers = got
    assert covers >= min_covers
    n = KILL_SIZES[covers % 2]
    want = _image(n, seed=n)
    assert len(image.payloads) == n
    assert np.array_equal(image.vectors, want.vectors)
    assert np.array_equal(image.attended_count, want.attended_count)
    assert image.payloads == want.payloads


def test_snapshot_killed_before_rename_keeps_the_previous_file(tmp_path: Path) -> None:
    path = tmp_path / SNAPSHOT_FILE_NAME
    _run_until(path, "pin", "before rename")
    temp = path.with_name(path.name + ".tmp")
    assert temp.stat().st_size > 0  # the third image, complete but never renamed
    _assert_whole_snapshot(path, min_covers=1)
    assert read_snapshot(path)[1] == 1  # type: ignore[index]

    # The next write replaces the stale temp file and leaves none behind.
    write_snapshot(path, _image(10), covers_segment=9)
    assert sorted(p.name for p in tmp_path.iterdir()) == [SNAPSHOT_FILE_NAME]
    assert read_snapshot(path)[1] == 9  # type: ignore[index]


def test_snapshot_killed_at_varying_points_is_always_whole(tmp_path: Path) -> None:
    path = tmp_path / SNAPSHOT_FILE_NAME
    for attempt in range(3):
        # The child starts its next write right after printing: kill it there.
        _run_until(path, "free", f"wrote {1 + attempt}")
        _assert_whole_snapshot(path, min_covers=1 + attempt)


def test_snapshot_racing_appends_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    """Writers append deposits and attention under the state lock (as the handle does);
    a snapshotter repeatedly rotates and copies the state under that lock, then writes
    the snapshot and drops covered segments outside it. Recovery (snapshot + replay of
    later segments) must equal the acknowledged state exactly."""
    dim = 8
    snapshot = tmp_path / SNAPSHOT_FILE_NAME
    wal = WriteAheadLog(tmp_path, fsync_interval_s=0.005)
    state_lock = threading.Lock()
    acked: dict[uuid.UUID, int] = {}  # acknowledged id -> acknowledged attention signals
    order: list[uuid.UUID] = []
    stop = threading.Event()
    errors: list[BaseException] = []
    snapshots_taken = 0
    signals_acked = 0
    deadline = time.monotonic() + 60

    def writer(seed: int) -> None:
        nonlocal signals_acked
        rng = np.random.default_rng(seed)
        vector = np.ones(dim, dtype=np.float32)
        try:
            i = 0
            # At least 600 deposits each, and on until three snapshots raced them.
            while i < 600 or (snapshots_taken < 3 and time.monotonic() < deadline):
                eid = uuid.uuid4()
                with state_lock:
                    wal.append(DepositRecord(eid, f"{seed}:{i}", vector, 0.0, float(i)))
                    acked[eid] = 0
                    order.append(eid)
                if i % 2:
                    with state_lock:
                        picks = [order[int(k)] for k in rng.integers(0, len(order), 3)]
                        wal.append(AttentionRecord(picks, np.full(3, 0.1), float(i)))
                        for p in picks:
                            acked[p] += 1
                        signals_acked += 3
                i += 1
        except Exception as exc:
            errors.append(exc)

    def snapshotter() -> None:
        nonlocal snapshots_taken
        try:
            while not stop.is_set():
                with state_lock:
                    covered = wal.rotate()
                    ids = list(acked)
                    counts = np.array([acked[i] for i in ids], dtype=np.int64)
                n = len(ids)
                image = HotImage(
                    entity_ids=uuids_to_array(ids),
                    vectors=np.ones((n, dim), dtype=np.float32),
                    utility=np.ones(n),
                    attended_count=counts,
                    protected_floor=np.zeros(n),
                    last_evaluated=np.zeros(n),
                    state=np.zeros(n, dtype=np.int8),
                    payloads=[""] * n,
                    usd_links=[None] * n,
                    meta={"embedding_dim": dim},
                )
                write_snapshot(snapshot, image, covers_segment=covered)
                wal.drop_through(covered)
                snapshots_taken += 1
        except Exception as exc:
            errors.append(exc)

    writers = [threading.Thread(target=writer, args=(s,)) for s in range(4)]
    snap = threading.Thread(target=snapshotter)
    snap.start()
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    snap.join()
    assert errors == []
    assert snapshots_taken >= 3
    # No close(): recovery must work from what a killed process left behind.

    got = read_snapshot(snapshot)
    assert got is not None
    image, covers = got
    recovered = dict(
        zip(array_to_uuids(image.entity_ids), image.attended_count.tolist(), strict=True)
    )
    assert len(recovered) == len(image.entity_ids)
    reader = WriteAheadLog(tmp_path)
    assert all(n > covers for n in reader.segments())
    for record in reader.replay(covers):
        if isinstance(record, DepositRecord):
            assert record.entity_id not in recovered, "deposit applied twice"
            recovered[record.entity_id] = 0
        else:
            assert isinstance(record, AttentionRecord)
            for eid in record.entity_ids:
                recovered[eid] += 1
    reader.close()
    wal.close()

    assert len(acked) >= 4 * 600
    assert len(recovered) == len(acked)
    assert recovered == acked
    assert sum(recovered.values()) == signals_acked >= 4 * 300 * 3


def test_a_hot_tier_image_keeps_its_rows_while_the_table_prunes_and_grows(
    tmp_path: Path,
) -> None:
    """The image shares the vector and id columns (no copy under the lock); rows that
    removal and appends overwrite while it is alive are kept for it, so the snapshot
    holds the rows as of the image, and the table itself must stay right."""
    from moneta.ecs import HotTier

    dim = 8
    hot = HotTier(dim=dim)
    ids = [uuid.uuid4() for _ in range(50)]

    def vector(i: int) -> np.ndarray:
        v = np.arange(dim, dtype=np.float32) + i
        return v / np.linalg.norm(v)

    for i, entity_id in enumerate(ids):
        hot.append(entity_id, vector(i), f"p{i}", floor=0.0, utility=1.0, attended=0,
                   last_evaluated=float(i))  # fmt: skip
    image = hot.image({"embedding_dim": dim})
    want_vectors, want_ids = image.vectors.copy(), image.entity_ids.copy()

    hot.remove_rows([0, 7, 31])  # the last rows move into these holes
    late = uuid.uuid4()  # appended at row 47, which the image covers
    hot.append(late, vector(99), "late", floor=0.0, utility=1.0, attended=0,
               last_evaluated=99.0)  # fmt: skip

    assert not np.array_equal(image.vectors, want_vectors)  # the live rows did move
    assert np.array_equal(_as_of_image(image, "vectors"), want_vectors)
    assert np.array_equal(_as_of_image(image, "entity_ids"), want_ids)
    write_snapshot(tmp_path / SNAPSHOT_FILE_NAME, image, covers_segment=1)
    got = read_snapshot(tmp_path / SNAPSHOT_FILE_NAME)
    assert got is not None
    assert array_to_uuids(got[0].entity_ids) == ids
    assert np.array_equal(got[0].vectors, want_vectors)
    assert got[0].payloads == [f"p{i}" for i in range(50)]

    expected = {e: i for i, e in enumerate(ids) if i not in (0, 7, 31)} | {late: 99}
    assert len(hot) == len(expected) == 48
    assert set(hot.ids) == set(expected)
    for row, entity_id in enumerate(hot.ids):
        assert hot.row_of(entity_id) == row
        assert np.allclose(hot.vectors[row], vector(expected[entity_id]))
        assert hot.payloads[row] == ("late" if entity_id == late else f"p{expected[entity_id]}")
    assert array_to_uuids(hot.image({}).entity_ids) == hot.ids


def _as_of_image(image: HotImage, name: str) -> np.ndarray:
    """A shared column of ``image`` read back whole, chunk by chunk, as the writer does."""
    shared = image.shared
    assert shared is not None
    column = shared.columns[name]
    buffer = np.empty((shared.chunk_rows, *column.shape[1:]), dtype=column.dtype)
    chunks = range(-(-shared.n // shared.chunk_rows))
    return np.concatenate([shared.read(name, c, buffer).copy() for c in chunks])


def test_shared_rows_keep_the_first_contents_of_a_row_across_chunks(tmp_path: Path) -> None:
    """Rows overwritten more than once read back as they were when the image was taken,
    in every chunk; rows past the image's length are not the image's concern."""
    vectors = np.arange(40, dtype=np.float32).reshape(10, 4)
    ids = np.arange(160, dtype=np.uint8).reshape(10, 16)
    want_vectors, want_ids = vectors.copy(), ids.copy()
    shared = SharedRows({"vectors": vectors[:8], "entity_ids": ids[:8]})
    shared.chunk_rows = 3  # chunks [0, 3), [3, 6), [6, 8)
    for rows, fill in (([1, 4], -1.0), ([4, 7, 9], -2.0), ([1], -3.0)):
        shared.preserve(np.array(rows))
        vectors[rows] = fill
        ids[rows] = 0
    image = HotImage(
        entity_ids=ids[:8], vectors=vectors[:8], utility=np.zeros(8),
        attended_count=np.zeros(8, dtype=np.int64), protected_floor=np.zeros(8),
        last_evaluated=np.zeros(8), state=np.zeros(8, dtype=np.int8),
        payloads=[f"p{i}" for i in range(8)], usd_links=[None] * 8, meta={}, shared=shared,
    )  # fmt: skip

    assert np.array_equal(_as_of_image(image, "vectors"), want_vectors[:8])
    assert np.array_equal(_as_of_image(image, "entity_ids"), want_ids[:8])
    write_snapshot(tmp_path / SNAPSHOT_FILE_NAME, image, covers_segment=1)
    got = read_snapshot(tmp_path / SNAPSHOT_FILE_NAME)
    assert got is not None
    assert np.array_equal(got[0].vectors, want_vectors[:8])
    assert np.array_equal(got[0].entity_ids, want_ids[:8])
