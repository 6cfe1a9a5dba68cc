"""Why SFT's pass@1 spreads so far over seeds, and which student recipe fits on every seed (docs/lab.md).

The lab's SFT students split by seed (sd 27-39 points) and their final training loss ranks them the same way: the
low seeds have not fit their own training data when the cosine schedule ends. This probe trains SFT, from a
finished lab run's own files (its SFT export of the verified traces, its teacher, its random inits), under a few
recipes per seed, and measures each student's final training loss and held-out pass@1 in-process (transformers,
the lab's held-out problems, 4 samples each at T = 0.6, one seeded batch per model):

- ``base``: the lab's recipe (1,000 Axolotl steps, micro-batch 32, lr 3e-3 cosine, 10 warmup steps);
- ``steps3k``: the same for 3,000 steps (is it only slow?);
- ``wide``: a student of hidden 128 (the teacher's width, 2 heads of 64, intermediate 256), 1,000 steps;
- ``mid``: a student of hidden 96 (2 heads of 48, intermediate 192), 1,000 steps.

    python -m lab.sft_probe --lab out/lab/onpolicy --seeds 1 3 --recipes base steps3k mid wide --out out/lab/sft-probe
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
from pathlib import Path
from typing import Any

from lab.config import student_overrides
from lab.probe import DISTILL, ROOT, train_student

WIDE = {"hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 2, "num_key_value_heads": 1}
MID = {"hidden_size": 96, "intermediate_size": 192, "num_attention_heads": 2, "num_key_value_heads": 1}
# name: (student shape over lab.teacher.STUDENT_SHAPE, steps, learning rate, micro-batch)
RECIPES: dict[str, tuple[dict[str, int], int, float, int]] = {
    "base": ({}, 1000, 3e-3, 32),
    "steps3k": ({}, 3000, 3e-3, 32),
    "wide": (WIDE, 1000, 3e-3, 32),
    "mid": (MID, 1000, 3e-3, 32),
}


def init(lab: Path, out: Path, shape: dict[str, int], seed: int) -> Path:
    """The lab run's own init for its shape; another shape gets a fresh init of that seed (`distill lab student`)."""
    if not shape:
        return lab / "students" / f"init-s{seed}"
    folder = out / "inits" / ("-".join(f"{k}{v}" for k, v in sorted(shape.items())) + f"-s{seed}")
    subprocess.run([*DISTILL, "lab", "student", "--teacher", str(lab / "teacher"), "--seed", str(seed), "--out",
                    str(folder), *(a for k, v in shape.items() for a in ("--shape", f"{k}={v}"))],
                   cwd=ROOT, check=True, capture_output=True, text=True)
    return folder


def train(name: str, export: Path, student: Path, out: Path, seed: int, steps: int, lr: float,
          batch: int) -> dict[str, Any]:
    """Render with `distill config sft` as the lab does, train with Axolotl; the losses it logged."""
    return train_student("sft", f"{name}-s{seed}", export, student, out, student_overrides(steps, batch, lr, seed))


def pass_at_1(model_dir: Path, problems: int, samples: int, temperature: float, max_new_tokens: int) -> float:
    """Held-out pass@1 in-process: the last \\boxed{} of each sample against gold, seed 0."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lab.tasks import SYSTEM_PROMPT
    from lab.tasks import problems as held_out_problems

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    rows = list(held_out_problems(problems, 0, held_out=True, task="addition", level=2))
    prompts = [tokenizer.apply_chat_template([{"role": "system", "content": SYSTEM_PROMPT},
                                              {"role": "user", "content": r["question"]}],
                                             add_generation_prompt=True, tokenize=False) for r in rows]
    batch = tokenizer([p for p in prompts for _ in range(samples)], return_tensors="pt", padding=True,
                      add_special_tokens=False)
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.generate(**batch, do_sample=True, temperature=temperature, max_new_tokens=max_new_tokens,
                             top_k=0, top_p=1.0, pad_token_id=tokenizer.pad_token_id)
    right = 0
    for i, sample in enumerate(out):
        text = tokenizer.decode(sample[batch["input_ids"].shape[1]:], skip_special_tokens=True)
        boxed = re.findall(r"\\boxed\{([^}]*)\}", text)
        right += bool(boxed) and boxed[-1].strip() == str(rows[i // samples]["answer"]).strip()
    return right / len(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lab", type=Path, required=True, help="a finished lab run (exports/, students/, teacher/)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--recipes", nargs="+", default=["base", "steps3k", "mid", "wide"], choices=list(RECIPES))
    parser.add_argument("--problems", type=int, default=200)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("out/lab/sft-probe"))
    args = parser.parse_args()

    export = args.lab / "exports" / "sft-filtered"
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[int, dict[str, Any]]] = {}
    for recipe in args.recipes:
        shape, steps, lr, batch = RECIPES[recipe]
        for seed in args.seeds:
            record = train(recipe, export, init(args.lab, args.out, shape, seed), args.out, seed, steps, lr, batch)
            scored = args.out / f"{recipe}-s{seed}" / "probe-pass1.json"
            if not scored.exists():
                scored.write_text(json.dumps({"pass1": pass_at_1(args.out / f"{recipe}-s{seed}", args.problems,
                                                                  args.samples, 0.6, 64)}) + "\n")
            record["pass1"] = json.loads(scored.read_text())["pass1"]
            results.setdefault(recipe, {})[seed] = record
            print(f"  {recipe}-s{seed}: final loss {record['final_loss']:.4f}, pass@1 {100 * record['pass1']:.1f}",
                  flush=True)
    lines = ["| recipe | pass@1 mean (sd) | per seed | final train loss per seed |", "|---|---|---|---|"]
    for recipe, seeds in results.items():
        scores = [100 * r["pass1"] for r in seeds.values()]
        sd = statistics.stdev(scores) if len(scores) > 1 else 0.0
        lines.append(f"| {recipe} | {statistics.mean(scores):.1f} ({sd:.1f}) | "
                     + ", ".join(f"{s:.1f}" for s in scores) + " | "
                     + ", ".join(f"{r['final_loss']:.3f}" for r in seeds.values()) + " |")
    table = "\n".join(lines) + "\n"
    (args.out / "probe.md").write_text(table, encoding="utf-8")
    (args.out / "probe.json").write_text(json.dumps(results, indent=2) + "\n")
    print(table)


if __name__ == "__main__":
    main()
