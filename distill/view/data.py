"""The viewer's queries: DuckDB over a dataset folder's parquet files, one page at a time.

Nothing loads a whole folder: a page is ``SELECT … WHERE … ORDER BY … LIMIT``, the filters are pushed down to the
parquet scan, wide columns (the thought, the logprobs) are read only for the one sample a page shows, and DuckDB's
memory is capped (``MEMORY_LIMIT``). A finished folder is read from its ``data-*.parquet``; a run still writing from
the part files written so far (the file list is taken again on every request, so the count grows).
"""

from __future__ import annotations

import math
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from distill.view.folders import is_live, parts_of
from pipelines.spec import SpecError

MEMORY_LIMIT = "1GB"
PER_PAGE = 50
HIT_TABLES = 4  # text searches whose matching keys are kept, so that paging through them does not scan again
# Listed in the table (the text ones cut short); the sample page reads the rest.
LIST_COLUMNS = ("problem_index", "sample_index", "problem_id", "problem", "answer", "kept", "rejection_reason",
                "correct", "pass_rate", "prm_score", "judge_score", "completion_tokens", "finish_reason")
SAMPLE_COLUMNS = ("problem_id", "problem_index", "sample_index", "problem", "gold", "thought", "answer", "completion",
                  "correct", "kept", "rejection_reason", "pass_rate", "teacher_model", "finish_reason",
                  "completion_tokens", "prompt_tokens", "error", "step_scores", "prm_score", "prm_first_error",
                  "similarity_score", "judge_score", "judge_reason", "selection_reason", "source")
SORTS = ("problem_index", "pass_rate", "prm_score", "judge_score", "completion_tokens")
SEARCHED = ("problem", "thought", "answer")
RANGES = {"pass": "pass_rate", "prm": "prm_score", "judge": "judge_score", "tokens": "completion_tokens"}


@dataclass
class Filters:
    """What the table shows; every field comes from the page's query string (``parse``)."""

    status: str = "all"  # all | kept | rejected
    reason: str = ""
    q: str = ""
    right: str = ""  # eval runs: yes | no
    ranges: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)  # name in RANGES → (min, max)
    sort: str = "problem_index"
    desc: bool = False
    page: int = 1

    @classmethod
    def parse(cls, query: dict[str, str]) -> Filters:
        """From a query string; a bad value is a ``SpecError`` naming the field and the fix."""
        status = query.get("status") or "all"
        if status not in ("all", "kept", "rejected"):
            raise SpecError(f"status: {status!r} is not one of all, kept, rejected")
        sort = query.get("sort") or "problem_index"
        if sort not in SORTS:
            raise SpecError(f"sort: {sort!r} is not one of {', '.join(SORTS)}")
        right = query.get("right") or ""
        if right not in ("", "yes", "no"):
            raise SpecError(f"right: {right!r} is not one of yes, no (or empty for both)")
        ranges = {}
        for name in RANGES:
            low, high = _number(query, f"{name}_min"), _number(query, f"{name}_max")
            if low is not None or high is not None:
                if low is not None and high is not None and low > high:
                    raise SpecError(f"{name}_min: {low:g} is above {name}_max {high:g}; swap them")
                ranges[name] = (low, high)
        page = _number(query, "page")
        if page is not None and (page < 1 or page != int(page)):
            raise SpecError(f"page: {query['page']!r} is not a page number; use 1, 2, …")
        return cls(status=status, reason=(query.get("reason") or "").strip(), q=(query.get("q") or "").strip(),
                   right=right, ranges=ranges, sort=sort, desc=query.get("desc") == "1", page=int(page or 1))

    def query(self, **changes: Any) -> dict[str, str]:
        """These filters as a query string's fields (with ``changes``), for links."""
        values: dict[str, Any] = {"status": self.status, "reason": self.reason, "q": self.q, "right": self.right,
                                  "sort": self.sort, "desc": "1" if self.desc else "", "page": self.page}
        for name, (low, high) in self.ranges.items():
            values[f"{name}_min"], values[f"{name}_max"] = low, high
        values.update(changes)
        return {k: f"{v:g}" if isinstance(v, float) else str(v) for k, v in values.items()
                if v not in (None, "", "all") and not (k == "page" and v == 1)
                and not (k == "sort" and v == "problem_index")}


def _number(query: dict[str, str], name: str) -> float | None:
    text = (query.get(name) or "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise SpecError(f"{name}: {text!r} is not a number; give a number or leave it empty") from None
    if not math.isfinite(value):
        raise SpecError(f"{name}: {text!r} is not a finite number")
    return value


@dataclass
class Source:
    """The parquet files of one dataset folder as they are now."""

    files: list[Path]
    live: bool
    columns: dict[str, str]
    scores: Path | None = None  # an eval run's scores file: its ``correct`` is the eval's right/wrong

    @property
    def relation(self) -> str:
        files = ", ".join("'" + str(f).replace("'", "''") + "'" for f in self.files)
        return f"read_parquet([{files}], union_by_name = true)"


class Database:
    """One in-process DuckDB for the viewer; each request runs on its own cursor."""

    def __init__(self, memory_limit: str = MEMORY_LIMIT, threads: int | None = None) -> None:
        self._con = duckdb.connect(config={"memory_limit": memory_limit, "enable_object_cache": True,
                                           **({"threads": threads} if threads else {})})
        self._lock = threading.Lock()
        self._hits: OrderedDict[tuple, str] = OrderedDict()
        self._hits_lock = threading.Lock()
        self._hits_made = 0

    def cursor(self) -> duckdb.DuckDBPyConnection:
        with self._lock:
            return self._con.cursor()

    def source(self, out_dir: Path, cache_dir: Path | None = None, scores: Path | None = None) -> Source | None:
        """The folder's files: the shards when finished, the part files while a run writes (or after it died)."""
        cache_dir = cache_dir or out_dir / ".cache"
        live = is_live(out_dir, cache_dir)
        shards = sorted(out_dir.glob("data-*.parquet"))
        files = parts_of(cache_dir) if live or not shards else shards
        if not files:
            return None
        relation = Source(files, live, {}).relation
        columns = {name: kind for name, kind, *_ in self.cursor().execute(f"DESCRIBE SELECT * FROM {relation}")
                   .fetchall()}
        return Source(files, live, columns, scores if scores and scores.is_file() else None)

    # --- the table ---------------------------------------------------------------------------------------------

    def _from(self, source: Source) -> str:
        if source.scores is None:
            return f"{source.relation} AS t"
        path = str(source.scores).replace("'", "''")
        return (f"{source.relation} AS t LEFT JOIN (SELECT problem_id AS s_pid, sample_index AS s_idx, "
                f"correct AS eval_correct FROM read_parquet('{path}')) AS s "
                "ON t.problem_id = s.s_pid AND t.sample_index = s.s_idx")

    def _where(self, source: Source, filters: Filters) -> tuple[str, list[Any]]:
        clauses, params = [], []
        if filters.status != "all" and "kept" not in source.columns or filters.reason and "rejection_reason" \
                not in source.columns:
            clauses.append("false")  # a folder without these columns: nothing is kept or rejected for a reason
        elif filters.status == "kept":
            clauses.append("t.kept")
        elif filters.status == "rejected":
            clauses.append("NOT coalesce(t.kept, false)")
        if filters.reason and "rejection_reason" in source.columns:
            if filters.reason == "kept":
                clauses.append("t.rejection_reason IS NULL")
            else:
                clauses.append("t.rejection_reason = ?")
                params.append(filters.reason)
        for name, (low, high) in filters.ranges.items():
            column = RANGES[name]
            if column not in source.columns:
                clauses.append("false")  # no such scores in this folder: nothing is in the range
                continue
            if low is not None:
                clauses.append(f"t.{column} >= ?")
                params.append(low)
            if high is not None:
                clauses.append(f"t.{column} <= ?")
                params.append(high)
        if filters.right and source.scores is not None:
            clauses.append("s.eval_correct" if filters.right == "yes" else "NOT coalesce(s.eval_correct, false)")
        if filters.q:
            searched = [c for c in SEARCHED if c in source.columns]
            if filters.q.lower() == filters.q.upper():
                # Nothing to fold (digits, signs): a plain substring test, about 3x faster than the regex.
                match, literal = "contains(t.{c}, '{p}')", filters.q
            else:
                # RE2 on the escaped literal, case-insensitive: about twice as fast as ILIKE over long thoughts.
                match, literal = "regexp_matches(t.{c}, '{p}', 'i')", re.escape(filters.q)
            pattern = literal.replace("'", "''")  # inlined, quoted: a constant pattern is compiled once
            clauses.append("(" + " OR ".join(match.format(c=c, p=pattern) for c in searched) + ")"
                           if searched else "false")
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params

    def _hit_table(self, source: Source, filters: Filters) -> str:
        """A text search's matching rows as a small table of keys and sort columns, made by one scan and kept
        for the next pages (the ``HIT_TABLES`` latest searches; a file that changed makes a new one)."""
        where, params = self._where(source, filters)
        files = tuple((str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in source.files)
        key = (files, str(source.scores), where, tuple(params))
        with self._hits_lock:
            if key in self._hits:
                self._hits.move_to_end(key)
                return self._hits[key]
            self._hits_made += 1
            name = f"hits_{self._hits_made}"
            keep = ["problem_id", "sample_index", *(c for c in SORTS if c in source.columns)]
            self.cursor().execute(f"CREATE TABLE {name} AS SELECT {', '.join(f't.{c}' for c in keep)} "
                                  f"FROM {self._from(source)}{where}", params)
            self._hits[key] = name
            while len(self._hits) > HIT_TABLES:
                _, old = self._hits.popitem(last=False)
                self.cursor().execute(f"DROP TABLE IF EXISTS {old}")
            return name

    def count(self, source: Source, filters: Filters) -> int:
        if filters.q:
            return self.cursor().execute(f"SELECT count(*) FROM {self._hit_table(source, filters)}").fetchone()[0]
        where, params = self._where(source, filters)
        return self.cursor().execute(f"SELECT count(*) FROM {self._from(source)}{where}", params).fetchone()[0]

    @staticmethod
    def _order(source: Source, filters: Filters, prefix: str = "t.") -> str:
        order = f"{prefix}problem_index, {prefix}sample_index"
        if filters.sort != "problem_index" and filters.sort in source.columns:
            return f"{prefix}{filters.sort} {'DESC' if filters.desc else 'ASC'} NULLS LAST, {order}"
        if filters.desc:
            return f"{prefix}problem_index DESC, {prefix}sample_index"
        return order

    def page(self, source: Source, filters: Filters, per_page: int = PER_PAGE) -> list[dict[str, Any]]:
        select = [f"left(t.{c}, 140) AS {c}" if c in ("problem", "answer") else f"t.{c}"
                  for c in LIST_COLUMNS if c in source.columns]
        if source.scores is not None:
            select.append("s.eval_correct AS eval_correct")
        limit = f"LIMIT {int(per_page)} OFFSET {(filters.page - 1) * int(per_page)}"
        if filters.q:  # the page's keys from the search's table, then only those rows' columns
            keys = self.cursor().execute(f"SELECT problem_id, sample_index FROM {self._hit_table(source, filters)} "
                                         f"ORDER BY {self._order(source, filters, '')} {limit}").fetchall()
            if not keys:
                return []
            ids = list(dict.fromkeys(pid for pid, _ in keys))
            cursor = self.cursor().execute(f"SELECT {', '.join(select)} FROM {self._from(source)} WHERE t.problem_id "
                                           f"IN ({', '.join('?' * len(ids))})", ids)
            names = [d[0] for d in cursor.description]
            found = {}
            for row in cursor.fetchall():
                record = dict(zip(names, row, strict=True))
                found.setdefault((record["problem_id"], record["sample_index"]), record)
            return [found[k] for k in keys if k in found]
        where, params = self._where(source, filters)
        sql = (f"SELECT {', '.join(select)} FROM {self._from(source)}{where} "
               f"ORDER BY {self._order(source, filters)} {limit}")
        cursor = self.cursor().execute(sql, params)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def reasons(self, source: Source) -> list[str]:
        if "rejection_reason" not in source.columns:
            return []
        rows = self.cursor().execute(f"SELECT DISTINCT rejection_reason FROM {source.relation} "
                                     "WHERE rejection_reason IS NOT NULL ORDER BY 1").fetchall()
        return [r[0] for r in rows]

    # --- one problem -------------------------------------------------------------------------------------------

    def problem_samples(self, source: Source, problem_id: str) -> list[dict[str, Any]]:
        """Every sample of one problem (the wide columns too, but only these rows)."""
        select = [f"t.{c}" for c in SAMPLE_COLUMNS if c in source.columns]
        if source.scores is not None:
            select.append("s.eval_correct AS eval_correct")
        cursor = self.cursor().execute(f"SELECT {', '.join(select)} FROM {self._from(source)} "
                                       "WHERE t.problem_id = ? ORDER BY t.sample_index", [problem_id])
        names = [d[0] for d in cursor.description]
        rows, seen = [], set()
        for row in cursor.fetchall():
            record = dict(zip(names, row, strict=True))
            if record["sample_index"] not in seen:  # a live run's rerun may hold a problem twice: the first
                seen.add(record["sample_index"])
                rows.append(record)
        return rows

    # --- the summary -------------------------------------------------------------------------------------------

    def summary(self, source: Source) -> dict[str, Any]:
        """Counts per reason, a pass-rate histogram over problems and a token histogram over samples."""
        cursor = self.cursor()
        rel = source.relation
        outcome = ("coalesce(rejection_reason, 'kept')" if "rejection_reason" in source.columns
                   else "'not curated'")  # a folder from elsewhere
        reasons = dict(cursor.execute(f"SELECT {outcome} AS r, count(*) FROM {rel} "
                                      "GROUP BY r ORDER BY count(*) DESC").fetchall())
        problems = cursor.execute(f"SELECT count(DISTINCT problem_id) FROM {rel}").fetchone()[0]
        out: dict[str, Any] = {"samples": sum(reasons.values()), "problems": problems, "reasons": reasons,
                               "kept": reasons.get("kept", 0)}
        if "pass_rate" in source.columns:
            rows = cursor.execute(f"SELECT least(floor(pr * 10), 9)::INT AS b, count(*) FROM (SELECT problem_id, "
                                  f"any_value(pass_rate) AS pr FROM {rel} GROUP BY problem_id) WHERE pr IS NOT NULL "
                                  "GROUP BY b ORDER BY b").fetchall()
            counts = dict(rows)
            out["pass_rate_hist"] = [(f"{b / 10:.1f}–{(b + 1) / 10:.1f}", counts.get(b, 0)) for b in range(10)]
        if "completion_tokens" in source.columns:
            low, high, most = cursor.execute(f"SELECT min(completion_tokens), quantile_disc(completion_tokens, 0.99), "
                                             f"max(completion_tokens) FROM {rel}").fetchone()
            if low is not None:
                width = max(1, math.ceil((int(high) - int(low) + 1) / 20))
                rows = cursor.execute(f"SELECT least((completion_tokens - {int(low)}) // {width}, 20)::INT AS b, "
                                      f"count(*) FROM {rel} WHERE completion_tokens IS NOT NULL GROUP BY b").fetchall()
                counts = dict(rows)
                out["tokens_hist"] = [(f"{low + b * width}–{low + (b + 1) * width - 1}" if b < 20
                                       else f"≥{low + 20 * width}", counts.get(b, 0))
                                      for b in range(21) if b < 20 or counts.get(b)]
                out["tokens_max"] = most
        return out
