"""Seeded task families with verifiable answers and real step structure, for the distillation lab.

``addition``: multi-digit addition worked column by column, one thought step per column (``7 + 8 = 15, carry
1.``); the level is the number of digits (more is harder). The gold answer is the sum, in ``\\boxed{}``.

``dictation``: voice-keyboard clean-up. A clean sentence is spoken with fillers, stutters, restarts, "no sorry X"
self-corrections and spoken punctuation; the thought has one step per fix and the answer is the clean text. The
level is the number of disfluencies.

Every example can be *corrupted* on purpose (one wrong step, and an answer that follows from it): an imperfect
teacher trained on a share of such examples gives rejection sampling and the PRM real work. The train and
held-out splits draw from disjoint seed streams, and a held-out problem never occurs in the train split.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

THOUGHT_TAGS = {"thought": ("<thought>", "</thought>"), "think": ("<think>", "</think>")}
SYSTEM_PROMPT = "Add the numbers column by column inside <thought>...</thought>, then give the sum in \\boxed{}."
DICTATION_PROMPT = ("Clean up the dictation: fix each disfluency in one step inside <thought>...</thought>, "
                    "then write the clean text.")


@dataclass(frozen=True)
class Example:
    problem: str
    answer: str
    solution: str  # the assistant turn: thought block, blank line, answer
    corrupted: bool = False


def _wrap(tag: str, steps: list[str], answer: str) -> str:
    open_, close = THOUGHT_TAGS[tag]
    return f"{open_}\n" + "\n".join(steps) + f"\n{close}\n\n{answer}"


# --- addition -------------------------------------------------------------------------------------------------

def addition_steps(a: int, b: int, wrong_column: int | None = None, delta: int = 1) -> tuple[list[str], int]:
    """One step per column, least significant first, with the carry spelled out, and the sum those steps give.
    ``wrong_column`` makes that column's total off by ``delta`` (and every later step follows from it)."""
    steps, carry, digits = [], 0, []
    da, db = str(a)[::-1], str(b)[::-1]
    for i in range(max(len(da), len(db))):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        total = x + y + carry
        if i == wrong_column:
            total = total + delta if total + delta >= 0 else total + 1
        terms = f"{x} + {y}" + (f" + {carry}" if carry else "")
        carry = total // 10
        digits.append(total % 10)
        steps.append(f"{terms} = {total}" + (f", carry {carry}." if carry else "."))
    if carry:
        steps.append(f"carry {carry} in front.")
        digits.append(carry)
    return steps, int("".join(map(str, reversed(digits))))


def addition(rng: random.Random, digits: int = 2, tag: str = "thought", corrupt: bool = False) -> Example:
    low, high = 10 ** (digits - 1), 10 ** digits - 1
    a, b = rng.randint(low, high), rng.randint(low, high)
    wrong, delta = (rng.randrange(digits), rng.choice((-1, 1))) if corrupt else (None, 0)
    steps, total = addition_steps(a, b, wrong, delta)
    return Example(f"{a} + {b}", str(a + b), _wrap(tag, steps, f"\\boxed{{{total}}}"), corrupted=corrupt)


# --- dictation ------------------------------------------------------------------------------------------------

SUBJECTS = ["i", "we", "they", "my sister", "the team", "our manager", "my dad", "the driver", "you", "she"]
VERBS = ["will meet", "need to call", "should send", "can pick up", "want to see", "have to email", "will bring",
         "forgot to book", "must visit", "could help"]
OBJECTS = ["sarah", "the report", "the kids", "dinner", "the tickets", "a taxi", "the doctor", "our clients",
           "the new laptop", "grandma"]
TIMES = ["at five", "at noon", "on monday", "on friday", "tomorrow morning", "after lunch", "before ten",
         "next week", "tonight", "at nine"]
FILLERS = ["um", "uh", "like", "you know"]
PUNCTUATION = {",": "comma", ".": "period", "?": "question mark"}


def _clean_sentence(rng: random.Random) -> tuple[list[str], dict[str, tuple[int, list[str]]]]:
    """Words of a clean sentence, punctuation as separate items (',' '.' '?'), and where its object and time
    phrases start (the slots a self-correction can replace)."""
    subject, verb = rng.choice(SUBJECTS).split(), rng.choice(VERBS).split()
    obj, time = rng.choice(OBJECTS).split(), rng.choice(TIMES).split()
    if rng.random() < 0.3:  # "after lunch, we will meet sarah."
        words = [*time, ",", *subject, *verb, *obj, "."]
        return words, {"time": (0, time), "object": (len(time) + 1 + len(subject) + len(verb), obj)}
    words = [*subject, *verb, *obj, *time, "?" if rng.random() < 0.2 else "."]
    return words, {"object": (len(subject) + len(verb), obj), "time": (len(subject) + len(verb) + len(obj), time)}


def _written(words: list[str]) -> str:
    text = " ".join("I" if w == "i" else w for w in words)
    for mark in PUNCTUATION:
        text = text.replace(f" {mark}", mark)
    return text[:1].upper() + text[1:]


def dictation(rng: random.Random, level: int = 2, tag: str = "thought", corrupt: bool = False) -> Example:
    """A spoken version of a clean sentence with ``level`` disfluencies, and the clean-up worked step by step:
    one step per fix in the order they occur, then the spoken punctuation, then capitalisation."""
    clean, slots = _clean_sentence(rng)
    words_at = [i for i, w in enumerate(clean) if w not in PUNCTUATION]
    edits: list[tuple[int, str, list[str], str]] = []  # (before clean index, kind, spoken words inserted, step)
    correction: tuple[list[str], list[str], int] | None = None  # (wrong, right, start)
    for kind in rng.sample(["filler", "stutter", "correction", "restart", "filler"], k=min(level, 5)):
        if kind == "filler":
            filler = rng.choice(FILLERS)
            edits.append((rng.choice(words_at[1:]), kind, filler.split(), f'remove filler "{filler}".'))
        elif kind == "stutter":
            i = rng.choice(words_at)
            edits.append((i, kind, [clean[i]], f'remove repeated "{clean[i]}".'))
        elif kind == "restart":  # "we will i mean we will meet …"
            head = clean[:1] if clean[1] in PUNCTUATION else clean[:2]
            said = [*head, "i", "mean"]
            edits.append((0, kind, said, f'drop the restart "{" ".join(said)}".'))
        else:  # "… at four no sorry at five": the wrong phrase first
            slot = rng.choice(sorted(slots))
            start, right = slots[slot]
            pool = TIMES if slot == "time" else OBJECTS
            wrong = rng.choice([t for t in pool if t.split() != right]).split()
            correction = (wrong, right, start)
            edits.append((start, kind, [*wrong, "no", "sorry"],
                          f'"no sorry" replaces "{" ".join(wrong)}" with "{" ".join(right)}".'))
    edits.sort(key=lambda e: e[0])
    spoken, steps = [], []
    for position, word in enumerate(clean):
        for index, _, inserted, step in edits:
            if index == position:
                spoken.extend(inserted)
                steps.append(step)
        spoken.append(PUNCTUATION.get(word, word))
    steps.extend(f'"{PUNCTUATION[w]}" is "{w}".' for w in clean if w in PUNCTUATION)
    steps.append("capitalise the sentence.")
    answer = list(clean)
    if corrupt and correction is not None:  # the self-correction read the wrong way round
        wrong, right, start = correction
        answer[start:start + len(right)] = wrong
        i = next(i for i, s in enumerate(steps) if s.startswith('"no sorry"'))
        steps[i] = f'"no sorry" keeps "{" ".join(wrong)}".'
    elif corrupt:  # the first fix forgotten: its words stay in the answer
        index, _, inserted, step = edits[0]
        answer[index:index] = inserted
        steps.remove(step)
    return Example(" ".join(spoken), _written(clean), _wrap(tag, steps, _written(answer)), corrupted=corrupt)


# --- the registry the lab and the CLI use ---------------------------------------------------------------------

@dataclass(frozen=True)
class Task:
    name: str
    make: Callable[..., Example]
    system_prompt: str
    default_level: int
    verification: str  # the spec's verification method for this task's answers


TASKS = {
    "addition": Task("addition", addition, SYSTEM_PROMPT, 2, "math"),
    "dictation": Task("dictation", dictation, DICTATION_PROMPT, 2, "exact"),
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"--task: {name!r} is not one of {', '.join(TASKS)}")
    return TASKS[name]


def examples(task: str, n: int, seed: int, level: int | None = None, tag: str = "thought", corrupt: float = 0.0,
             held_out: bool = False) -> list[Example]:
    """``n`` seeded examples of the train or held-out stream; a share ``corrupt`` of them with one wrong step."""
    spec = get_task(task)
    level = spec.default_level if level is None else level
    split = "held-out" if held_out else "train"
    rng = random.Random(f"{split}-{seed}-{level}" if task == "addition" else f"{task}-{split}-{seed}-{level}")
    return [spec.make(rng, level, tag, corrupt=corrupt > 0 and rng.random() < corrupt) for _ in range(n)]


TRAIN_WINDOW = 5000  # held-out problems never occur among the train split's first TRAIN_WINDOW


def problems(n: int, seed: int, digits: int = 2, held_out: bool = False, task: str = "addition",
             level: int | None = None) -> list[dict[str, str]]:
    """``n`` problems as source rows (question, answer). The held-out split draws from a disjoint seed stream and
    skips any problem the train split's first ``TRAIN_WINDOW`` hold (small levels repeat problems)."""
    level = digits if level is None else level
    if not held_out:
        return [{"question": ex.problem, "answer": ex.answer} for ex in examples(task, n, seed, level)]
    seen = {ex.problem for ex in examples(task, TRAIN_WINDOW, seed, level)}
    rows: list[dict[str, str]] = []
    for ex in examples(task, 20 * n + 100, seed, level, held_out=True):
        if ex.problem not in seen:
            seen.add(ex.problem)
            rows.append({"question": ex.problem, "answer": ex.answer})
            if len(rows) == n:
                return rows
    raise ValueError(f"--n: only {len(rows)} held-out {task} problems of level {level} are unseen; ask for fewer")
