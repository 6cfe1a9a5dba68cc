"""Scaling: `distill run` against 1, 2 and 4 simulated vLLM replicas, `engine: local` vs `engine: ray`.

Each teacher replica is a simulator process (``bench/teacher_sim.py``: ``--slots`` sequences at once, long-tailed
times). The local engine drives all of them from one generation window; the Ray engine runs one generation
actor per teacher replica (each with its own window, the in-flight budget split between them), two curate and
two write actors, on a Ray cluster of this machine (a head and two worker nodes, ``ray.cluster_utils``; the
same processes as ``ray start``). Every run gets the same problems per replica, so perfect scaling keeps the
time flat. Printed per run: wall time of the whole command (start-up included), the steady rate (problems/s
between the first and the last part file written), and both as ratios against the local 1-replica baseline
measured in the same invocation.

    .venv/bin/python bench/scaling.py                              # replicas 1 2 4, both engines
    .venv/bin/python bench/scaling.py --replicas 1 4 --problems-per-replica 200 --slots 32
    .venv/bin/python bench/scaling.py --ray-address head:6379      # an existing cluster instead

Exits non-zero only when a run fails.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from teacher_sim import SimConfig, spawn  # noqa: E402

MB = 2**20


def write_problems(path: Path, count: int) -> Path:
    with path.open("w") as handle:
        for i in range(count):
            handle.write(json.dumps({"question": f"Problem {i}: what is {i} + {i * 7 % 13}?", "answer": "42"}) + "\n")
    return path


def write_spec(path: Path, source: Path, urls: list[str], engine: str, args: argparse.Namespace) -> Path:
    run: dict[str, Any] = {"batch_size": args.batch_size, "engine": engine}
    if engine == "ray":
        run["steps"] = {"generate": {"replicas": len(urls), "cpus": 0.25}, "curate": {"replicas": 2, "cpus": 0.25},
                        "write": {"replicas": 2, "cpus": 0.25}}
    spec = {"name": path.stem, "source": {"path": str(source), "problem_field": "question", "answer_field": "answer"},
            "teacher": {"backend": "openai", "model": "sim-teacher", "base_url": urls, "num_samples": 1,
                        "max_new_tokens": 100_000, "max_concurrency": args.slots},
            "verification": "exact", "dedupe": {"enabled": False}, "run": run}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@contextlib.contextmanager
def ray_cluster(address: str | None) -> Iterator[str]:
    if address:
        yield address
        return
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, connect=False,
                      head_node_args={"num_cpus": 0, "include_dashboard": False, "object_store_memory": 100 * MB})
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=2, object_store_memory=100 * MB)
        cluster.wait_for_nodes()
        yield cluster.address
    finally:
        cluster.shutdown()


def steady_rate(out: Path) -> float | None:
    """Problems per second between the first and the last part written (start-up and finalize left out)."""
    import pyarrow.parquet as pq

    parts = sorted((out / ".cache" / "parts").glob("part-*.parquet"), key=lambda p: p.stat().st_mtime)
    if len(parts) < 3:
        return None
    span = parts[-1].stat().st_mtime - parts[0].stat().st_mtime
    problems = sum(len(set(pq.read_table(p, columns=["problem_id"]).column(0).to_pylist())) for p in parts[1:])
    return problems / span if span > 0 else None


def measure(replicas: int, engine: str, address: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    count = args.problems_per_replica * replicas
    source = write_problems(tmp / f"problems-{count}.jsonl", count)
    config = SimConfig(slots=args.slots, median_s=args.median, sigma=args.sigma, cap_s=args.cap)
    with contextlib.ExitStack() as stack:
        urls = [stack.enter_context(spawn(config)) for _ in range(replicas)]
        spec = write_spec(tmp / f"{engine}-{replicas}.yaml", source, urls, engine, args)
        out = tmp / f"out-{engine}-{replicas}"
        command = [sys.executable, "-m", "distill.cli", "run", str(spec), "--out", str(out)]
        if engine == "ray":
            command += ["--ray-address", address]
        started = time.monotonic()
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=args.timeout)
        wall = time.monotonic() - started
    if result.returncode != 0:
        raise RuntimeError(f"{engine} x{replicas} failed ({result.returncode}): {result.stderr[-1500:]}")
    return {"engine": engine, "replicas": replicas, "problems": count, "wall_s": round(wall, 2),
            "problems_per_s": round(count / wall, 2), "steady_per_s": steady_rate(out)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 4], help="simulated teacher replicas")
    parser.add_argument("--engines", nargs="+", default=["local", "ray"], choices=["local", "ray"])
    parser.add_argument("--problems-per-replica", type=int, default=120)
    parser.add_argument("--slots", type=int, default=16, help="sequences each simulated replica decodes at once")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--median", type=float, default=0.5, help="median sequence time (s)")
    parser.add_argument("--sigma", type=float, default=1.0)
    parser.add_argument("--cap", type=float, default=4.0)
    parser.add_argument("--ray-address", help="an existing Ray cluster (default: one started on this machine)")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    results: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmp, \
                ray_cluster(args.ray_address if "ray" in args.engines else "unused") as address:
            for engine in args.engines:
                for replicas in args.replicas:
                    results.append(measure(replicas, engine, address, args, Path(tmp)))
                    print(json.dumps(results[-1]), flush=True)
    except (RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    base = next((r for r in results if r["engine"] == "local" and r["replicas"] == 1), results[0])
    print(f"\nbaseline: {base['engine']} x{base['replicas']}, {base['problems']} problems in {base['wall_s']} s")
    print(f"{'engine':<7}{'replicas':>9}{'problems':>9}{'wall s':>8}{'problems/s':>11}{'ratio':>7}"
          f"{'steady/s':>10}{'ratio':>7}")
    for r in results:
        steady = r["steady_per_s"]
        steady_ratio = steady / base["steady_per_s"] if steady and base["steady_per_s"] else None
        print(f"{r['engine']:<7}{r['replicas']:>9}{r['problems']:>9}{r['wall_s']:>8.1f}{r['problems_per_s']:>11.2f}"
              f"{r['problems_per_s'] / base['problems_per_s']:>7.2f}"
              f"{steady if steady is None else round(steady, 2)!s:>10}"
              f"{'-' if steady_ratio is None else f'{steady_ratio:.2f}':>7}")
    if args.json:
        args.json.write_text(json.dumps({"baseline": base, "runs": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
