"""``distill view PATH``: a local web page for a dataset folder, a run still writing, an eval, or a parent of some.

Binds 127.0.0.1 unless ``--host`` says otherwise (then one line says the page is reachable from elsewhere: it has
no login). ``start_beside(out_dir)`` is what ``distill run --view`` uses: the viewer in its own process, stopped
with the run.
"""

from __future__ import annotations

import ipaddress
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional
from urllib.request import urlopen

import typer

from distill.command import user_errors
from pipelines.spec import SpecError

DEFAULT_PORT = 8765
LOOPBACK = "127.0.0.1"


def check_host(host: str) -> bool:
    """Whether ``host`` is a loopback address; a bad one is a ``SpecError`` naming ``--host``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        raise SpecError(f"--host: {host!r} is not an IP address; use 127.0.0.1 (this machine only) or 0.0.0.0 "
                        "(every interface)") from None


def view(
    path: Path = typer.Argument(..., help="A dataset folder (distill run), an eval folder (distill eval), or a "
                                           "folder holding some."),
    port: int = typer.Option(DEFAULT_PORT, help="Port to listen on (0 picks a free one)."),
    host: str = typer.Option(LOOPBACK, help="Address to bind. The default serves this machine only; anything else "
                                            "makes the page reachable from other machines, without a login."),
    cache_dir: Optional[Path] = typer.Option(None, help="The run's resume folder when it is not PATH/.cache "
                                                        "(distill run --cache-dir): its part files are shown live."),
) -> None:
    """Browse samples, steps, scores and reports in a local web page."""
    from distill.view.server import make_server

    with user_errors():
        if not path.is_dir():
            raise SpecError(f"PATH: {path} is not a folder; give a dataset folder (distill run --out DIR), an eval "
                            "folder (distill eval --out DIR) or a folder holding them")
        if not 0 <= port <= 65535:
            raise SpecError(f"--port: {port} is not a port; use 1-65535, or 0 for a free one")
        if cache_dir is not None and not cache_dir.is_dir():
            raise SpecError(f"--cache-dir: {cache_dir} is not a folder; give the run's --cache-dir")
        loopback = check_host(host)
        try:
            server = make_server(path, host, port, cache_dir)
        except OSError as exc:
            raise SpecError(f"--port: cannot listen on {host}:{port} ({exc.strerror or exc}); pick another --port, "
                            "or 0 for a free one") from None
        url = f"http://{host}:{server.server_address[1]}/"
        if not loopback:
            typer.echo(f"note: --host {host}: this page is reachable from other machines on the network, and "
                       "it has no login", err=True)
        typer.echo(f"viewing {path} at {url} (Ctrl-C stops)", err=False)
        sys.stdout.flush()
        try:
            server.serve_forever()
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: a viewer has nothing to resume
            typer.echo("viewer stopped")
        finally:
            server.server_close()


class Beside:
    """The viewer as a child process of a run: started, its URL known, stopped with the run."""

    def __init__(self, out_dir: Path, cache_dir: Path | None, port: int = 0, host: str = LOOPBACK) -> None:
        from distill.serve.server import die_with_parent, free_port

        self.port = port or free_port(host)
        self.url = f"http://{host}:{self.port}/"
        out_dir.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "distill.cli", "view", str(out_dir), "--port", str(self.port),
                   "--host", host, *(["--cache-dir", str(cache_dir)] if cache_dir else [])]
        if cache_dir:
            cache_dir.mkdir(parents=True, exist_ok=True)
        self.errors = tempfile.TemporaryFile()  # not a pipe: nobody reads it while the run goes on
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=self.errors,
                                        stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=die_with_parent)

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.errors.seek(0)
                error = self.errors.read().decode(errors="replace").strip().splitlines()
                raise SpecError(error[-1].removeprefix("error: ") if error else "--view: the viewer did not start")
            try:
                with urlopen(self.url + "api/count?at=.", timeout=2):
                    return
            except OSError:
                time.sleep(0.2)
        raise SpecError(f"--view: the viewer did not answer at {self.url} within {timeout:.0f} s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.errors.close()


def register(app: typer.Typer) -> None:
    app.command("view")(view)
