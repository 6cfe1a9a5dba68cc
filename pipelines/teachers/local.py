"""In-process teacher through transformers, as a distilabel LLM with exact token counts.

distilabel's ``TransformersLLM`` counts output tokens by re-encoding the decoded text (wrong for
byte-level tokenizers) and cannot say whether a sample stopped or ran out of tokens; this subclass
generates with ``model.generate`` and reads both from the generated ids.
"""

from __future__ import annotations

import zlib
from typing import Any

from distilabel.models.llms import TransformersLLM


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    eos = model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


class LocalTransformersLLM(TransformersLLM):
    """Generates ``num_generations`` samples per chat input; returns ``samples`` like the server LLM."""

    def generate(  # type: ignore[override]
        self,
        inputs: list[list[dict[str, str]]],
        num_generations: int = 1,
        max_new_tokens: int = 128,
        temperature: float = 1.0,
        top_p: float = 1.0,
        do_sample: bool = True,
        repetition_penalty: float = 1.0,
        top_logprobs: int | None = None,
        seed: int | None = None,
    ) -> list[dict[str, Any]]:
        import torch

        model, tokenizer = self._pipeline.model, self._pipeline.tokenizer  # type: ignore[union-attr]
        tokenizer.padding_side = "left"  # generation continues from the right edge of every prompt
        prompts = [self.prepare_input(input=messages) for messages in inputs]
        if seed is not None:  # the batch's own seed, from the spec's and its prompts: a rerun samples the same
            torch.manual_seed((seed + zlib.crc32("\0".join(prompts).encode())) % 2**31)
        encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        sampling = {"temperature": temperature, "top_p": top_p} if do_sample else {}
        with torch.no_grad():
            generated = model.generate(**encoded, max_new_tokens=max_new_tokens, do_sample=do_sample,
                                       num_return_sequences=num_generations, repetition_penalty=repetition_penalty,
                                       pad_token_id=tokenizer.pad_token_id, return_dict_in_generate=True,
                                       output_logits=bool(top_logprobs), **sampling)
        width = encoded["input_ids"].shape[1]
        new_tokens = generated.sequences[:, width:].tolist()
        # output_logits are the raw logits (before temperature/top-p), like vLLM's default logprobs
        tops = (torch.stack(generated.logits, dim=1).float().log_softmax(-1).topk(top_logprobs, dim=-1)
                if top_logprobs else None)
        eos = _eos_ids(model, tokenizer)
        prompt_lengths = encoded["attention_mask"].sum(dim=1).tolist()
        outputs = []
        for i in range(len(inputs)):
            samples = []
            for j in range(i * num_generations, (i + 1) * num_generations):
                ids = new_tokens[j]
                stop = next((k for k, token in enumerate(ids) if token in eos), None)
                kept = ids if stop is None else ids[:stop]
                if tops is not None:
                    samples.append(_logprob_fields(ids[:len(ids) if stop is None else stop + 1], tops, j,
                                                   encoded["input_ids"][i], encoded["attention_mask"][i]))
                else:
                    samples.append({})
                samples[-1].update({
                    "text": tokenizer.decode(kept, skip_special_tokens=True),
                    "reasoning": None,
                    "finish_reason": "length" if stop is None else "stop",
                    "completion_tokens": len(ids) if stop is None else stop + 1,
                    "prompt_tokens": int(prompt_lengths[i]),
                    "error": None,
                })
            outputs.append({"samples": samples})
        return outputs


def _logprob_fields(ids: list[int], tops: Any, row: int, prompt_ids: Any, mask: Any) -> dict[str, Any]:
    """The same per-token fields as the vLLM server LLM: sampled ids, their logprob, the true top k."""
    values, indices = tops.values[row].tolist(), tops.indices[row].tolist()
    lists = [[{"token": f"token_id:{t}", "logprob": v} for t, v in zip(indices[p], values[p], strict=True)]
             for p in range(len(ids))]
    return {"tokens": [f"token_id:{t}" for t in ids], "logprobs": lists,
            "token_logprobs": [next((e["logprob"] for e in lists[p] if e["token"] == f"token_id:{t}"), None)
                               for p, t in enumerate(ids)],
            "prompt_token_ids": [int(t) for t, m in zip(prompt_ids.tolist(), mask.tolist(), strict=True) if m]}
