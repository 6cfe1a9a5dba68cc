"""Cost of the KD teacher-scoring pass against generation, on a real vLLM server (CPU build here).

One server of the lab's tiny teacher (or ``--model``). (a) ``distill run`` generates ``--problems`` x
``--samples`` traces with top-k logprobs; its ``stats.json`` wall time is the generation cost. (b) ``distill export
--format kd`` twice on the same folder: from the run's own logprobs (no teacher; the baseline: reading, tokenising,
writing) and with ``--teacher-url`` (one ``prompt_logprobs`` prefill per trace). The difference is the scoring
pass. Both are printed per 1,000 traces, with scoring / generation.

    .venv/bin/python bench/kd_scoring.py --problems 200 --samples 4 --top-k 5
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from distill.serve.server import ServeConfig, free_port, start_servers  # noqa: E402
from lab.tasks import SYSTEM_PROMPT, problems  # noqa: E402


def distill(*args: str) -> float:
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "distill.cli", *args], cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"error: distill {args[0]} failed: {result.stderr.strip()[-500:]}")
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", type=int, default=200)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--slots", type=int, default=32)
    parser.add_argument("--model", type=Path, default=ROOT / "out" / "bench" / "lab-teacher")
    args = parser.parse_args()
    if not (args.model / "config.json").exists():
        from lab.teacher import train_teacher

        print(f"training the lab teacher into {args.model} ...", flush=True)
        train_teacher(args.model)
    with tempfile.TemporaryDirectory(prefix="bench-kd-") as tmp:
        work = Path(tmp)
        cfg = ServeConfig(model=str(args.model), name="bench-teacher", port=free_port(), max_num_seqs=args.slots,
                          dtype="float32", max_model_len=1024, log_dir=work / "logs")
        (server,) = start_servers(cfg)
        try:
            source = work / "problems.jsonl"
            source.write_text("".join(json.dumps(r) + "\n" for r in problems(args.problems, seed=21)))
            spec = {"name": "kdbench", "source": {"path": str(source), "problem_field": "question",
                                                  "answer_field": "answer"},
                    "prompt": {"system": SYSTEM_PROMPT}, "verification": "none", "dedupe": {"enabled": False},
                    "teacher": {"model": "bench-teacher", "base_url": server.base_url, "num_samples": args.samples,
                                "max_new_tokens": 64, "top_logprobs": args.top_k, "max_concurrency": args.slots,
                                "temperature": 1.0}}
            (work / "spec.yaml").write_text(yaml.safe_dump(spec))
            distill("run", str(work / "spec.yaml"), "--out", str(work / "out"))
            stats = json.loads((work / "out" / "__meta__" / "stats.json").read_text())
            common = ["export", str(work / "out"), "--format", "kd", "--student", str(args.model)]
            baseline = distill(*common, "--out", str(work / "from-run"))
            scored = distill(*common, "--out", str(work / "scored"), "--teacher-url", server.base_url,
                             "--teacher-model", "bench-teacher")
        finally:
            server.stop()
        rows = json.loads((work / "scored" / "export.json").read_text())["rows"]
    per_k = 1000 / rows
    generation, scoring = stats["wall_time_s"] * per_k, (scored - baseline) * per_k
    print(f"{rows} traces ({stats['samples']} samples, {stats['tokens']['completion_mean']} tokens each on average), "
          f"top-{args.top_k}, {args.slots} slots, model {args.model.name}")
    print(f"  generation (distill run)            {generation:8.1f} s per 1k traces")
    print(f"  export from the run's logprobs      {baseline * per_k:8.1f} s per 1k traces (baseline)")
    print(f"  export with the scoring pass        {scored * per_k:8.1f} s per 1k traces")
    print(f"  scoring pass alone                  {scoring:8.1f} s per 1k traces; scoring / generation "
          f"{scoring / generation:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
