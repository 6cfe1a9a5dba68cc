"""Generation throughput: `distill run` against a raw constant-in-flight client, on the same simulated teacher.

For each slot count, one run measures (a) the ceiling: a plain asyncio client (the OpenAI SDK, as the
pipeline uses) keeping exactly ``slots`` requests in flight per endpoint, and (b) ``distill run`` with the
project's generation stage (one variant or more: ``window``, ``batch``, ``batch:replicas=4``,
``window:batch_size=256``). Both send the same prompts, so the simulator gives them the same work.
Requests/s and tokens/s are taken over the simulator's span (first request in, last answer out);
the end-to-end ratio adds the pipeline's start-up and dataset writing.

    .venv/bin/python bench/throughput.py --slots 64 256 --requests 2560
    .venv/bin/python bench/throughput.py --instant --requests 20000     # per-row overhead, instant teacher
    .venv/bin/python bench/throughput.py --real-vllm --slots 16 --requests 512 --repeat 3

``--real-vllm``: the teacher is a real vLLM server (``.venv-vllm``, started like ``distill serve``) serving the
lab's tiny teacher (trained on first use, cached in ``out/bench/lab-teacher``) or ``--model DIR``. There is no
simulator to ask, so a poller reads vLLM's ``/metrics`` every 50 ms. Its request gauges stay 0 between its stat
logs, so the rate comes from the ``vllm:generation_tokens`` counter: the time from 10 % to 90 % of the run's
tokens, scaled to a whole-run span (start-up and the drain at the end left out, the same way for both sides).

Exits non-zero only when a measurement could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from teacher_sim import SimConfig, spawn  # noqa: E402

from pipelines.spec import PromptConfig  # noqa: E402
from pipelines.trace.prompt import build_messages  # noqa: E402

MAX_TOKENS = 32768  # above the simulator's longest trace: nothing is truncated


def write_problems(path: Path, count: int) -> Path:
    with path.open("w") as handle:
        for i in range(count):
            handle.write(json.dumps({"question": f"Problem {i}: what is {i} + {i * 7 % 13}?", "answer": "42"}) + "\n")
    return path


def problems(path: Path) -> list[str]:
    return [json.loads(line)["question"] for line in path.open()]


def parse_variant(text: str, batch_size: int) -> dict[str, Any]:
    """``batch:replicas=4,batch_size=256`` → {"dispatch": "batch", "replicas": 4, "batch_size": 256}."""
    dispatch, _, options = text.partition(":")
    if dispatch not in ("window", "batch"):
        raise SystemExit(f"error: variant {text!r}: dispatch must be window or batch")
    variant = {"name": text, "dispatch": dispatch, "replicas": 1, "batch_size": batch_size}
    for option in filter(None, options.split(",")):
        key, _, value = option.partition("=")
        if key not in ("replicas", "batch_size"):
            raise SystemExit(f"error: variant {text!r}: unknown option {key!r} (replicas, batch_size)")
        variant[key] = int(value)
    return variant


def write_spec(path: Path, source: Path, urls: list[str], slots: int, variant: dict[str, Any]) -> Path:
    spec = {
        "name": "bench",
        "source": {"path": str(source), "problem_field": "question", "answer_field": "answer"},
        "prompt": MODEL["prompt"].model_dump(),
        "teacher": {"backend": "openai", "model": MODEL["name"], "base_url": urls, "num_samples": 1,
                    "max_new_tokens": MODEL["max_tokens"], "max_concurrency": slots, "max_retries": 0},
        "verification": "exact",
        "dedupe": {"enabled": False},
        "run": {"batch_size": variant["batch_size"], "dispatch": variant["dispatch"],
                "generate_replicas": variant["replicas"]},
    }
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


class VLLMMeter:
    """The simulator's /stats for a real vLLM: polls /metrics while a measurement runs."""

    def __init__(self, urls: list[str], slots: int) -> None:
        self.roots = [url.removesuffix("/v1") for url in urls]
        self.slots = slots
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.samples: list[tuple[float, float, float]] = []  # (time, running, generation tokens)

    def _read(self) -> tuple[float, float]:
        running = tokens = 0.0
        for root in self.roots:
            for line in httpx.get(f"{root}/metrics", timeout=30).text.splitlines():
                if line.startswith(("vllm:num_requests_running", "vllm:num_requests_waiting")):
                    running += float(line.rsplit(" ", 1)[1])
                elif line.startswith("vllm:generation_tokens_total"):
                    tokens += float(line.rsplit(" ", 1)[1])
        return running, tokens

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append((time.monotonic(), *self._read()))
            except httpx.HTTPError:
                self.errors += 1
            time.sleep(0.05)

    def reset(self) -> None:
        self.errors = 0
        self.start_tokens = self._read()[1]
        self.samples = []
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def stats(self) -> dict[str, Any]:
        self._stop.set()
        if self._thread:
            self._thread.join()
        total = self._read()[1] - self.start_tokens

        def reached(share: float) -> float:
            return next((t for t, _, tokens in self.samples if tokens - self.start_tokens >= share * total),
                        float("nan"))

        span = (reached(0.9) - reached(0.1)) / 0.8 if total else float("nan")
        return {"requests": self.requests, "completion_tokens": total, "span_s": span,
                "slots": self.slots * len(self.roots), "busy_slot_s": float("nan"), "peak_requests": 0,
                "samples": len(self.samples), "poll_errors": self.errors}

    requests = 0  # set by the caller: vLLM's /metrics has no per-run request count that survives a reset


METERS: dict[str, VLLMMeter] = {}


def sim_call(urls: list[str], action: str) -> list[dict[str, Any]]:
    meter = METERS.get(urls[0])
    if meter is not None:
        if action == "reset":
            meter.reset()
            return []
        return [meter.stats()]
    out = []
    for url in urls:
        root = url.removesuffix("/v1")
        response = httpx.post(f"{root}/stats/reset") if action == "reset" else httpx.get(f"{root}/stats")
        out.append(response.json())
    return out


def combine(stats: list[dict[str, Any]]) -> dict[str, Any]:
    """Several simulators' stats as one teacher: spans overlap, so use the longest."""
    span = max(s["span_s"] for s in stats) or float("nan")
    slots = sum(s["slots"] for s in stats)
    return {"requests": sum(s["requests"] for s in stats), "tokens": sum(s["completion_tokens"] for s in stats),
            "span_s": span, "utilisation": sum(s["busy_slot_s"] for s in stats) / (slots * span),
            "per_endpoint": [s["requests"] for s in stats], "peak_requests": sum(s["peak_requests"] for s in stats)}


MODEL = {"name": "sim-teacher", "prompt": PromptConfig(), "max_tokens": MAX_TOKENS}


async def raw_client(urls: list[str], prompts: list[str], in_flight: int) -> dict[str, Any]:
    """The ceiling: ``in_flight`` workers per endpoint, each sending its next request the moment one returns."""
    from openai import AsyncOpenAI

    clients = [AsyncOpenAI(base_url=url, api_key="EMPTY", max_retries=0, timeout=600) for url in urls]
    todo = deque(build_messages(MODEL["prompt"], p) for p in prompts)
    result = {"errors": 0, "tokens": 0}

    async def worker(client: AsyncOpenAI) -> None:
        while todo:
            messages = todo.popleft()
            try:
                reply = await client.chat.completions.create(model=MODEL["name"], messages=messages, n=1,
                                                            max_tokens=MODEL["max_tokens"], temperature=0.6,
                                                            top_p=0.95)
                result["tokens"] += reply.usage.completion_tokens
            except Exception:  # noqa: BLE001 - counted, the benchmark goes on
                result["errors"] += 1

    await asyncio.gather(*(worker(c) for c in clients for _ in range(in_flight)))
    for client in clients:
        await client.close()
    return result


def run_raw(urls: list[str], prompts: list[str], slots: int) -> dict[str, Any]:
    sim_call(urls, "reset")
    cpu, started = time.process_time(), time.monotonic()
    result = asyncio.run(raw_client(urls, prompts, slots))
    wall, cpu = time.monotonic() - started, time.process_time() - cpu
    return {**combine(sim_call(urls, "stats")), "wall_s": wall, "cpu_s": cpu, "errors": result["errors"]}


def run_pipeline(spec: Path, out: Path, log: Path, timeout: float) -> dict[str, Any]:
    urls = yaml.safe_load(spec.read_text())["teacher"]["base_url"]
    sim_call(urls, "reset")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    with log.open("w") as handle:
        proc = subprocess.run([sys.executable, "-m", "distill.cli", "run", str(spec), "--out", str(out)],
                              cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT, timeout=timeout,
                              env={**os.environ, "HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1"})
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"distill run failed ({proc.returncode}); log {log}:\n{tail}")
    stats = json.loads((out / "__meta__" / "stats.json").read_text())
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {**combine(sim_call(urls, "stats")), "wall_s": wall, "cpu_s": cpu,
            "rows": stats["samples"], "problems": stats["problems"]}


def report_line(name: str, r: dict[str, Any]) -> str:
    rps, tps = r["requests"] / r["span_s"], r["tokens"] / r["span_s"]
    spread = "/".join(map(str, r["per_endpoint"])) if len(r["per_endpoint"]) > 1 else ""
    return (f"  {name:<34} {r['wall_s']:8.1f} {r['span_s']:8.1f} {rps:9.1f} {tps:11.0f} "
            f"{r['utilisation']:6.1%} {r['peak_requests']:6d} {r['cpu_s']:7.1f}  {spread}")


def measure(slots: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    config = SimConfig(slots=slots, median_s=0.0 if args.instant else args.median, sigma=args.sigma,
                       cap_s=args.cap, seed=args.seed)
    source = (lab_problems if args.real_vllm else write_problems)(work / f"problems-{args.requests}.jsonl",
                                                                   args.requests)
    prompts = problems(source)
    with contextlib.ExitStack() as stack:
        if args.real_vllm:
            urls = stack.enter_context(real_vllm(args, slots, work))
            print(f"\nslots={slots} x {args.endpoints} real vLLM server(s) of {args.model}, {args.requests} "
                  f"requests, max_tokens {MODEL['max_tokens']}")
        else:
            urls = [stack.enter_context(spawn(config)) for _ in range(args.endpoints)]
            print(f"\nslots={slots} x {args.endpoints} endpoint(s), {args.requests} requests, "
                  + ("instant teacher" if args.instant else
                     f"sequence time log-normal median {args.median}s sigma {args.sigma} cap {args.cap}s"))
        print(f"  {'':<34} {'wall_s':>8} {'span_s':>8} {'req/s':>9} {'tokens/s':>11} {'util':>6} {'peak':>6} "
              f"{'cpu_s':>7}")
        rounds = []
        for round_no in range(args.repeat):
            # Raw and pipeline take turns, so a burst of load from elsewhere hits one round, not one side.
            raw = run_raw(urls, prompts, slots)
            print(report_line(f"(a) raw client, {slots}/endpoint in flight", raw), flush=True)
            runs = {}
            for text in args.variants:
                variant = parse_variant(text, args.batch_size)
                case = work / f"{slots}-{round_no}-{text.replace(':', '_').replace(',', '_').replace('=', '')}"
                case.mkdir()
                spec = write_spec(case / "spec.yaml", source, urls, slots, variant)
                result = run_pipeline(spec, case / "out", case / "distill.log", args.timeout)
                if result["problems"] != args.requests:
                    raise RuntimeError(f"{text}: wrote {result['problems']} problems, expected {args.requests}")
                result["ratio"] = raw["span_s"] / result["span_s"]
                result["ratio_end_to_end"] = raw["wall_s"] / result["wall_s"]
                runs[text] = result
                print(report_line(f"(b) distill run [{text}]", result)
                      + f"  b/a {result['ratio']:.3f} (end-to-end {result['ratio_end_to_end']:.3f})", flush=True)
            rounds.append({"raw": raw, "pipeline": runs})
        if args.repeat > 1:
            for text in args.variants:
                ratios = sorted(r["pipeline"][text]["ratio"] for r in rounds)
                print(f"  [{text}] b/a over {args.repeat} rounds: median {statistics.median(ratios):.3f}, "
                      f"min {ratios[0]:.3f}, max {ratios[-1]:.3f}", flush=True)
    return {"slots": slots, "endpoints": args.endpoints, "requests": args.requests, "instant": args.instant,
            "rounds": rounds}


@contextlib.contextmanager
def real_vllm(args: argparse.Namespace, slots: int, work: Path) -> Any:
    """vLLM servers of the lab teacher (or --model), started as `distill serve` starts them; yields their URLs."""
    from distill.serve.server import ServeConfig, free_port, start_servers
    from lab.tasks import SYSTEM_PROMPT

    MODEL.update(name="bench-teacher", prompt=PromptConfig(system=SYSTEM_PROMPT), max_tokens=64)
    cfg = ServeConfig(model=str(args.model), name="bench-teacher", port=free_port(), replicas=args.endpoints,
                      max_num_seqs=slots, dtype="float32", max_model_len=1024, log_dir=work / "vllm-logs")
    servers = start_servers(cfg)
    urls = [s.base_url for s in servers]
    meter = VLLMMeter(urls, slots)
    meter.requests = args.requests
    METERS[urls[0]] = meter
    try:
        yield urls
    finally:
        METERS.pop(urls[0], None)
        for server in servers:
            server.stop()


def lab_problems(path: Path, count: int) -> Path:
    from lab.tasks import problems as lab_rows

    with path.open("w") as handle:
        for row in lab_rows(count, seed=11):
            handle.write(json.dumps(row) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slots", type=int, nargs="+", default=[64, 256], help="simulated sequences per endpoint")
    parser.add_argument("--requests", type=int, default=2560)
    parser.add_argument("--endpoints", type=int, default=1, help="simulated teacher replicas")
    parser.add_argument("--variants", nargs="+", default=["window"],
                        help="generation variants: window, batch, batch:replicas=4, window:batch_size=256")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--median", type=float, default=0.37, help="median sequence time (s)")
    parser.add_argument("--sigma", type=float, default=1.3, help="log-normal shape")
    parser.add_argument("--cap", type=float, default=8.0, help="longest sequence (s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--instant", action="store_true", help="instant teacher: the pipeline's own overhead")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of (a) then (b), for a noisy machine")
    parser.add_argument("--timeout", type=float, default=1800, help="per distill run (s)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--real-vllm", action="store_true", help="a real vLLM server (.venv-vllm) as the teacher")
    parser.add_argument("--model", type=Path, default=ROOT / "out" / "bench" / "lab-teacher",
                        help="--real-vllm: the model to serve (default: the lab teacher, trained on first use)")
    args = parser.parse_args(argv)
    if args.real_vllm and not (args.model / "config.json").exists():
        from lab.teacher import train_teacher

        print(f"training the lab teacher into {args.model} (about a minute) ...", flush=True)
        train_teacher(args.model)
    results = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-throughput-") as tmp:
            for slots in args.slots:
                results.append(measure(slots, args, Path(tmp)))
    except (RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
        print(f"error: the benchmark could not run: {exc}", file=sys.stderr)
        return 1
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
