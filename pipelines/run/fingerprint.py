"""What shaped a cache's samples, so that a rerun never mixes samples of other settings into a dataset.

``<cache>/fingerprint.json`` holds two fingerprints, written when a run starts:

- ``samples``: everything the teacher's answers depend on (model, sampling, prompt, samples per problem, token
  budget, logprobs). A rerun whose settings differ is refused: its samples would not be the same dataset.
- ``curation``: verification (with its similarity, code or judge settings) and the PRM. Changing them needs no
  teacher: the completions already in the cache
  are curated again (``pipelines/run/recurate.py``).

The URL, the backend, the key and the run's batching are not in it: they change how a sample is fetched, not
what it is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from pipelines.spec import DatasetSpec, SpecError
from pipelines.store import part_files, write_text_atomic

FILE = "fingerprint.json"
SAMPLE_FIELDS = {
    "teacher": ("model", "temperature", "top_p", "num_samples", "max_new_tokens", "top_logprobs"),
    "prompt": ("system", "user_template"),
}


def sample_fingerprint(spec: DatasetSpec) -> dict[str, Any]:
    return {f"{section}.{name}": getattr(getattr(spec, section), name)
            for section, names in SAMPLE_FIELDS.items() for name in names}


JUDGE_FIELDS = ("model", "rubric", "threshold", "mode", "temperature", "max_new_tokens", "include_thought")


def curation_fingerprint(spec: DatasetSpec) -> dict[str, Any]:
    # the judge's verdicts, not its URL, key or concurrency; the sandbox limits decide what code passes
    judge = {k: getattr(spec.judge, k) for k in JUDGE_FIELDS} if spec.judge is not None else None
    extra = {"similarity": spec.similarity.model_dump() if spec.verification == "similarity" else None,
             "code": spec.code.model_dump(exclude={"workers"}) if spec.verification == "code" else None,
             "judge": judge}
    # only the settings in use: a cache fingerprinted before they existed is not curated again for nothing
    return {"verification": spec.verification, "prm": spec.prm.model_dump() if spec.prm is not None else None,
            **{k: v for k, v in extra.items() if v is not None}}


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 48 else f"{text[:40]}…'"


def changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``field old → new`` for each field that differs (long values shortened)."""
    return [f"{key} {_shown(old.get(key))} → {_shown(new.get(key))}"
            for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]


def _recorded_models(cache_dir: Path) -> set[str]:
    models: set[str] = set()
    for part in part_files(cache_dir):
        models.update(m for m in pq.read_table(part, columns=["teacher_model"]).column(0).to_pylist() if m)
    return models


def refuse(cache_dir: Path, what: list[str]) -> SpecError:
    return SpecError(f"{cache_dir}: its samples were generated with other settings ({'; '.join(what)}); "
                     "rerun with --fresh to discard them and start over, or give another --out or --cache-dir")


def check(cache_dir: Path, spec: DatasetSpec) -> bool:
    """Refuse a cache whose samples were made differently; record this run's fingerprint.

    Returns whether the samples already there must be curated again (verification or PRM changed).
    A cache from before fingerprints is judged by the teacher model its parts name.
    """
    path = cache_dir / FILE
    samples, curation = sample_fingerprint(spec), curation_fingerprint(spec)
    recurate = False
    if path.exists():
        recorded = json.loads(path.read_text(encoding="utf-8"))
        if what := changes(recorded.get("samples") or {}, samples):
            raise refuse(cache_dir, what)
        recurate = bool(part_files(cache_dir)) and recorded.get("curation") != curation
    else:
        models = _recorded_models(cache_dir)
        if models and spec.teacher.model not in models:
            raise refuse(cache_dir, [f"teacher.model {_shown(sorted(models)[0])} → {_shown(spec.teacher.model)}"])
    if not recurate:
        record(cache_dir, spec)
    return recurate


def record(cache_dir: Path, spec: DatasetSpec) -> None:
    """Write the fingerprint (after a re-curation: only once every part is curated the new way)."""
    write_text_atomic(cache_dir / FILE, json.dumps({"samples": sample_fingerprint(spec),
                                                    "curation": curation_fingerprint(spec)}, indent=2) + "\n")
