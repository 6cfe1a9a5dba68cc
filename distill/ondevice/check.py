"""Does an exported student load and generate? Greedy clean-ups of a few dictation prompts, compared with fp32."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.spec import SpecError

# Prompts in the lab's dictation format (lab/tasks.py): spoken text with fillers and a restart.
CHECK_PROMPTS = ["um so we will uh bring a taxi tomorrow morning", "the the meeting is on no sorry is at noon"]


def load(model_dir: Path) -> tuple[Any, Any]:
    """Model (eval mode) and tokenizer; a torchao folder needs torchao installed, as on the device runtime."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(model_dir).eval(), AutoTokenizer.from_pretrained(model_dir)


def chat_ids(tokenizer: Any, system: str | None, prompt: str, tokenize: bool = True) -> Any:
    """The chat-formatted prompt's ids (``input_ids``, ``attention_mask``), or its text with ``tokenize=False``."""
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    if not tokenize:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)


def greedy(model: Any, tokenizer: Any, system: str | None, prompt: str, max_new_tokens: int) -> list[int]:
    """The new tokens of a greedy completion (stops at the end-of-turn token)."""
    import torch

    inputs = chat_ids(tokenizer, system, prompt)
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    return output[0, inputs["input_ids"].shape[1]:].tolist()


def check_generates(model_dir: Path, reference_dir: Path, system: str | None, max_new_tokens: int = 48
                    ) -> dict[str, Any]:
    """Load the exported model, generate greedily for CHECK_PROMPTS, and measure how many of its tokens agree with
    the full-precision checkpoint's (position by position); a model that does not load or emits nothing fails."""
    try:
        model, tokenizer = load(model_dir)
    except Exception as exc:  # noqa: BLE001 - any load failure is the check's answer
        raise SpecError(f"--out: the exported model in {model_dir} does not load: {str(exc).splitlines()[0]}") from None
    reference, _ = load(reference_dir)
    samples, same, total = [], 0, 0
    for prompt in CHECK_PROMPTS:
        quantized = greedy(model, tokenizer, system, prompt, max_new_tokens)
        full = greedy(reference, tokenizer, system, prompt, max_new_tokens)
        if not quantized:
            raise SpecError(f"--out: the exported model in {model_dir} generates nothing for {prompt!r}")
        same += sum(a == b for a, b in zip(quantized, full, strict=False))
        total += max(len(quantized), len(full))
        samples.append({"prompt": prompt, "text": tokenizer.decode(quantized, skip_special_tokens=True)})
    return {"generates": True, "token_agreement_with_fp32": round(same / total, 4), "samples": samples}


def check_gguf_runtime(gguf_path: Path, reference_dir: Path, system: str | None, max_new_tokens: int = 48
                       ) -> dict[str, Any]:
    """Generate with llama.cpp (llama-cpp-python, when installed: it builds from source, ~15 min on 2 cores) from
    the same chat-formatted prompt ids as transformers, and compare its greedy tokens with the fp32 checkpoint's."""
    try:
        from llama_cpp import Llama
    except ImportError:
        return {"runtime": "llama-cpp-python not installed: pip install llama-cpp-python (builds llama.cpp)"}
    reference, tokenizer = load(reference_dir)
    llm = Llama(model_path=str(gguf_path), n_ctx=512, n_threads=2, verbose=False, seed=0)
    same, total, samples = 0, 0, []
    for prompt in CHECK_PROMPTS:
        ids = chat_ids(tokenizer, system, prompt)["input_ids"][0].tolist()
        produced: list[int] = []
        for token in llm.generate(ids, temp=0.0, top_k=1, reset=True):
            if token == tokenizer.eos_token_id or len(produced) == max_new_tokens:
                break
            produced.append(int(token))
        full = greedy(reference, tokenizer, system, prompt, max_new_tokens)
        if full and full[-1] == tokenizer.eos_token_id:
            full = full[:-1]
        if not produced and full:
            raise SpecError(f"--gguf: llama.cpp generates nothing from {gguf_path} for {prompt!r}")
        same += sum(a == b for a, b in zip(produced, full, strict=False))
        total += max(len(produced), len(full), 1)
        samples.append({"prompt": prompt, "text": tokenizer.decode(produced, skip_special_tokens=True)})
    return {"runtime": "llama.cpp (llama-cpp-python)", "generates": True,
            "token_agreement_with_fp32": round(same / total, 4), "samples": samples}
