"""What a public dataset page must not carry from the machine it was made on: local paths, server URLs, key names.

By default ``distill publish`` reduces every local path in the spec, the stats and the ``teacher_model`` column to
its file name (``/home/ana/models/r1-7b`` → ``r1-7b``) and removes the teacher's, the judge's and the PRM's
``base_url`` and ``api_key_env``; ``--keep-local-paths`` publishes them as they are. Pure functions over text,
dicts and tables.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pyarrow as pa
import yaml

SERVER_KEYS = ("base_url", "api_key_env")  # removed from the teacher, judge and prm sections
NOTE = "local paths reduced to file names, server URLs and key variables removed"


def is_local_path(value: str) -> bool:
    """An absolute or explicitly relative path, or one that exists here (a Hub id like ``Qwen/X`` is neither)."""
    if not value or "://" in value:
        return False
    return value.startswith(("/", "~", "./", "../")) or (len(value) > 1 and value[1] == ":") or Path(value).exists()


def local_name(value: Any) -> Any:
    """A local path's file name; anything else as it is."""
    if isinstance(value, str) and is_local_path(value):
        return Path(value.rstrip("/\\")).name or value
    return value


def redact_spec_dict(spec: dict[str, Any]) -> dict[str, Any]:
    spec = copy.deepcopy(spec)
    source = spec.get("source")
    if isinstance(source, dict):
        source["path"] = local_name(source.get("path"))
    for section in ("teacher", "judge", "prm"):
        part = spec.get(section)
        if isinstance(part, dict):
            for key in SERVER_KEYS:
                part.pop(key, None)
            for key in ("model", "tokenizer"):
                if key in part:
                    part[key] = local_name(part[key])
    benchmarks = (spec.get("decontamination") or {}).get("benchmarks") if isinstance(spec.get("decontamination"),
                                                                                    dict) else None
    for benchmark in benchmarks or []:
        if isinstance(benchmark, dict):
            benchmark["path"] = local_name(benchmark.get("path"))
    mixed = spec.get("mix") if isinstance(spec.get("mix"), list) else []
    for source_run in mixed:
        if isinstance(source_run, dict):  # `distill mix` nests each source folder's own spec
            source_run["path"] = local_name(source_run.get("path"))
            if isinstance(source_run.get("spec"), dict):
                source_run["spec"] = redact_spec_dict(source_run["spec"])
    return spec


def redact_spec(spec_text: str) -> str:
    """The spec with local context removed (as YAML; comments are not kept). Empty or unreadable: empty."""
    try:
        spec = yaml.safe_load(spec_text) if spec_text.strip() else None
    except yaml.YAMLError:
        return ""
    if not isinstance(spec, dict):
        return ""
    return yaml.safe_dump(redact_spec_dict(spec), sort_keys=False, allow_unicode=True, width=100)


def redact_stats(stats: dict[str, Any]) -> dict[str, Any]:
    stats = copy.deepcopy(stats)
    stats["teacher_model"] = local_name(stats.get("teacher_model"))
    if stats.get("source") is not None:
        stats["source"] = local_name(stats["source"])
    prm = stats.get("prm")
    if isinstance(prm, dict):
        for key in SERVER_KEYS:
            prm.pop(key, None)
        prm["model"] = local_name(prm.get("model"))
    return stats


def redact_table(table: pa.Table) -> pa.Table:
    """``teacher_model`` values that are local paths become file names."""
    if "teacher_model" not in table.column_names:
        return table
    column = table.schema.get_field_index("teacher_model")
    values = [local_name(v) for v in table.column(column).to_pylist()]
    return table.set_column(column, table.schema.field(column), pa.array(values, pa.string()))
