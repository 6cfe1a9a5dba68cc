"""How good a lab teacher recipe is, before a lab run depends on it (docs/lab.md: why the teacher is 600 steps).

    python -m lab.teacher_probe OUT_DIR --steps 600 [--problems 100] [--threads 2]

Trains the demo's teacher recipe (addition, level 2, corrupt 0.1, seed 0) into OUT_DIR, then samples 4 answers per
held-out problem in-process (transformers, T = 0.6, seed 0) and prints held-out pass@1 (the last \\boxed{} against
gold).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--problems", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lab.tasks import SYSTEM_PROMPT, problems
    from lab.teacher import train_teacher

    torch.set_num_threads(args.threads)
    train_teacher(args.out, steps=args.steps, seed=0, task="addition", levels=[2], corrupt=0.1)
    print("trained", json.loads((args.out / "lab.json").read_text())["final_loss"])
    tokenizer = AutoTokenizer.from_pretrained(args.out)
    model = AutoModelForCausalLM.from_pretrained(args.out).eval()
    torch.manual_seed(0)
    right = total = 0
    for row in problems(args.problems, 0, held_out=True, task="addition", level=2):
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": row["question"]}]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
        ids = ids if isinstance(ids, torch.Tensor) else ids["input_ids"]
        with torch.no_grad():
            out = model.generate(ids.repeat(4, 1), do_sample=True, temperature=0.6, max_new_tokens=64, top_k=0,
                                 top_p=1.0)
        for sample in out:
            boxed = re.findall(r"\\boxed\{([^}]*)\}", tokenizer.decode(sample[ids.shape[1]:], skip_special_tokens=True))
            right += bool(boxed) and boxed[-1].strip() == str(row["answer"]).strip()
            total += 1
    print(f"held-out pass@1 {right / total:.3f} over {total} samples ({args.steps} steps)")


if __name__ == "__main__":
    main()
