"""The viewer's HTTP server: the standard library's threading server, Jinja templates, DuckDB queries.

Routes (every folder is named by ``at``, a path relative to the folder the viewer was started on; nothing outside
it is read, and only an eval's ``plots/*.png|svg`` are served as files):

    /                 the folders (a dataset or eval root goes straight to its page)
    /table?at=…       a dataset's samples: filters, sorting, paging; while a run writes, the count refreshes
    /sample?at=…&pid=…&s=…   one sample: steps coloured by PRM score, the problem's other samples beside it
    /summary?at=…     stats.json, charts, the redacted spec, decontamination, selection and mix reports
    /eval?at=…        report.md with its plots, and per model and set the samples right and wrong
    /api/count?at=…   the filtered count as JSON (what a live page polls)
"""

from __future__ import annotations

import json
import re
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import jinja2

from distill.view import pages
from distill.view.data import Database, Filters, Source
from distill.view.folders import kind_of, resolve_inside
from pipelines.errors import error_line
from pipelines.spec import SpecError

TEMPLATES = Path(__file__).parent / "templates"
PLOT = re.compile(r"plots/[\w.+-]+\.(png|svg)")
REFRESH_S = 2


class NotFound(Exception):
    pass


class Viewer:
    """Everything a request needs: the root folder, the database, the templates."""

    def __init__(self, root: Path, cache_dir: Path | None = None) -> None:
        self.root = root.resolve()
        self.cache_dir = cache_dir.resolve() if cache_dir else None
        self.db = Database()
        self.env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                                      undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
        self.env.filters["yaml"] = pages.as_yaml
        self.env.globals["urlencode"] = urlencode
        self.env.globals["refresh_s"] = REFRESH_S

    # --- routing -----------------------------------------------------------------------------------------------

    def handle(self, path: str, query: dict[str, str]) -> tuple[int, str, bytes]:
        """(status, content type, body) for one GET."""
        try:
            route = getattr(self, "page_" + (path.strip("/").replace("/", "_") or "index"), None)
            if route is None:
                raise NotFound(f"no page {path}")
            return route(query)
        except NotFound as exc:
            return self.error(HTTPStatus.NOT_FOUND, str(exc))
        except SpecError as exc:
            return self.error(HTTPStatus.BAD_REQUEST, str(exc))
        except Exception as exc:  # noqa: BLE001 - one secret-free line, never a traceback in the page
            return self.error(HTTPStatus.INTERNAL_SERVER_ERROR, error_line(exc))

    def render(self, template: str, **values: Any) -> tuple[int, str, bytes]:
        return 200, "text/html; charset=utf-8", self.env.get_template(template).render(**values).encode()

    def error(self, status: int, message: str) -> tuple[int, str, bytes]:
        return status, "text/html; charset=utf-8", self.env.get_template("error.html").render(
            message=message, status=int(status)).encode()

    def folder(self, query: dict[str, str], kind: str = "dataset") -> tuple[str, Path]:
        rel = query.get("at") or "."
        path = resolve_inside(self.root, rel)
        if path is None or not path.is_dir():
            raise NotFound(f"at: {rel!r} is not a folder under {self.root.name}; pick one on the index page (/)")
        found = kind_of(path) or ("dataset" if path == self.root and self.awaits_run(path) else None)
        if kind == "dataset" and found is None or kind == "eval" and found != "eval":
            raise NotFound(f"at: {rel!r} is not {'an eval' if kind == 'eval' else 'a dataset'} folder")
        return Path(path.relative_to(self.root)).as_posix(), path

    def awaits_run(self, path: Path) -> bool:
        """The root is a run's output folder before its first part file: empty, or only its .cache so far."""
        if self.cache_dir is not None:
            return True
        return all(p.name in (".cache", "__meta__") for p in path.iterdir())

    def source(self, path: Path) -> Source | None:
        cache = self.cache_dir if self.cache_dir and path == self.root else None
        return self.db.source(path, cache, scores=pages.eval_scores_file(path))

    # --- pages -------------------------------------------------------------------------------------------------

    def page_index(self, query: dict[str, str]) -> tuple[int, str, bytes]:
        kind = kind_of(self.root)
        if kind is not None:
            return 302, "/table?at=." if kind == "dataset" else "/eval?at=.", b""
        values = pages.index_page(self.root)
        if not values["folders"] and self.awaits_run(self.root):
            return 302, "/table?at=.", b""  # a run that has not written its first part yet
        return self.render("index.html", **values)

    def page_table(self, query: dict[str, str]) -> tuple[int, str, bytes]:
        rel, path = self.folder(query)
        filters = Filters.parse(query)
        source = self.source(path)
        if source is None:
            return self.render("table.html", at=rel, empty=True, live=True, total=0, filters=filters)
        values = pages.table_page(self.db, source, filters)
        template = "rows.html" if query.get("fragment") == "rows" else "table.html"
        return self.render(template, at=rel, empty=False, **values)

    def page_api_count(self, query: dict[str, str]) -> tuple[int, str, bytes]:
        _, path = self.folder(query)
        filters = Filters.parse(query)
        source = self.source(path)
        body = {"total": self.db.count(source, filters) if source else 0, "live": bool(source and source.live),
                "files": len(source.files) if source else 0}
        return 200, "application/json", json.dumps(body).encode()

    def page_sample(self, query: dict[str, str]) -> tuple[int, str, bytes]:
        rel, path = self.folder(query)
        if not query.get("pid"):
            raise SpecError("pid: missing; open a sample from the table")
        try:
            index = int(query.get("s") or "0")
        except ValueError:
            raise SpecError(f"s: {query.get('s')!r} is not a sample index; use 0, 1, …") from None
        source = self.source(path)
        values = pages.sample_page(self.db, source, path, query["pid"], index) if source else None
        if values is None:
            raise NotFound(f"pid: no sample {index} of problem {query['pid']!r} in {rel}")
        return self.render("sample.html", at=rel, back=query.get("back") or "", **values)

    def page_summary(self, query: dict[str, str]) -> tuple[int, str, bytes]:
        rel, path = self.folder(query)
        return self.render("summary.html", at=rel, **pages.summary_page(self.db, self.source(path), path))

    def page_eval(self, query: dict[str, str]) -> tuple[int, str, bytes]:
        rel, path = self.folder(query, "eval")
        return self.render("eval.html", at=rel, **pages.eval_page(self.db, self.root, path))

    def page_plot(self, query: dict[str, str]) -> tuple[int, str, bytes]:
        _, path = self.folder(query, "eval")
        name = query.get("name") or ""
        match = PLOT.fullmatch(name)
        file = resolve_inside(path, name) if match else None
        if file is None or not file.is_file():
            raise NotFound(f"name: {name!r} is not a plot of this eval (plots/*.png)")
        return 200, "image/png" if match.group(1) == "png" else "image/svg+xml", file.read_bytes()


class Handler(BaseHTTPRequestHandler):
    viewer: Viewer
    server_version = "distill-view"

    def do_GET(self) -> None:  # noqa: N802 - the standard library's name
        url = urlsplit(self.path)
        status, kind, body = self.viewer.handle(url.path, dict(parse_qsl(url.query)))
        self.send_response(status)
        if status == 302:
            self.send_header("Location", kind)
            body = b""
        else:
            self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet: the terminal is the user's
        pass


def make_server(root: Path, host: str, port: int, cache_dir: Path | None = None) -> ThreadingHTTPServer:
    """A bound server (``port`` 0 picks a free one); ``serve_forever()`` runs it."""
    handler = type("ViewHandler", (Handler,), {"viewer": Viewer(root, cache_dir)})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def serve_in_thread(root: Path, host: str = "127.0.0.1", port: int = 0,
                    cache_dir: Path | None = None) -> tuple[ThreadingHTTPServer, str]:
    """For tests and embedding: the server running in a daemon thread, and its URL."""
    server = make_server(root, host, port, cache_dir)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://{host}:{server.server_address[1]}/"
