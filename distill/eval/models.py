"""Where a model's samples come from: a running server, a vLLM server the eval starts, or an in-process engine.

``open_model`` is a context manager: for ``backend: serve`` it starts vLLM with the factory's own ``distill serve``
machinery (distill/serve/server.py: its venv, CPU settings, one process group) and stops it on exit, also on
Ctrl-C or SIGTERM (the command turns SIGTERM into KeyboardInterrupt).
"""

from __future__ import annotations

import json
import re
import urllib.error
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from distill.eval.config import ModelConfig
from pipelines.errors import redact_url
from pipelines.spec import SpecError

PLACEHOLDER_URL = "http://127.0.0.1:9/v1"  # a spec needs a URL even when no request will be sent


@dataclass(frozen=True)
class Endpoint:
    backend: str  # the teacher backend of the run's spec: openai | transformers | vllm
    model: str  # served model name, or the model path in-process
    base_url: str = PLACEHOLDER_URL
    max_model_len: int | None = None


def _has_cuda() -> bool:
    from pipelines.teachers.build import has_cuda

    return has_cuda()


def probe(model: ModelConfig, url: str, api_key: str | None, timeout: float = 5.0) -> Endpoint:
    """The served model name (and its context length) from ``GET url/models``; unreachable is one line."""
    from pipelines.run.preflight import _connect_reason, _get

    shown = redact_url(url)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        status, body = _get(url.rstrip("/") + "/models", headers, timeout)
    except (urllib.error.URLError, OSError) as exc:
        cause = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        reason = f"no answer within {timeout:g} s" if isinstance(cause, TimeoutError) else _connect_reason(cause)
        raise SpecError(f"--model {model.name}: cannot reach {shown} ({reason}); start the server "
                        "(distill serve MODEL) or fix the URL") from None
    if status in (401, 403):
        raise SpecError(f"--model {model.name}: {shown} refused the API key (HTTP {status}); "
                        f"export {model.api_key_env}=<the server's key>")
    if status != 200:
        raise SpecError(f"--model {model.name}: {shown}/models answers HTTP {status}; give the URL that ends in /v1")
    try:
        cards = [c for c in json.loads(body).get("data") or [] if isinstance(c, dict)]
    except (ValueError, AttributeError):
        cards = []
    served = {str(c.get("id")): c.get("max_model_len") for c in cards}
    name = model.served_model
    if name is None:
        if len(served) != 1:
            raise SpecError(f"--model {model.name}: {shown} serves {len(served)} models "
                            f"({', '.join(served) or 'none listed'}); pick one with ,served_model=NAME")
        name = next(iter(served))
    elif served and name not in served:
        raise SpecError(f"--model {model.name}: {shown} does not serve {name!r} (it serves {', '.join(served)})")
    length = served.get(name)
    return Endpoint("openai", name, url, int(length) if isinstance(length, int) else None)


def check_path(model: ModelConfig) -> None:
    """A local model folder that exists, or something shaped like a Hub id (owner/name)."""
    assert model.path is not None
    if Path(model.path).exists():
        if Path(model.path).is_dir() and not (Path(model.path) / "config.json").is_file():
            raise SpecError(f"--model {model.name}: {model.path} has no config.json (not a model folder)")
        return
    # owner/name is a Hub id, unless "owner" is a local folder (out/sft: a typo, not a download)
    if (not re.fullmatch(r"[\w.-]+/[\w.-]+", model.path) or model.path.startswith((".", "/"))
            or Path(model.path).parent.is_dir()):
        raise SpecError(f"--model {model.name}: {model.path!r} does not exist (give a model folder, a Hub id, "
                        "or a URL)")


@contextmanager
def open_model(model: ModelConfig, log_dir: Path, api_key: str | None, needed: bool = True) -> Iterator[Endpoint]:
    """The endpoint the model's runs use; ``needed`` False (every run already done) starts nothing."""
    if model.url is not None:
        yield probe(model, model.url, api_key) if needed else Endpoint("openai", model.served_model or model.name,
                                                                        model.url)
        return
    check_path(model)
    assert model.path is not None
    if model.backend != "serve":
        yield Endpoint(model.backend, model.path)
        return
    if not needed:
        yield Endpoint("openai", model.name)
        return
    from distill.serve.server import ServeConfig, free_port, start_servers

    cfg = ServeConfig(model=model.path, name=model.name, port=free_port(),
                      dtype=model.dtype or ("auto" if _has_cuda() else "float32"),
                      reasoning_parser=model.reasoning_parser, max_model_len=model.max_model_len,
                      max_num_seqs=model.max_num_seqs, extra_args=list(model.serve_args), log_dir=log_dir)
    try:
        servers = start_servers(cfg)
    except SpecError as exc:
        raise SpecError(f"--model {model.name}: {exc}") from None
    try:
        (server,) = servers
        yield probe(model.model_copy(update={"served_model": model.name}), server.base_url, api_key)
    finally:
        for server in servers:
            server.stop()
