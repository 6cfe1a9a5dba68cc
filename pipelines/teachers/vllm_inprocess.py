"""In-process teacher through vLLM's offline ``LLM`` engine, as a distilabel LLM with exact per-sample fields.

distilabel 1.5.3's ``vLLM`` was written for vLLM 0.6-0.8 and breaks on 0.32: its ``generate`` passes
``SamplingParams(logits_processors=...)`` (removed: ``TypeError: Unexpected keyword argument
'logits_processors'``) and its ``unload`` deletes ``llm_engine.model_executor`` (gone from the V1 engine:
``AttributeError``, after which the pipeline hangs with the engine process alive). It also drops the finish
reason and re-encodes the prompt to count it. This subclass keeps distilabel's ``load`` (engine arguments,
chat template), and replaces ``generate`` and the engine teardown; it returns ``samples`` in the same shape as
``VLLMServerLLM`` and ``LocalTransformersLLM``: vLLM's own finish reason, exact token counts, and with
``top_logprobs`` the true top k per position as ``token_id:N`` entries plus the prompt's token ids.
"""

from __future__ import annotations

from typing import Any

from distilabel.models.llms import vLLM


class InProcessVLLM(vLLM):
    """``num_generations`` samples per chat input from an in-process vLLM engine; ``samples`` out."""

    def generate(  # type: ignore[override]
        self,
        inputs: list[list[dict[str, str]]],
        num_generations: int = 1,
        max_new_tokens: int = 128,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_logprobs: int | None = None,
    ) -> list[dict[str, Any]]:
        from vllm import SamplingParams, TokensPrompt

        # The chat template already holds any BOS: token ids, so that vLLM adds no second one, and so that
        # the logprobs' context (prompt_token_ids) is exactly what the engine saw.
        prompts = [TokensPrompt(prompt_token_ids=self._tokenizer.encode(self.prepare_input(messages),
                                                                        add_special_tokens=False))
                   for messages in inputs]
        # logprobs=k returns the top k *and* the sampled token when it is outside them (k+1 entries); its
        # logprobs are the raw ones (before temperature/top-p), like the server's.
        params = SamplingParams(n=num_generations, max_tokens=max_new_tokens, temperature=temperature,
                                top_p=top_p, logprobs=top_logprobs or None)
        results = self._model.generate(prompts, params, use_tqdm=False)
        return [{"samples": [_sample(completion, result.prompt_token_ids, top_logprobs)
                             for completion in result.outputs]
                 + [{"text": None, "error": "missing generation"}
                    for _ in range(num_generations - len(result.outputs))]}
                for result in results]

    def _cleanup_vllm_model(self) -> None:
        """Stop the engine core (a separate process with the V1 engine) instead of distilabel's 0.8 teardown."""
        if self._model is None:
            return
        engine_core = getattr(getattr(self._model, "llm_engine", None), "engine_core", None)
        if engine_core is not None:
            engine_core.shutdown()
        self._model = None  # type: ignore[assignment]


def _sample(completion: Any, prompt_token_ids: list[int] | None, top_logprobs: int | None) -> dict[str, Any]:
    from pipelines.teachers.top_k import true_top_k

    ids = list(completion.token_ids)
    finish = completion.finish_reason
    sample: dict[str, Any] = {
        "text": completion.text,
        "reasoning": None,
        "finish_reason": finish,
        "completion_tokens": len(ids),  # the EOS that stopped it included, like the server's usage
        "prompt_tokens": len(prompt_token_ids) if prompt_token_ids is not None else None,
        "error": f"finish_reason {finish}" if finish in ("abort", "error") or finish is None else None,
    }
    if top_logprobs and completion.logprobs is not None:
        positions = [{token: entry.logprob for token, entry in position.items()} for position in completion.logprobs]
        sample["tokens"] = [f"token_id:{t}" for t in ids]
        sample["token_logprobs"] = [position.get(t) for t, position in zip(ids, positions, strict=True)]
        sample["logprobs"] = [true_top_k([{"token": f"token_id:{t}", "logprob": lp} for t, lp in position.items()],
                                         top_logprobs)
                              for position in positions]
        if prompt_token_ids is not None:
            sample["prompt_token_ids"] = list(prompt_token_ids)
    return sample
