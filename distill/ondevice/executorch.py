"""The factory's side of the ExecuTorch target: run ``executorch_runtime`` in ``.venv-ondevice``, check the ``.pte``.

ExecuTorch 1.5.1 pins ``torchao>=0.18,<0.19`` (the factory and Axolotl's QAT use 0.17.0) and optimum-executorch
1.1.0 pins ``transformers==5.0.0rc1``, so the runtime has its own venv (``make setup-ondevice``), as vLLM does.
The check prompts are formatted and tokenized here; the ``.pte``'s greedy tokens are compared with the fp32
checkpoint's greedy tokens from transformers, position by position.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from distill.ondevice.executorch_runtime import RESULT
from pipelines.spec import SpecError

ROOT = Path(__file__).resolve().parents[2]
VENV_ONDEVICE = ROOT / ".venv-ondevice"
SCHEMES = {"int4": "8da4w", "int8": "8da8w", "fp32": "fp32"}  # --quantize → ExecuTorch's name for the scheme


def ondevice_python() -> Path:
    python = VENV_ONDEVICE / "bin" / "python"
    if not python.exists():
        raise SpecError("--target executorch: the runtime is not installed; run `make setup-ondevice` "
                        "(creates .venv-ondevice with executorch)")
    return python


def run_runtime(*args: str | Path, timeout: float = 3600) -> dict[str, Any]:
    """``python -m distill.ondevice.executorch_runtime ARGS`` in .venv-ondevice; the JSON object it prints."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([str(ondevice_python()), "-m", "distill.ondevice.executorch_runtime", *map(str, args)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode == 0:  # ExecuTorch's C++ runner writes to the same stdout
        for line in reversed(result.stdout.splitlines()):
            if line.startswith(RESULT):
                return json.loads(line[len(RESULT):])
    tail = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
    raise SpecError(f"--target executorch: executorch_runtime {args[0]} failed ({result.returncode}): {tail}")


def export_pte(source: Path, pte: Path, scheme: str, group_size: int = 32, max_seq_len: int = 512,
               seed: int = 0) -> dict[str, Any]:
    """Write ``pte`` (XNNPACK, ``scheme`` one of 8da4w | 8da8w | fp32) from a checkpoint or a config.json."""
    return run_runtime("export", source, pte, "--scheme", scheme, "--group-size", group_size, "--max-seq-len",
                       max_seq_len, "--seed", seed)


def generate_pte(pte: Path, prompts: list[list[int]], max_new_tokens: int, eos_ids: list[int], threads: int = 2,
                 warmup: bool = True) -> dict[str, Any]:
    """Greedy generations (and their timings) of token-id prompts from the ``.pte`` in ExecuTorch's runtime."""
    with tempfile.TemporaryDirectory() as tmp:
        request = Path(tmp) / "request.json"
        request.write_text(json.dumps({"prompts": prompts, "max_new_tokens": max_new_tokens, "eos_ids": eos_ids,
                                       "warmup": warmup}))
        return run_runtime("generate", pte, request, "--threads", threads)


def runner_texts(pte: Path, tokenizer_json: Path, prompts: list[str], max_new_tokens: int) -> list[dict[str, Any]]:
    """Greedy generations of chat-formatted prompts by ExecuTorch's own C++ runner (TextLLMRunner): ``text`` (None
    when a piece was part of a UTF-8 character, which its Python callback cannot pass) and ``generated_tokens``."""
    with tempfile.TemporaryDirectory() as tmp:
        request = Path(tmp) / "request.json"
        request.write_text(json.dumps({"prompts": prompts, "max_new_tokens": max_new_tokens}))
        return run_runtime("runner", pte, tokenizer_json, request)["outputs"]


def agreement(produced: list[int], reference: list[int]) -> tuple[int, int]:
    """Positions where the two greedy sequences have the same token, and the longer length (at least 1)."""
    return sum(a == b for a, b in zip(produced, reference, strict=False)), max(len(produced), len(reference), 1)


def check_pte(pte: Path, reference_dir: Path, system: str | None, prompts: list[str],
              max_new_tokens: int = 48) -> dict[str, Any]:
    """Load the ``.pte`` in ExecuTorch's runtime, generate greedily for ``prompts``, and compare its tokens with
    the fp32 checkpoint's (transformers); a program that does not load or emits nothing fails."""
    from distill.ondevice.check import chat_ids, greedy, load

    reference, tokenizer = load(reference_dir)
    ids = [chat_ids(tokenizer, system, prompt)["input_ids"][0].tolist() for prompt in prompts]
    eos = [int(tokenizer.eos_token_id)]
    result = generate_pte(pte, ids, max_new_tokens, eos)
    same = total = 0
    samples = []
    for prompt, prompt_ids, run in zip(prompts, ids, result["runs"], strict=True):
        full = greedy(reference, tokenizer, system, prompt, max_new_tokens)
        if full and full[-1] in eos:
            full = full[:-1]
        if not run["tokens"] and full:
            raise SpecError(f"--target executorch: {pte} generates nothing for {prompt!r}")
        s, t = agreement(run["tokens"], full)
        same, total = same + s, total + t
        samples.append({"prompt": prompt, "prompt_tokens": len(prompt_ids), "tokens": len(run["tokens"]),
                        "fp32_tokens": len(full), "agree": s,
                        "text": tokenizer.decode(run["tokens"], skip_special_tokens=True)})
    check = {"runtime": "ExecuTorch (Python bindings, XNNPACK)", "generates": True, "prompts": len(prompts),
             "token_agreement_with_fp32": round(same / total, 4), "samples": samples}
    tokenizer_json = reference_dir / "tokenizer.json"
    if tokenizer_json.is_file():  # the stock runner reads the tokenizer file itself
        texts = [chat_ids(tokenizer, system, p, tokenize=False) for p in prompts]
        produced = runner_texts(pte, tokenizer_json, texts, max_new_tokens)
        ours = [tokenizer.decode(r["tokens"], skip_special_tokens=False) for r in result["runs"]]
        same_text = sum(out["text"] is not None and out["text"].removesuffix(str(tokenizer.eos_token)) == mine
                        for out, mine in zip(produced, ours, strict=True))
        check["llm_runner"] = {"runner": "ExecuTorch TextLLMRunner (C++, greedy)",
                               "generates": all(out["generated_tokens"] > 0 for out in produced),
                               "prompts": len(prompts), "same_text_as_check": same_text,
                               "undecodable": sum(out["text"] is None for out in produced)}
    return check
