"""Build the chat messages sent to the teacher for one problem."""

from __future__ import annotations

from pipelines.spec import PromptConfig


def build_messages(prompt: PromptConfig, problem: str) -> list[dict[str, str]]:
    """System prompt asking for ``<thought>`` reasoning, then the user turn from the template."""
    user = prompt.user_template.replace("{problem}", problem)
    messages = [{"role": "system", "content": prompt.system}] if prompt.system else []
    return messages + [{"role": "user", "content": user}]
