"""Precision and recall of benchmark decontamination on data written for this project (no downloads).

A seeded generator writes grade-school word problems the way GSM8K reads: each is three sentences from templates
with names, items and numbers, and most end in one of eight stock questions ("How much money will she have left
over?") that recur across problems exactly as in GSM8K. A benchmark of 300 such problems and a source of 1,500
clean problems are drawn; 60 source problems are leaks planted from benchmark problems, 12 of each kind:
``verbatim``, ``embedded`` (inside a longer text), ``renamed`` (one name changed and a sentence added),
``reworded`` (synonyms and the first two sentences swapped), ``renumbered`` (every number changed).

Every flagged pair is labelled by construction (a flag is right when it names the benchmark problem the leak was
planted from), which is what reading every pair would give; ``--show N`` prints N flagged pairs of each rule for
reading. Reproduce the table in docs/decontamination.md with:

    .venv/bin/python bench/decontamination.py            # --json out/decontamination.json, --show 5
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines.filters.decontaminate import NgramIndex  # noqa: E402

NAMES = ("Alice Ben Carla Dev Emma Farid Grace Hugo Ines Jamal Kira Liam Maya Noah Olga Pablo Quinn Rosa Sami Tara "
         "Umar Vera Wes Xena Yusuf Zoe Aria Bilal Chen Dana Eli Fatma Gus Hana Ivan Jade Kofi Lena Milo Nina").split()
ITEMS = ("apples pencils stickers cupcakes marbles books candles cookies shells stamps balloons crayons muffins "
         "buttons cards flowers tickets ribbons bottles lemons oranges plums peaches rocks coins dolls kites "
         "socks hats mugs bagels pies jars boxes bricks nails gloves scarves").split()
PLACES = "market bakery fair library garage shop mall school park farm harbor museum zoo cafe station".split()
JOBS = "tutor cashier painter gardener driver baker nurse clerk lifeguard waiter".split()
TEMPLATES = [
    "{n1} buys {a} {i1} at the {p}.", "Each of the {i1} costs {b} dollars.", "{n1} gives {c} of them to {n2}.",
    "{n2} already had {d} {i2} at home.", "The {p} sells {i2} in packs of {a}.", "{n1} works {a} hours as a {j}.",
    "{n1} earns {b} dollars per hour.", "A bus to the {p} takes {a} minutes.", "{n2} saves {b} dollars every week.",
    "{n1} bakes {a} trays with {c} {i1} on each.", "Half of the {i1} are sold by noon.",
    "{n2} collects {d} {i2} on Monday and {c} more on Tuesday.", "The price drops by {b} percent on Friday.",
    "{n1} splits the {i2} among {c} friends.", "There are {a} boxes with {d} {i1} inside each box.",
    "{n2} spends {c} dollars on lunch at the {p}.", "On Sunday {n1} walks {a} miles to the {p}.",
    "{n1} has {d} dollars in a piggy bank.", "A {j} charges {b} dollars for each visit.",
    "{n2} reads {a} pages a day for {c} days.", "The {p} opens at {a} and closes {c} hours later.",
    "{n1} loses {c} of the {i1} on the way home.", "{n2} paints {a} fences in {c} days.",
    "Every {i2} weighs {b} grams.", "{n1} fills {a} jars with {d} {i2} each.",
]
STOCK = [
    "How much money will she have left over?", "How many more does she need to buy to reach her goal?",
    "What is the total number of hours he worked this week?",
    "If the rest are split equally, how many does each friend get?",
    "How many dollars did he spend in all at the store?", "Express your answer as a whole number of dollars.",
    "How long, in minutes, will the whole trip take?", "What percentage of the original amount is left at the end?",
]
SYNONYMS = {"buys": "purchases", "gives": "hands", "dollars": "bucks", "each": "every", "already": "previously",
            "sells": "offers", "works": "spends", "earns": "makes", "takes": "needs", "saves": "puts aside",
            "bakes": "makes", "collects": "gathers", "spends": "pays", "walks": "hikes", "reads": "goes through",
            "loses": "drops", "paints": "coats", "fills": "packs", "boxes": "crates", "home": "the house",
            "friends": "pals", "trays": "sheets", "price": "cost", "how": "just how", "total": "overall"}
KINDS = ("verbatim", "embedded", "renamed", "reworded", "renumbered")


def problem(rng: random.Random) -> str:
    slots = {"n1": rng.choice(NAMES), "n2": rng.choice(NAMES), "i1": rng.choice(ITEMS), "i2": rng.choice(ITEMS),
             "p": rng.choice(PLACES), "j": rng.choice(JOBS), "a": rng.randint(2, 60), "b": rng.randint(2, 99),
             "c": rng.randint(2, 12), "d": rng.randint(5, 200)}
    sentences = [t.format(**slots) for t in rng.sample(TEMPLATES, 3)]
    ending = rng.choice(STOCK) if rng.random() < 0.7 else f"How many {slots['i1']} does {slots['n1']} have now?"
    return " ".join([*sentences, ending])


def plant(text: str, kind: str, rng: random.Random) -> str:
    sentences = re.split(r"(?<=[.?!])\s+", text)
    if kind == "verbatim":
        return text
    if kind == "embedded":
        return f"Here is a practice question from last year. {text} Show your work step by step."
    if kind == "renamed":
        name = next((w for w in text.split() if w in NAMES), None)
        return (text.replace(name, rng.choice([n for n in NAMES if n != name])) if name else text) + \
            " Round to the nearest whole number."
    if kind == "reworded":
        sentences[0], sentences[1] = sentences[1], sentences[0]
        words = " ".join(sentences).split()
        return " ".join(SYNONYMS.get(w.lower(), w) if w.lower() in SYNONYMS else w for w in words)
    if kind == "renumbered":
        return re.sub(r"\d+", lambda m: str(int(m.group(0)) + rng.randint(1, 9)), text)
    raise ValueError(kind)


def make_data(seed: int = 0, benchmark_size: int = 300, clean: int = 1500, per_kind: int = 12
              ) -> tuple[list[str], list[dict[str, Any]]]:
    """The benchmark texts and the source rows: ``{"problem", "leak_of" (benchmark row or None), "kind"}``."""
    rng = random.Random(seed)
    benchmark = list(dict.fromkeys(problem(rng) for _ in range(benchmark_size)))
    source = [{"problem": problem(rng), "leak_of": None, "kind": "clean"} for _ in range(clean)]
    targets = rng.sample(range(len(benchmark)), per_kind * len(KINDS))
    for k, kind in enumerate(KINDS):
        for row in targets[k * per_kind:(k + 1) * per_kind]:
            source.append({"problem": plant(benchmark[row], kind, rng), "leak_of": row, "kind": kind})
    rng.shuffle(source)
    return benchmark, source


RULES: dict[str, dict[str, Any]] = {
    "open-r1: any shared 8-gram": {"n": 8},
    "8-grams, stock phrases skipped (max_df 0.005)": {"n": 8, "max_df": 0.005},
    "8-grams, overlap >= 0.3": {"n": 8, "min_overlap": 0.3},
    "8-grams, max_df 0.005 + overlap >= 0.3": {"n": 8, "max_df": 0.005, "min_overlap": 0.3},
    "8-grams, max_df 0.005 + overlap >= 0.5": {"n": 8, "max_df": 0.005, "min_overlap": 0.5},
    "5-grams, max_df 0.005 + overlap >= 0.3 (default)": {"n": 5, "max_df": 0.005, "min_overlap": 0.3},
    "5-grams, max_df 0.005 + overlap >= 0.2": {"n": 5, "max_df": 0.005, "min_overlap": 0.2},
}


def measure(benchmark: list[str], source: list[dict[str, Any]], rule: dict[str, Any]) -> dict[str, Any]:
    index = NgramIndex(rule["n"], rule.get("max_df"), rule.get("min_overlap", 0.0), rule.get("min_shared"))
    index.add("bench", benchmark)
    flagged, right, pairs = 0, 0, []
    found = {kind: 0 for kind in KINDS}
    for row in source:
        hit = index.match(row["problem"])
        if hit is None:
            continue
        flagged += 1
        correct = row["leak_of"] == hit.benchmark_index
        right += correct
        if correct:
            found[row["kind"]] += 1
        pairs.append({"problem": row["problem"], "benchmark_problem": hit.benchmark_problem, "ngram": hit.ngram,
                      "overlap": hit.overlap, "leak": correct})
    planted = sum(1 for r in source if r["leak_of"] is not None)
    per_kind = sum(1 for r in source if r["kind"] == KINDS[0])
    return {"flagged": flagged, "true_flags": right, "precision": round(right / flagged, 3) if flagged else None,
            "recall": round(sum(found.values()) / planted, 3),
            "recall_by_kind": {k: f"{v}/{per_kind}" for k, v in found.items()}, "pairs": pairs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--show", type=int, default=3, help="flagged pairs to print per rule")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    benchmark, source = make_data(args.seed)
    print(f"benchmark {len(benchmark)} problems; source {len(source)} problems, "
          f"{sum(r['leak_of'] is not None for r in source)} planted leaks ({', '.join(KINDS)})\n")
    print("| rule | flagged | precision | recall | " + " | ".join(KINDS) + " |")
    print("|---|---|---|---|" + "---|" * len(KINDS))
    results = {}
    for name, rule in RULES.items():
        result = measure(benchmark, source, rule)
        results[name] = {k: v for k, v in result.items() if k != "pairs"}
        print(f"| {name} | {result['flagged']} | {result['precision']} | {result['recall']} | "
              + " | ".join(result["recall_by_kind"].values()) + " |")
        results[name]["sample"] = result["pairs"][:args.show]
    for name, result in results.items():
        print(f"\n{name}: {args.show} flagged pairs")
        for pair in result["sample"]:
            print(f"  [{'leak' if pair['leak'] else 'FALSE'}] overlap {pair['overlap']} shared `{pair['ngram']}`\n"
                  f"    problem:   {pair['problem']}\n    benchmark: {pair['benchmark_problem']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
