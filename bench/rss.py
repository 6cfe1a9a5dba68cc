"""Peak resident memory of `distill run` as the row count grows: it should not grow with the rows.

Streams N problems through the pipeline against the teacher simulator (short sequence times by default, so
100k rows take minutes) and samples the RSS of every process of the run (distilabel's main process and one per
step) while it goes. Prints, per N, the peak RSS of the whole process tree and of its largest process, and
the tree's RSS when 10 %, 50 % and 90 % of the requests had been answered: flat means bounded.

    .venv/bin/python bench/rss.py --rows 10000 100000

Exits non-zero only when a run could not complete.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from teacher_sim import SimConfig, spawn  # noqa: E402
from throughput import parse_variant, write_problems, write_spec  # noqa: E402

MIB = 1024 * 1024


class TreeSampler(threading.Thread):
    """Samples the RSS of a process and its descendants, and the simulator's answered-request count."""

    def __init__(self, pid: int, stats_url: str, every_s: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.stats_url = stats_url
        self.every_s = every_s
        self.samples: list[tuple[int, int, int]] = []  # (requests answered, tree RSS, largest process RSS)
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.every_s):
            rss = []
            try:
                for proc in [self.root, *self.root.children(recursive=True)]:
                    with_rss = _rss(proc)
                    if with_rss:
                        rss.append(with_rss)
            except psutil.Error:
                continue
            try:
                answered = httpx.get(self.stats_url, timeout=5).json()["requests"]
            except httpx.HTTPError:
                answered = self.samples[-1][0] if self.samples else 0
            if rss:
                self.samples.append((answered, sum(rss), max(rss)))


def _rss(proc: psutil.Process) -> int:
    try:
        return proc.memory_info().rss
    except psutil.Error:
        return 0


def at_fraction(samples: list[tuple[int, int, int]], rows: int, fraction: float) -> int | None:
    """Tree RSS at the first sample where ``fraction`` of the rows had been answered."""
    for answered, tree, _ in samples:
        if answered >= fraction * rows:
            return tree
    return None


def measure(rows: int, url: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    case = work / f"rows-{rows}"
    case.mkdir()
    source = write_problems(case / "problems.jsonl", rows)
    spec = write_spec(case / "spec.yaml", source, [url], args.slots, parse_variant("window", args.batch_size))
    stats_url = url.removesuffix("/v1") + "/stats"
    httpx.post(url.removesuffix("/v1") + "/stats/reset")
    log = (case / "distill.log").open("w")
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "distill.cli", "run", str(spec), "--out", str(case / "out")],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1"})
    sampler = TreeSampler(proc.pid, stats_url)
    sampler.start()
    code = proc.wait(timeout=args.timeout)
    sampler.stop.set()
    sampler.join()
    wall = time.monotonic() - started
    log.close()
    if code != 0:
        tail = (case / "distill.log").read_text()[-3000:]
        raise RuntimeError(f"distill run with {rows} rows failed ({code}):\n{tail}")
    samples = sampler.samples
    result = {"rows": rows, "wall_s": round(wall, 1), "rows_per_s": round(rows / wall, 1),
              "peak_tree_mib": round(max(s[1] for s in samples) / MIB),
              "peak_process_mib": round(max(s[2] for s in samples) / MIB)}
    for fraction in (0.1, 0.5, 0.9):
        result[f"tree_at_{int(fraction * 100)}pct_mib"] = round((at_fraction(samples, rows, fraction) or 0) / MIB)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--slots", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--median", type=float, default=0.02, help="median sequence time (s) of the simulator")
    parser.add_argument("--full-text", action="store_true", help="completions as long as their token counts")
    parser.add_argument("--timeout", type=float, default=3600)
    args = parser.parse_args(argv)
    config = SimConfig(slots=args.slots, median_s=args.median, sigma=1.0, cap_s=20 * args.median,
                       full_text=args.full_text)
    print(f"{'rows':>8} {'wall_s':>8} {'rows/s':>8} {'peak tree MiB':>14} {'peak proc MiB':>14} "
          f"{'tree@10%':>9} {'tree@50%':>9} {'tree@90%':>9}")
    try:
        with tempfile.TemporaryDirectory(prefix="bench-rss-") as tmp, spawn(config) as url:
            for rows in args.rows:
                r = measure(rows, url, Path(tmp), args)
                print(f"{r['rows']:>8} {r['wall_s']:>8} {r['rows_per_s']:>8} {r['peak_tree_mib']:>14} "
                      f"{r['peak_process_mib']:>14} {r['tree_at_10pct_mib']:>9} {r['tree_at_50pct_mib']:>9} "
                      f"{r['tree_at_90pct_mib']:>9}", flush=True)
    except (RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
        print(f"error: the benchmark could not run: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
