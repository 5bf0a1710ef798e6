"""Benchmark of the LanceDB vector authority (issue 4); prints one JSON document.

    python3 bench/vectors.py [--sizes 10000,100000,1000000] [--hot 10000] [--queries 100]

What it measures (dim 384, this machine):

- ``commit``: what a deposit pays for the vector index (``upsert`` into the
  group-commit buffer), a group commit of ``index_commit_every_records`` rows, and
  ``deposit`` end to end through the handle (WAL append + hot tier + buffer);
- per cold size (10k, 100k, 1M CONSOLIDATED rows written as Arrow batches with
  ``LanceVectorIndex.bulk_append``, plus ``--hot`` memories deposited through the
  handle): ``query(limit=5)`` latency through the whole handle with exact search and
  then with the ANN index, recall@5 of the handle against exact brute force over
  both tiers (same ranking: cosine x utility), recall@5 of the cold index alone
  against exact cosine, index build time (``maintain()``), on-disk size, reopen
  time and peak RSS of a fresh process that opens the store and queries it.

Data: embeddings with low intrinsic dimension like real sentence embeddings — a
mixture of 200 Gaussian clusters in 32 latent dimensions, projected to 384 and
perturbed with small isotropic noise, then L2-normalised. Cold utilities are
uniform in [0.1, 0.3] (what consolidation leaves); hot memories were deposited
2.5 half-lives before the (frozen) query clock, so their decayed utility is about
0.18 and both tiers compete for the top 5. Hot memories come from half of the
clusters; queries are noisy copies of random cold memories from the other half
(an agent asking about older topics). Everything is generated from fixed seeds
chunk by chunk, so brute force never holds 1M vectors.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from moneta import Moneta  # noqa: E402
from moneta.config import MonetaConfig  # noqa: E402
from moneta.lance_index import (  # noqa: E402
    RANKED_COLUMN,
    VECTOR_COLUMN,
    LanceVectorIndex,
    ranked_query,
    table_schema,
)
from moneta.protocols import VectorRecord  # noqa: E402
from moneta.store import VECTORS_DIR  # noqa: E402
from moneta.types import EntityState  # noqa: E402

DIM = 384
LATENT = 32
CLUSTERS = 200
CHUNK = 50_000
NOW = 1_772_452_800.0
HALF_LIFE = 6 * 3600.0
HOT_AGE = 2.5 * HALF_LIFE  # hot memories were deposited this long before the queries
HOT_UTILITY = 2.0**-2.5  # their decayed utility at query time (about 0.18)
LIMIT = 5


def _model() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(2026)
    projection = rng.standard_normal((LATENT, DIM)).astype(np.float32) / np.sqrt(LATENT)
    centres = 2.0 * rng.standard_normal((CLUSTERS, LATENT)).astype(np.float32)
    return projection, centres


PROJECTION, CENTRES = _model()


def labelled(
    kind: int, chunk: int, n: int, clusters: int = CLUSTERS
) -> tuple[np.ndarray, np.ndarray]:
    """`n` unit vectors of stream `kind`, chunk `chunk` (reproducible), with their
    cluster labels drawn from the first `clusters` clusters."""
    rng = np.random.default_rng([kind, chunk])
    labels = rng.integers(0, clusters, n)
    latent = CENTRES[labels] + rng.standard_normal((n, LATENT)).astype(np.float32)
    v = latent @ PROJECTION + 0.05 * rng.standard_normal((n, DIM)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v, labels


def embeddings(kind: int, chunk: int, n: int, clusters: int = CLUSTERS) -> np.ndarray:
    return labelled(kind, chunk, n, clusters)[0]


HOT_CLUSTERS = CLUSTERS // 2  # recent topics; queries ask about the other, older ones


def cold_utility(chunk: int, n: int) -> np.ndarray:
    return np.random.default_rng([9, chunk]).uniform(0.1, 0.3, n)


def cold_chunks(total: int) -> list[tuple[int, int]]:
    return [(c, min(CHUNK, total - c * CHUNK)) for c in range((total + CHUNK - 1) // CHUNK)]


def cold_ids(chunk: int, n: int) -> list[str]:
    rng = np.random.default_rng([11, chunk])
    return [str(uuid.UUID(bytes=rng.bytes(16), version=4)) for _ in range(n)]


def cold_batch(chunk: int, n: int) -> pa.RecordBatch:
    vectors = embeddings(1, chunk, n)
    return pa.RecordBatch.from_arrays(
        [
            pa.array(cold_ids(chunk, n), pa.string()),
            pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), DIM),
            pa.array([f"cold memory {chunk}:{i}" for i in range(n)], pa.string()),
            pa.array(np.full(n, int(EntityState.CONSOLIDATED), np.int8)),
            pa.array(cold_utility(chunk, n)),
            pa.array(np.full(n, 3, np.int64)),
            pa.array(np.zeros(n)),
            pa.array(np.full(n, NOW - 86_400.0)),
            pa.array([f"/Memory_{chunk}_{i}" for i in range(n)], pa.string()),
        ],
        schema=table_schema(DIM),
    )


def queries(total_cold: int, count: int) -> np.ndarray:
    """Noisy copies of random cold memories on topics the hot tier does not hold."""
    rng = np.random.default_rng(77)
    out = np.empty((count, DIM), dtype=np.float32)
    j = 0
    while j < count:
        chunk, offset = divmod(int(rng.integers(0, total_cold)), CHUNK)
        vectors, labels = labelled(1, chunk, min(CHUNK, total_cold - chunk * CHUNK))
        if labels[offset] >= HOT_CLUSTERS:
            out[j] = vectors[offset]
            j += 1
    out += 0.02 * rng.standard_normal(out.shape).astype(np.float32)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def percentiles(samples: list[float], *qs: float) -> dict[str, float]:
    a = np.asarray(samples)
    return {f"p{q:g}": round(float(np.percentile(a, q)), 4) for q in qs}


def config(store: Path, now: float = NOW, **extra: Any) -> MonetaConfig:
    return MonetaConfig(
        storage_uri=str(store),
        vector_backend="lancedb",
        cold_tier="jsonl",
        auto_sleep=False,
        half_life_seconds=HALF_LIFE,
        clock=lambda: now,
        checkpoint_every_records=1_000_000,
        **extra,
    )


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# --- commit latency -------------------------------------------------------------------


def bench_commit(work: Path, deposits: int) -> dict[str, Any]:
    vectors = embeddings(3, 0, deposits)
    index = LanceVectorIndex(work / "commit", commit_every=1 << 30, commit_interval_s=3600.0)
    upsert_ms, commit_ms = [], []
    group = 1024
    for start in range(0, deposits, group):
        for v in vectors[start : start + group]:
            rec = VectorRecord(uuid.uuid4(), v, "x", 1.0, 0, 0.0, NOW, EntityState.VOLATILE)
            t = time.perf_counter()
            index.upsert([rec])
            upsert_ms.append((time.perf_counter() - t) * 1e3)
        t = time.perf_counter()
        index.commit()
        commit_ms.append((time.perf_counter() - t) * 1e3)
    index.close()

    deposit_ms = []
    with Moneta(config(work / "deposit")) as m:
        for v in vectors:
            t = time.perf_counter()
            m.deposit("payload", v)
            deposit_ms.append((time.perf_counter() - t) * 1e3)
    return {
        "records": deposits,
        "upsert_ms": percentiles(upsert_ms, 50, 99, 99.9),
        "group_commit_rows": group,
        "group_commit_ms": percentiles(commit_ms, 50, 99),
        "group_commit_ms_per_row": round(float(np.median(commit_ms)) / group, 4),
        "deposit_through_handle_ms": percentiles(deposit_ms, 50, 99, 99.9),
    }


# --- stores with cold rows ---------------------------------------------------------------


def build_hot(store: Path, hot: int) -> list[str]:
    vectors = embeddings(2, 0, hot, HOT_CLUSTERS)
    with Moneta(config(store, NOW - HOT_AGE)) as m:
        ids = [str(m.deposit(f"hot memory {i}", v)) for i, v in enumerate(vectors)]
    return ids


def ground_truth(
    qs: np.ndarray, total_cold: int, hot: int
) -> tuple[list[list[str]], list[list[str]]]:
    """Exact top-5 of the handle's ranking (both tiers) and of cold cosine alone."""
    n = len(qs)
    best_all = [np.full((n, 0), -np.inf), np.empty((n, 0), dtype=object)]
    best_cold = [np.full((n, 0), -np.inf), np.empty((n, 0), dtype=object)]

    def fold(best: list[np.ndarray], scores: np.ndarray, ids: np.ndarray) -> None:
        s = np.concatenate([best[0], scores], axis=1)
        i = np.concatenate([best[1], np.broadcast_to(ids, scores.shape)], axis=1)
        top = np.argsort(-s, axis=1, kind="stable")[:, :LIMIT]
        best[0] = np.take_along_axis(s, top, axis=1)
        best[1] = np.take_along_axis(i, top, axis=1)

    for chunk, size in cold_chunks(total_cold):
        cos = qs @ embeddings(1, chunk, size).T
        ids = np.asarray(cold_ids(chunk, size), dtype=object)
        fold(best_cold, cos, ids)
        fold(best_all, cos * cold_utility(chunk, size), ids)
    hot_ids = np.asarray(json.loads((Path(os.environ["BENCH_HOT_IDS"])).read_text()), object)
    fold(best_all, HOT_UTILITY * (qs @ embeddings(2, 0, hot, HOT_CLUSTERS).T), hot_ids)
    return best_all[1].tolist(), best_cold[1].tolist()


MEASURE = "measure"


def measure(store: Path, qfile: Path, truth_file: Path, count: int) -> dict[str, Any]:
    """Run in a fresh process: reopen time, query latency, recall, peak RSS."""
    qs = np.load(qfile)[:count]
    truth = json.loads(truth_file.read_text())
    t = time.perf_counter()
    m = Moneta(config(store))
    reopen_s = time.perf_counter() - t
    index = m._parts.index  # the store's LanceVectorIndex, for the cold-only recall
    first = []  # first touch of each query: index partitions still being read from disk
    for q in qs:
        t = time.perf_counter()
        m.query(q, limit=LIMIT)
        first.append((time.perf_counter() - t) * 1e3)
    latencies, recall, cold_recall, cold_share = [], [], [], []
    consolidated = frozenset({EntityState.CONSOLIDATED})
    for j, q in enumerate(qs):
        t = time.perf_counter()
        got = m.query(q, limit=LIMIT)
        latencies.append((time.perf_counter() - t) * 1e3)
        ids = {str(x.entity_id) for x in got}
        recall.append(len(ids & set(truth["all"][j])) / LIMIT)
        cold_share.append(sum(x.state == EntityState.CONSOLIDATED for x in got) / LIMIT)
        cold = {str(r.entity_id) for r, _ in index.search(q, LIMIT, states=consolidated)}
        cold_recall.append(len(cold & set(truth["cold"][j])) / LIMIT)
    m.close()
    status = Path("/proc/self/status").read_text().splitlines()
    rss = {
        line.split(":")[0]: int(line.split()[1]) * 1024
        for line in status
        if line.startswith(("VmRSS", "VmHWM"))
    }
    return {
        "queries": len(qs),
        "reopen_s": round(reopen_s, 3),
        "query_ms": percentiles(latencies, 50, 95, 99),
        "first_pass_query_ms": percentiles(first, 50, 95, 99),
        "recall_at_5": round(float(np.mean(recall)), 4),
        "cold_index_recall_at_5": round(float(np.mean(cold_recall)), 4),
        "cold_share_of_results": round(float(np.mean(cold_share)), 3),
        "peak_rss_bytes": rss.get("VmHWM"),
    }


def run_measure(store: Path, qfile: Path, truth_file: Path, count: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, MEASURE, str(store), str(qfile), str(truth_file), str(count)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout)


def ivf_partitions(index: LanceVectorIndex, query: np.ndarray) -> dict[str, int | None]:
    """IVF partitions of each ANN index, read from LanceDB's query plan (the sleep
    pass's ``optimize`` re-balances them, so this is what queries actually probe)."""
    out: dict[str, int | None] = {}
    for column, vector in ((VECTOR_COLUMN, query), (RANKED_COLUMN, ranked_query(query))):
        search = index._table.search(vector, vector_column_name=column).distance_type("cosine")
        plan = search.limit(LIMIT).select(["id", "_distance"]).analyze_plan()
        found = re.search(r"partitions_ranked=(\d+)", plan)
        out[column] = int(found.group(1)) if found else None
    return out


def bench_size(
    work: Path, base: Path, cold: int, hot: int, nq: int, exact_queries: int
) -> dict[str, Any]:
    store = work / f"cold_{cold}"
    shutil.copytree(base, store)
    index = LanceVectorIndex(store / VECTORS_DIR, ann_threshold=1 << 40)
    t = time.perf_counter()
    index.bulk_append((cold_batch(c, n) for c, n in cold_chunks(cold)), dim=DIM)
    write_s = time.perf_counter() - t
    index.close()

    qs = queries(cold, nq)
    qfile = store.parent / f"queries_{cold}.npy"
    np.save(qfile, qs)
    truth_all, truth_cold = ground_truth(qs, cold, hot)
    truth_file = store.parent / f"truth_{cold}.json"
    truth_file.write_text(json.dumps({"all": truth_all, "cold": truth_cold}))

    exact = run_measure(store, qfile, truth_file, exact_queries)
    index = LanceVectorIndex(store / VECTORS_DIR, ann_threshold=10_000)
    t = time.perf_counter()
    index.maintain()  # scalar indices, IVF_RQ training, compaction, cleanup
    build_s = time.perf_counter() - t
    stats = index.table_stats()
    partitions = ivf_partitions(index, qs[0])
    index.close()
    ann = run_measure(store, qfile, truth_file, nq)
    return {
        "cold": cold,
        "hot": hot,
        "bulk_write_s": round(write_s, 2),
        "index_build_s": round(build_s, 2),
        "disk_bytes": du(store / VECTORS_DIR),
        "fragments": stats.fragments,
        "ivf_partitions": partitions,
        "exact": exact,
        "ann": ann,
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == MEASURE:
        store, qfile, truth, count = sys.argv[2:6]
        print(json.dumps(measure(Path(store), Path(qfile), Path(truth), int(count))))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--hot", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--deposits", type=int, default=10_240)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="moneta-bench-vectors-"))
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"dim": DIM, "cpus": os.cpu_count()}
    try:
        result["commit"] = bench_commit(work, args.deposits)
        base = work / "hot_base"
        hot_ids = build_hot(base, args.hot)
        (work / "hot_ids.json").write_text(json.dumps(hot_ids))
        os.environ["BENCH_HOT_IDS"] = str(work / "hot_ids.json")
        result["sizes"] = []
        for size in (int(s) for s in args.sizes.split(",")):
            # Exact search over 1M rows takes seconds per query: sample fewer.
            exact_queries = args.queries if size <= 100_000 else 10
            result["sizes"].append(
                bench_size(work, base, size, args.hot, args.queries, exact_queries)
            )
            print(json.dumps(result["sizes"][-1]), file=sys.stderr, flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
