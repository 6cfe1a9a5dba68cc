"""Ask the teacher for ``num_samples`` completions a problem; all samples of a problem stay in one row.

With an HTTP teacher (an async LLM) the step keeps a rolling window of requests in flight across batches:
``process`` submits its batch and hands on the problems finished so far, whichever batch they came from,
and drains the window when the loader marks the last problem. In-process engines (transformers, vLLM)
batch by themselves and take the plain path: one ``generate`` call per batch. Replicas on Ray (one window
each) hand their windows to the one that takes the last batch (``drain_board``, pipelines/engines/ray/drain.py).
(No ``from __future__ import annotations``: distilabel reads the ``StepInput`` hint of ``process`` at runtime.)
"""

import threading
from typing import Any, Literal

from distilabel.models.llms.base import AsyncLLM
from distilabel.steps import StepInput
from distilabel.steps.tasks import Task
from distilabel.typing import StepOutput
from pydantic import PrivateAttr

from pipelines.spec import PromptConfig
from pipelines.steps.load import END_OF_STREAM
from pipelines.teachers.inflight import RollingWindow
from pipelines.trace.prompt import build_messages


def samples_from_output(output: dict[str, Any], n: int, max_new_tokens: int) -> list[dict[str, Any]]:
    """Normalise an LLM output (ours or a distilabel in-process engine's) to a list of samples."""
    if "samples" in output:
        return output["samples"]
    generations = output.get("generations") or []
    stats = output.get("statistics") or {}
    out_tokens = stats.get("output_tokens") or [None] * len(generations)
    in_tokens = (stats.get("input_tokens") or [None])[0]
    samples = []
    for text, tokens in zip(generations, out_tokens, strict=False):
        truncated = tokens is not None and tokens >= max_new_tokens
        samples.append({"text": text, "reasoning": None, "finish_reason": "length" if truncated else "stop",
                        "completion_tokens": tokens, "prompt_tokens": in_tokens,
                        "error": None if text is not None else "no generation"})
    return samples + [{"text": None, "error": "missing generation"} for _ in range(n - len(samples))]


REASONING_END = "</think>"  # where vLLM's reasoning parsers (deepseek_r1, qwen3) split a reply


def continue_reply(sample: dict[str, Any], prefix: str) -> None:
    """Make a continuation the whole reply: the prefix, then what the teacher added. A server with a reasoning
    parser returns the rest of an unfinished thought as ``reasoning`` and what follows its end as the content:
    they are joined back at the closing tag, so the reply parses like one written in a single turn."""
    if sample.get("error"):
        return
    if sample.get("reasoning") is not None:
        sample["text"] = prefix + sample["reasoning"] + REASONING_END + (sample.get("text") or "")
        sample["reasoning"] = None
    elif sample.get("text") is not None:
        sample["text"] = prefix + sample["text"]


def failed_samples(n: int, exc: BaseException) -> list[dict[str, Any]]:
    """Per-sample errors for a request that raised (distilabel's own LLMs raise; ours never do)."""
    return [{"text": None, "error": type(exc).__name__} for _ in range(n)]


def window_size(llm: Any, max_in_flight: int | None) -> int:
    """Requests to keep in flight: the step's setting, else the LLM's limit per endpoint times its endpoints."""
    if max_in_flight:
        return max_in_flight
    return int(getattr(llm, "max_concurrency", 64)) * max(len(getattr(llm, "base_urls", None) or [None]), 1)


class TeacherGeneration(Task):
    """Teacher generation: chat messages from the prompt config, ``samples`` out."""

    prompt: PromptConfig = PromptConfig()
    num_samples: int = 1
    max_new_tokens: int = 1024
    # "window": keep requests in flight across batches (async LLMs); "batch": one generate call per batch.
    dispatch: Literal["window", "batch"] = "window"
    max_in_flight: int | None = None
    drain_board: str | None = None  # Ray, several replicas: the actor where they meet at the end

    _window: RollingWindow[dict[str, Any]] | None = PrivateAttr(default=None)
    _drain: Any = PrivateAttr(default=None)
    _busy: Any = PrivateAttr(default=None)  # made in load(): a lock does not pickle to the worker

    @property
    def inputs(self) -> dict[str, bool]:  # type: ignore[override]
        return {"problem": True, END_OF_STREAM: False}

    @property
    def outputs(self) -> list[str]:
        return ["samples", "model_name"]

    def format_input(self, input: dict[str, Any]) -> list[dict[str, str]]:  # noqa: A002
        messages = build_messages(self.prompt, input["problem"])
        if input.get("prefix"):  # a final assistant message is continued (the LLM asks the server to)
            messages.append({"role": "assistant", "content": input["prefix"]})
        return messages

    def format_output(self, output: str | None, input: dict[str, Any] | None = None) -> dict[str, Any]:
        return {}

    def load(self) -> None:
        super().load()
        if self.dispatch == "window" and isinstance(self.llm, AsyncLLM):
            size = window_size(self.llm, self.max_in_flight)
            # Up to one window of problems waits behind the running ones, so the next batch can take a
            # round trip through distilabel's queues without the window running dry.
            self._window = RollingWindow(self._request, size=size, backlog=max(size, self.input_batch_size))
            self._busy = threading.Lock()
            self._logger.info(f"generation keeps up to {size} requests in flight across batches")
            if self.drain_board and self.resources.replicas > 1:
                from pipelines.engines.ray.drain import ReplicaDrain

                window = self._window
                self._drain = ReplicaDrain(self.drain_board, self.resources.replicas, busy=self._busy,
                                           take_all=lambda: [self._finish(r, o) for r, o in window.take(True)])

    def unload(self) -> None:
        if self._window is not None:
            self._window.close()  # first: a drain watcher waiting for the window hands on what finished
        if self._drain is not None:
            self._drain.close()
            self._drain = None
        self._window = None
        super().unload()

    async def _request(self, messages: list[dict[str, str]]) -> dict[str, Any]:
        return await self.llm.agenerate(input=messages, num_generations=self.num_samples,
                                        **self.llm.get_generation_kwargs())

    def _finish(self, row: dict[str, Any], output: dict[str, Any] | BaseException) -> dict[str, Any]:
        row.pop(END_OF_STREAM, None)
        row["samples"] = (failed_samples(self.num_samples, output) if isinstance(output, BaseException)
                          else samples_from_output(output, self.num_samples, self.max_new_tokens))
        if row.get("prefix"):
            for sample in row["samples"]:
                continue_reply(sample, row["prefix"])
        row["model_name"] = self.llm.model_name
        return row

    def process(self, inputs: StepInput) -> StepOutput:  # type: ignore[override]
        if self._window is None:
            messages = [self.format_input(row) for row in inputs]
            outputs = self.llm.generate_outputs(inputs=messages, num_generations=self.num_samples,
                                                **self.llm.get_generation_kwargs())
            yield [self._finish(row, output) for row, output in zip(inputs, outputs, strict=True)]
            return
        # A short batch is always the last one; a full last batch carries the loader's end-of-stream mark.
        last = len(inputs) < self.input_batch_size or any(row.get(END_OF_STREAM) for row in inputs)
        with self._busy:
            drain = self._drain
            if last and drain is not None:
                drain.end()  # the other replicas drain their windows meanwhile
            wait_all = last or (drain is not None and drain.handed_over)
            self._window.submit((row, self.format_input(row)) for row in inputs)
            if not wait_all:
                self._window.wait_for_room()
            rows = [self._finish(row, output) for row, output in self._window.take(wait_all=wait_all)]
        if last and drain is not None:
            rows += drain.others()
        yield rows
