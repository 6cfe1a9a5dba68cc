"""Checks before a run touches anything: the source has problems, the output stays put, the teacher answers.

Each failure is a ``SpecError``: one line naming the field or file and what to do. They run in this order
(cheapest and most local first), inside ``run_spec``, before the run takes its lock, creates a folder or writes
a byte. The source check is the run's plan itself (pipelines/run/plan.py): the one read of the source.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from pipelines.errors import redact_url
from pipelines.run.plan import RunPlan, make_plan
from pipelines.spec import DatasetSpec, JudgeConfig, SpecError, TeacherConfig

log = logging.getLogger("distill")

PROBE_TIMEOUT_S = 5.0


def check_output(out_dir: Path, cwd: Path) -> Path:
    """A dataset folder named by a spec (not on the command line) must lie inside the working directory."""
    resolved = (cwd / out_dir).resolve()
    if not resolved.is_relative_to(cwd.resolve()):
        raise SpecError(f"output.dir: {str(out_dir)!r} leads outside the working directory; use a relative path "
                        "inside it, or give the folder with --out")
    return out_dir


def _get(url: str, headers: dict[str, str], timeout: float) -> tuple[int, bytes]:
    """Status and body of a GET (stdlib: nothing logged, unlike httpx at INFO)."""
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read(1_000_000)
    except urllib.error.HTTPError as exc:
        return exc.code, b""


def _probe(url: str, api_key: str | None, api_key_env: str, timeout: float, what: str = "teacher") -> list[str]:
    """GET ``url``/models; an error for what would fail every request, else the served model ids.

    ``what`` is the spec section the URL comes from (``teacher`` or ``judge``), named in the errors."""
    fix = "--teacher-url" if what == "teacher" else f"{what}.base_url"
    shown = redact_url(url)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    parts = urlsplit(url)  # user:password@ in a URL is not for urllib (it would read it as the host)
    bare = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    try:
        status, body = _get(bare.rstrip("/") + "/models", headers, timeout)
    except (urllib.error.URLError, OSError) as exc:
        cause = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        reason = f"no answer within {timeout:g} s" if isinstance(cause, TimeoutError) else _connect_reason(cause)
        raise SpecError(f"{what}.base_url: cannot reach {shown} ({reason}); start the vLLM server or fix "
                        f"{fix}") from None
    if status in (401, 403):
        raise SpecError(f"{what}.api_key_env: {shown} refused the API key (HTTP {status}); "
                        f"export {api_key_env}=<the server's key> or fix {what}.api_key_env")
    if status == 404:
        raise SpecError(f"{what}.base_url: {shown} is not an OpenAI-compatible API (GET /models answers HTTP "
                        "404); give the URL that ends in /v1, e.g. http://host:8000/v1")
    if status != 200:
        return []  # reachable, and a server error now may pass: the requests are retried
    try:
        return [str(m.get("id")) for m in json.loads(body).get("data") or [] if isinstance(m, dict)]
    except (ValueError, AttributeError):
        return []


def _connect_reason(exc: object) -> str:
    text = str(exc).lower()
    for needle, reason in (("refused", "connection refused"), ("name or service", "unknown host"),
                           ("nodename", "unknown host"), ("no route", "no route to host"),
                           ("unreachable", "network unreachable")):
        if needle in text:
            return reason
    return type(exc).__name__


def check_teacher(teacher: TeacherConfig, api_key: str | None, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Every teacher endpoint answers (HTTP teachers only); a model name it does not serve is a warning."""
    if teacher.backend != "openai":
        return
    for url in teacher.base_urls:
        served = _probe(url, api_key, teacher.api_key_env, timeout)
        if served and teacher.model not in served:
            log.warning("teacher.model: %r is not among the models served at %s (%s); requests will fail if "
                        "the name is wrong (--teacher-model)", teacher.model, redact_url(url), ", ".join(served))


def check_judge(judge: JudgeConfig, api_key: str | None, timeout: float = PROBE_TIMEOUT_S) -> None:
    """The judge endpoint answers; a model name it does not serve is a warning."""
    served = _probe(judge.base_url, api_key, judge.api_key_env, timeout, what="judge")
    if served and judge.model not in served:
        log.warning("judge.model: %r is not among the models served at %s (%s)", judge.model,
                    redact_url(judge.base_url), ", ".join(served))


def preflight(spec: DatasetSpec, limit: int | None, cache_dir: Path, api_key: str | None,
              spec_out_dirs: Sequence[Path] = (), cwd: Path | None = None, fresh: bool = False,
              judge_api_key: str | None = None) -> RunPlan:
    """All checks, in order; returns the run's plan (``run_spec`` calls this: every caller of a run gets it).

    The source is read once, into the plan (pipelines/run/plan.py): a local file or a Hub stream to its end,
    through the filters. ``spec_out_dirs`` are the folders that came from the spec rather than the command
    line. The teacher (and a judge) are probed only when the plan has work left or the run is ``fresh``: a
    finished run needs no teacher.
    """
    plan = make_plan(spec, limit, None if fresh else cache_dir)
    for folder in spec_out_dirs:
        check_output(folder, cwd or Path.cwd())
    if fresh or plan.work_left:
        check_teacher(spec.teacher, api_key)
        if spec.judge is not None:
            check_judge(spec.judge, judge_api_key)
    return plan
