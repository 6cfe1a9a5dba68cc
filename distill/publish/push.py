"""Push a built folder to a Hub dataset repo with ``huggingface_hub``; retries transient errors, one-line failures.

The token is passed in by the CLI (read once from ``HF_TOKEN`` or the saved login) and scrubbed from every
message this module produces.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from pipelines.spec import SpecError

log = logging.getLogger("distill")
TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}


class PublishError(SpecError):
    """A push that failed; the message is one line, without the token."""


def redact(text: str, token: str | None) -> str:
    return text.replace(token, "***") if token else text


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def is_transient(exc: BaseException) -> bool:
    """Worth another try: a network failure, a timeout, 429 or a 5xx answer."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(exc, OfflineModeIsEnabled):
        return False
    if isinstance(exc, HfHubHTTPError):
        return _status(exc) in TRANSIENT_STATUS
    return isinstance(exc, httpx2.TransportError | ConnectionError | TimeoutError)


def describe(exc: BaseException, repo_id: str, endpoint: str) -> str:
    """One line saying what failed and what to do about it."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(exc, PublishError):
        return str(exc)
    if isinstance(exc, OfflineModeIsEnabled):
        return "HF_HUB_OFFLINE is set: unset it to publish (or use --dry-run DIR to only write the folder)"
    status = _status(exc)
    if isinstance(exc, HfHubHTTPError) and status is not None:
        server = (getattr(exc, "server_message", None) or "").strip().splitlines()
        detail = f" ({server[0][:160]})" if server else ""
        if status == 401:
            return (f"authentication failed (401) at {endpoint}{detail}: set HF_TOKEN to a valid write token "
                    "or run `hf auth login`")
        if status == 403:
            return (f"permission denied (403) for dataset {repo_id}{detail}: use a token with write access to "
                    f"{repo_id.split('/')[0]} or change --repo-id")
        if status == 404:
            return f"dataset {repo_id} not found (404){detail}: check --repo-id and that the token can see it"
        return f"the Hub answered {status} for dataset {repo_id}{detail}; retry later"
    if is_transient(exc):
        return f"cannot reach the Hub at {endpoint} ({type(exc).__name__}); check the network and retry"
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    return f"publishing to {repo_id} failed: {type(exc).__name__}: {first}"


def ensure_dataset_repo(api, repo_id: str, private: bool) -> None:  # noqa: ANN001 - HfApi, imported lazily
    """Create the dataset repo, or accept it when it already exists as a dataset."""
    from huggingface_hub.errors import HfHubHTTPError

    try:
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=False)
    except HfHubHTTPError as exc:
        if _status(exc) != 409:
            raise
        if api.repo_exists(repo_id, repo_type="dataset"):
            return
        kind = next((t for t in ("model", "space") if api.repo_exists(repo_id, repo_type=t)), "another type of")
        raise PublishError(f"--repo-id: {repo_id} already exists as a {kind} repo, not a dataset; "
                           "choose another --repo-id") from None


def push_folder(folder: Path, repo_id: str, token: str, private: bool = False, endpoint: str | None = None,
                attempts: int = 3, wait_s: float = 2.0, sleep: Callable[[float], None] = time.sleep) -> str:
    """Create the repo if needed and upload ``folder`` in one commit; returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint, token=token)
    where = api.endpoint
    for attempt in range(1, attempts + 1):
        try:
            ensure_dataset_repo(api, repo_id, private)
            info = api.upload_folder(repo_id=repo_id, repo_type="dataset", folder_path=str(folder),
                                     commit_message="Publish dataset with distill publish")
            return str(info.commit_url)
        except Exception as exc:  # noqa: BLE001 - every failure becomes one line below
            message = redact(describe(exc, repo_id, where), token)
            if attempt < attempts and is_transient(exc):
                delay = wait_s * 2 ** (attempt - 1)
                log.warning("push attempt %d/%d failed: %s; retrying in %.1fs", attempt, attempts, message, delay)
                sleep(delay)
                continue
            raise PublishError(message) from None
    raise AssertionError("unreachable")
