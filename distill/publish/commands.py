"""The ``distill publish`` job: build the Hub folder from a dataset folder, then write it (dry run) or push it."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from distill.command import fail
from pipelines.spec import SpecError

if TYPE_CHECKING:
    from distill.publish.folder import PublishFolder

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


def check_repo_id(repo_id: str) -> str:
    if not REPO_ID.match(repo_id) or ".." in repo_id or len(repo_id) > 96:
        raise SpecError(f"--repo-id: {repo_id!r} is not a Hub repo id; use OWNER/NAME (letters, digits, -, _, .)")
    return repo_id


def publish(dataset_dir: Path, repo_id: str, token: str | None, private: bool = False,
            dry_run: Path | None = None, endpoint: str | None = None, attempts: int = 3,
            wait_s: float = 2.0, keep_local_paths: bool = False) -> tuple[PublishFolder, str | None]:
    """Returns the folder built and the commit URL (None for a dry run)."""
    from distill.publish.folder import build_folder  # pyarrow, matplotlib: not for every `distill` command
    from distill.publish.push import push_folder

    check_repo_id(repo_id)
    if dry_run is not None:
        return build_folder(dataset_dir, dry_run, repo_id, keep_local_paths), None
    if not token:
        raise SpecError("no Hugging Face token: set HF_TOKEN or run `hf auth login` with a write token "
                        "(or use --dry-run DIR)")
    with tempfile.TemporaryDirectory(prefix="distill-publish-") as tmp:
        folder = build_folder(dataset_dir, Path(tmp) / "upload", repo_id, keep_local_paths)
        url = push_folder(folder.path, repo_id, token, private=private, endpoint=endpoint, attempts=attempts,
                          wait_s=wait_s)
    return folder, url


def register(app) -> None:  # noqa: ANN001 - a typer.Typer
    """Add ``distill publish`` to the CLI."""

    @app.command("publish")
    def publish_command(
        dataset_dir: Path = typer.Argument(..., help="A dataset folder written by `distill run`, or any "
                                           "parquet/jsonl file or folder (or Hub id) with a problem and a thought "
                                           "or assistant messages."),
        repo_id: str = typer.Option(..., "--repo-id", help="Hub dataset repo, OWNER/NAME."),
        private: bool = typer.Option(False, "--private", help="Create the repo private."),
        dry_run: Optional[Path] = typer.Option(None, "--dry-run", help="Write the folder that would be uploaded "
                                               "into this new or empty DIR; upload nothing."),
        retries: int = typer.Option(3, min=1, help="Attempts on transient errors (network, 429, 5xx)."),
        retry_wait: float = typer.Option(2.0, min=0.0, help="Seconds before the first retry (doubles each time)."),
        keep_local_paths: bool = typer.Option(False, "--keep-local-paths", help="Publish local paths, server URLs "
                                              "and key variable names as they are (default: removed)."),
    ) -> None:
        """Publish the kept traces to the Hugging Face Hub with a dataset card (configs default, kd, curriculum)."""
        token = None
        if dry_run is None:
            from huggingface_hub import get_token

            token = get_token()  # HF_TOKEN, else the saved `hf auth login` token
        try:
            folder, url = publish(dataset_dir, repo_id, token, private=private, dry_run=dry_run,
                                  attempts=retries, wait_s=retry_wait, keep_local_paths=keep_local_paths)
        except SpecError as exc:
            fail(str(exc))
        configs = ", ".join(f"{name}={rows}" for name, rows in folder.config_rows.items())
        if url is None:
            typer.echo(f"dry run: wrote {folder.path} ({len(folder.files)} files; configs {configs}); nothing uploaded")
        else:
            typer.echo(f"published {repo_id} ({configs}): {url}")
