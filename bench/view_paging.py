"""How fast ``distill view`` pages through a large dataset folder, filtered, against unfiltered paging.

Writes N synthetic samples (default 1,000,000) as a dataset folder of ``data-*.parquet`` shards in the columns
``distill run`` writes (a thought of ~60 words per sample, each row's text distinct, PRM and judge scores), then
times what a page of the viewer costs: the filtered count plus one page of 50 rows, through the viewer's own
queries (distill/view/data.py, DuckDB over the parquet files, memory capped at 1 GB). Every case is timed
``--repeat`` times after one warm-up; the median is printed with its ratio to the unfiltered first page, measured
in the same run. Reproduce docs/benchmarks.md's table with:

    .venv/bin/python bench/view_paging.py               # --rows 1000000 --out out/view-bench (kept for reuse)
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from distill.view.data import Database, Filters  # noqa: E402

WORDS = ("so the total is then we add carry the one which gives check again wait no that is wrong let me "
         "recompute step first second third multiply divide subtract half of twice more less apples coins").split()
REASONS = ["incorrect", "truncated", "no_answer", "prm", "judge", "no_thought"]
SAMPLES_PER_PROBLEM = 4


def write_dataset(out: Path, rows: int, shards: int = 10, seed: int = 0) -> None:
    """``rows`` samples as ``shards`` parquet files, written one shard at a time (bounded memory)."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    vocab = pa.array(WORDS)
    per_shard = -(-rows // shards)
    for shard in range(shards):
        start, n = shard * per_shard, min(per_shard, rows - shard * per_shard)
        index = np.arange(start, start + n)
        problem = index // SAMPLES_PER_PROBLEM
        # A thought of 60 words drawn per row, then the row's number: no two rows share a text.
        words = pc.take(vocab, pa.array(rng.integers(0, len(WORDS), size=n * 60)))
        thought = pc.binary_join_element_wise(
            pc.binary_join(pa.ListArray.from_arrays(pa.array(np.arange(0, n * 60 + 1, 60, dtype=np.int32)),
                                                    words), " "),
            pc.cast(pa.array(index), pa.string()), " #")
        problem_text = pc.binary_join_element_wise("What is the sum of", pc.cast(pa.array(problem), pa.string()),
                                                   "and its half?", " ")
        kept = rng.random(n) < 0.6
        reason = np.where(kept, None, np.array(REASONS, dtype=object)[rng.integers(0, len(REASONS), n)])
        pass_rate = (np.floor(rng.random(n // SAMPLES_PER_PROBLEM + 1) * 5) / 4)[problem - problem[0]]
        table = pa.table({
            "problem_id": pc.binary_join_element_wise("p", pc.cast(pa.array(problem), pa.string()), ""),
            "problem_index": pa.array(problem, pa.int64()),
            "sample_index": pa.array(index % SAMPLES_PER_PROBLEM, pa.int32()),
            "problem": problem_text, "gold": pc.cast(pa.array(problem * 3), pa.string()),
            "thought": thought, "answer": pc.cast(pa.array(problem * 3), pa.string()),
            "correct": pa.array(kept | (rng.random(n) < 0.2)), "kept": pa.array(kept),
            "rejection_reason": pa.array(reason, pa.string()),
            "completion_tokens": pa.array(rng.integers(20, 2000, n), pa.int64()),
            "pass_rate": pa.array(pass_rate, pa.float64()),
            "prm_score": pa.array(rng.random(n), pa.float64()),
            "judge_score": pa.array(np.round(rng.random(n) * 10) / 10, pa.float64()),
        })
        pq.write_table(table, out / f"data-{shard:05d}-of-{shards:05d}.parquet", row_group_size=100_000)


CASES = [
    ("unfiltered, page 1 (baseline)", {}),
    ("unfiltered, page 10,000", {"page": "10000"}),
    ("kept only", {"status": "kept"}),
    ("reason = prm", {"reason": "prm"}),
    ("pass rate 0.25–0.5", {"pass_min": "0.25", "pass_max": "0.5"}),
    ("PRM score 0.9–1, sorted by PRM score desc", {"prm_min": "0.9", "sort": "prm_score", "desc": "1"}),
    ("judge ≥ 0.8 and tokens 100–500", {"judge_min": "0.8", "tokens_min": "100", "tokens_max": "500"}),
    ("rejected, sorted by tokens, page 100", {"status": "rejected", "sort": "completion_tokens", "page": "100"}),
    ("text search 'recompute' (problem/thought/answer)", {"q": "recompute"}),
    ("  the same search, page 2 (its matches are kept)", {"q": "recompute", "page": "2", "after": "1"}),
    ("  the same search sorted by PRM score, page 500", {"q": "recompute", "sort": "prm_score", "page": "500",
                                                          "after": "1"}),
    ("text search, one row ('#<row>')", {"q": "#{one}"}),
]


def time_page(out: Path, query: dict[str, str], repeat: int) -> tuple[float, int, int]:
    """Median seconds of what one page request costs (the file list, the count, the page) and the counts.

    Each timed request runs on a fresh viewer database, so a text search pays its scan every time; with
    ``after`` the request follows an untimed one with the same filters on page ``after`` (what a user paging
    through a search gets)."""
    query = dict(query)
    after = query.pop("after", None)
    filters = Filters.parse(query)
    times, total, shown = [], 0, 0
    for attempt in range(repeat + 1):
        db = Database()
        if after:
            first = Filters.parse({**query, "page": after})
            source = db.source(out)
            db.count(source, first), db.page(source, first)
        start = time.perf_counter()
        source = db.source(out)
        total = db.count(source, filters)
        shown = len(db.page(source, filters))
        if attempt:  # the first is the warm-up (the operating system's file cache)
            times.append(time.perf_counter() - start)
    return statistics.median(times), total, shown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "view-bench")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    marker = args.out / f".rows-{args.rows}"
    wrote = not marker.exists()
    if wrote:
        for old in args.out.glob("data-*.parquet"):
            old.unlink()
        start = time.perf_counter()
        write_dataset(args.out, args.rows)
        marker.touch()
        size = sum(p.stat().st_size for p in args.out.glob("data-*.parquet")) / 2**20
        print(f"wrote {args.rows:,} rows ({size:.0f} MiB of parquet) in {time.perf_counter() - start:.1f} s")
    print(f"{args.rows:,} rows, {args.repeat} timed runs per case (median), a page = count + 50 rows")
    print(f"{'case':<52} {'rows matched':>12} {'ms/page':>9} {'× baseline':>11}")
    baseline = None
    one = str(args.rows * 7 // 9)  # the number ending one row's thought
    for name, query in CASES:
        name, query = name.replace("<row>", one), {k: v.replace("{one}", one) for k, v in query.items()}
        seconds, total, shown = time_page(args.out, query, args.repeat)
        baseline = baseline or seconds
        print(f"{name:<52} {total:>12,} {seconds * 1000:>9.0f} {seconds / baseline:>10.1f}×")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    load = os.getloadavg()[0]
    print(f"peak RSS of this process: {peak:.0f} MiB{' (writing the rows included)' if wrote else ''}; "
          f"load average {load:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
