"""Entity ids: version-4 UUIDs, unique, and never shared across a fork."""

from __future__ import annotations

import os
import threading
import uuid

import numpy as np

from moneta.ids import POOL_IDS, new_id, uuids_from_bytes


def test_new_ids_are_unique_random_version_4_uuids() -> None:
    ids = [new_id() for _ in range(5 * POOL_IDS + 7)]  # several pool refills
    assert len(set(ids)) == len(ids)
    for u in ids:
        assert isinstance(u, uuid.UUID)
        assert u.version == 4 and u.variant == uuid.RFC_4122
        twin = uuid.UUID(str(u))  # the same value parsed the slow way
        assert twin == u and hash(twin) == hash(u) and twin.bytes == u.bytes
    # 122 random bits each: bit frequencies near one half over the sample.
    bits = np.unpackbits(np.frombuffer(b"".join(u.bytes for u in ids), np.uint8).reshape(-1, 16))
    random_bits = np.delete(bits.reshape(len(ids), 128), [48, 49, 50, 51, 64, 65], axis=1)
    assert 0.45 < random_bits.mean() < 0.55


def test_a_forked_child_does_not_repeat_the_parents_ids() -> None:
    new_id()  # the parent's pool now holds POOL_IDS - 1 ids
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report the ids it would hand out, then exit at once
        try:
            os.write(write, b"".join(new_id().bytes for _ in range(8)))
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        raw = pipe.read()
    os.waitpid(pid, 0)
    child = {uuid.UUID(bytes=raw[i : i + 16]) for i in range(0, len(raw), 16)}
    parent = {new_id() for _ in range(8)}
    assert len(child) == 8 and not child & parent


def test_uuids_from_bytes_round_trips_a_column() -> None:
    ids = [uuid.uuid4() for _ in range(100)]
    column = np.frombuffer(b"".join(u.bytes for u in ids), np.uint8).reshape(-1, 16)
    assert uuids_from_bytes(column) == ids
    assert uuids_from_bytes(np.empty((0, 16), np.uint8)) == []


def test_threads_drawing_across_refills_never_share_an_id() -> None:
    per_thread = 3 * POOL_IDS + 5  # every thread crosses several refills
    drawn: list[list[uuid.UUID]] = [[] for _ in range(8)]
    start = threading.Barrier(8)

    def draw(out: list[uuid.UUID]) -> None:
        start.wait()
        out.extend(new_id() for _ in range(per_thread))

    threads = [threading.Thread(target=draw, args=(out,)) for out in drawn]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [u for out in drawn for u in out]
    assert len(ids) == 8 * per_thread and len(set(ids)) == len(ids)
