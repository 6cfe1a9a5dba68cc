"""Render the dataset card (README.md with YAML metadata) from stats.json, the spec and the configs.

A pure function of its inputs: every number on the card comes from ``stats.json`` or the published
tables, and the spec is quoted verbatim.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from distill.axolotl.curriculum import CurriculumConfig
from pipelines.spec import TeacherConfig


@dataclass
class CardInputs:
    repo_id: str
    stats: dict[str, Any]
    spec_text: str
    config_rows: dict[str, int]  # config name -> rows, "default" first
    histogram: str | None = "trace_lengths.png"
    axolotl_configs: list[str] = field(default_factory=list)
    redacted: bool = False  # the spec had its local context removed (publish/redact.py)


def _size_category(rows: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                        (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M")):
        if rows < limit:
            return name
    return "n>10M"


def card_metadata(inputs: CardInputs, spec: dict[str, Any]) -> dict[str, Any]:
    configs = []
    for name in inputs.config_rows:
        entry: dict[str, Any] = {"config_name": name,
                                 "data_files": [{"split": "train", "path": f"data/{name}/train-*.parquet"}]}
        if name == "default":
            entry["default"] = True
        configs.append(entry)
    return {
        "license": spec.get("license") or "unknown",
        "pretty_name": spec.get("name") or inputs.repo_id.split("/")[-1],
        "task_categories": ["text-generation"],
        "language": ["en"],
        "tags": ["reasoning", "distillation", "synthetic", "chain-of-thought"],
        "size_categories": [_size_category(inputs.config_rows.get("default", 0))],
        "configs": configs,
    }


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _generation(spec: dict[str, Any], stats: dict[str, Any]) -> str:
    try:
        teacher = TeacherConfig.model_validate(spec.get("teacher") or {}).model_dump()
    except ValueError:
        teacher = dict(spec.get("teacher") or {})
    keys = ["backend", "num_samples", "temperature", "top_p", "max_new_tokens", "top_logprobs"]
    rows = [["teacher model", f"`{stats.get('teacher_model') or teacher.get('model')}`"]]
    rows += [[k, teacher.get(k)] for k in keys if k in teacher]
    return _table(["setting", "value"], rows)


PRM_KEYS = ("model", "style", "backend", "aggregation", "threshold")


def _prm(spec: dict[str, Any], stats: dict[str, Any]) -> str:
    """The PRM as the run used it (``stats.json``, defaults filled in), else as the spec wrote it."""
    prm = stats.get("prm") or spec.get("prm")
    if not isinstance(prm, dict) or not prm:
        return "No process reward model was used: traces are filtered by parsing and answer verification only."
    rows = [[k, f"`{prm[k]}`" if k == "model" else prm[k]] for k in PRM_KEYS if k in prm]
    rejected = (stats.get("reasons") or {}).get("prm", 0)
    return ("Each step of a parsed, verified trace was scored by a process reward model; traces whose aggregated "
            f"score is below the threshold are rejected with reason `prm` ({rejected} samples).\n\n"
            + _table(["PRM setting", "value"], rows))


def _reasons(stats: dict[str, Any]) -> str:
    samples = stats.get("samples") or 0
    rows = [[f"`{reason}`", count, f"{count / samples:.1%}" if samples else "-"]
            for reason, count in (stats.get("reasons") or {}).items()]
    return _table(["outcome", "samples", "share"], rows)


def _decontamination(stats: dict[str, Any]) -> str:
    report = stats.get("decontamination")
    if not report:
        return "No decontamination report was recorded for this run."
    benchmarks = report.get("benchmarks") or []
    if not benchmarks:
        return (f"No benchmarks were configured (`decontamination.benchmarks` is empty): "
                f"{report.get('checked', 0)} problems were not checked against evaluation sets.")
    if report.get("min_overlap"):
        rule = (f"Problems whose informative word {report['ngram']}-grams overlap one benchmark problem's by at least "
                f"{report['min_overlap']:.0%} (of the smaller text's; n-grams in more than {report.get('max_df')} of "
                "the benchmark's problems are stock phrases and do not count)")
    else:
        rule = f"Problems sharing any word {report['ngram']}-gram with a benchmark problem"
    text = (f"{rule} were dropped before generation: **{report['contaminated']}** of {report['checked']} "
            "problems.\n\n")
    text += _table(["benchmark", "problems indexed"], [[b["name"], b["problems"]] for b in benchmarks])
    dropped = report.get("dropped") or []
    if dropped:
        text += "\n\nDropped problems:\n\n" + _table(
            ["problem_id", "benchmark", "benchmark row", "overlap", "shared n-gram", "benchmark problem"],
            [[f"`{d['problem_id']}`", d["benchmark"], d["benchmark_index"], d.get("overlap", "-"), f"`{d['ngram']}`",
              _cell(d.get("benchmark_problem") or "")] for d in dropped])
    return text


def _cell(text: str, limit: int = 120) -> str:
    """Text for one table cell: one line, no pipes, clipped."""
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _dedupe(stats: dict[str, Any]) -> str:
    report = stats.get("dedupe")
    if not report:
        return "No dedupe report was recorded for this run."
    if not report.get("enabled", True):
        return "Dedupe was switched off for this run."
    return (f"Before generation, exact duplicates (case/whitespace-normalised) and near duplicates (MinHash-LSH, "
            f"{report['num_perm']} permutations, Jaccard ≥ {report['near_threshold']}) were dropped: "
            f"**{report['exact']}** exact and **{report['near']}** near duplicates of {report['checked']} problems.")


def _selection(stats: dict[str, Any]) -> str | None:
    """The ``distill select`` report, when this dataset is a selection."""
    report = stats.get("selection")
    if not report:
        return None
    config = report.get("config") or {}
    text = (f"This dataset is a cold-start selection (`distill select --budget {config.get('budget')}`): "
            f"**{report['selected']}** of {report['candidates']} problems with a verified trace ({report['problems']} "
            "in the run), one trace per problem (the highest PRM score, else the shortest verified trace), hard but "
            f"solvable problems first (lowest teacher pass rate; at most {config.get('max_pass_rate')}), taken "
            f"round-robin over {report['clusters']} MinHash clusters of the problems (Jaccard ≥ "
            f"{config.get('cluster_threshold')}; {report['clusters_selected']} clusters represented). Each row's "
            "`selection_reason` says why it was picked. The counts above describe the run it was selected from.\n\n")
    text += _table(["outcome", "problems"], [[f"`{k}`", v] for k, v in (report.get("outcome") or {}).items()])
    selected, candidates = report.get("pass_rate_selected") or {}, report.get("pass_rate_candidates") or {}
    text += "\n\n" + _table(["teacher pass rate", "selected", "candidates"],
                             [[b, selected.get(b, 0), candidates.get(b, 0)] for b in candidates])
    return text


def _mix(stats: dict[str, Any]) -> str | None:
    """The ``distill mix`` sources and their counts, when this dataset is a mix."""
    mix = stats.get("mix")
    if not mix:
        return None
    rows = [[f"`{s['name']}`", s["available"], s.get("ratio") if s.get("ratio") is not None else "-",
             s.get("cap") if s.get("cap") is not None else "-", s["rows"]] for s in mix["sources"]]
    return (f"This dataset mixes {len(rows)} dataset folders (`distill mix`, seed {mix.get('seed')}, "
            f"{mix.get('order')} order):\n\n" + _table(["source", "available", "ratio", "cap", "rows"], rows))


def _training(inputs: CardInputs) -> str:
    names = [n for n in inputs.config_rows if n == "default" or n == "kd"]
    snippet = "\n".join(f"  - path: {inputs.repo_id}\n    name: {n}\n    split: train\n    type: chat_template\n"
                        f"    field_messages: messages" for n in names[:1])
    text = ("The `default` config is chat-formatted SFT data (`messages`). In an Axolotl config point `datasets` "
            f"at this repo:\n\n```yaml\ndatasets:\n{snippet}\n```\n\n")
    if inputs.axolotl_configs:
        text += "The factory ships ready-made Axolotl configs; set their `datasets.path` to this repo and run:\n\n"
        text += "\n".join(f"- `make train CONFIG=axolotl_configs/{name}`" for name in inputs.axolotl_configs)
    else:
        text += "Then run `axolotl train <config>.yaml` (or `make train CONFIG=...` in the factory repo)."
    if "kd" in inputs.config_rows:
        text += ("\n\nThe `kd` config adds the teacher's per-token top-k `logprobs` for knowledge distillation "
                 "(`distill export --format kd` writes the Axolotl KD layout).")
    stages = [n for n in inputs.config_rows if n.startswith("curriculum_stage")]
    curriculum = CurriculumConfig()
    if stages:
        text += (f"\n\nCurriculum: {', '.join(f'`{s}`' for s in stages)} hold the same traces split as "
                 "`distill export --curriculum` does: stage 1 is the short traces of easy problems (teacher pass "
                 f"rate ≥ {curriculum.stage1_min_pass_rate}, length ≤ the {curriculum.stage1_max_length_quantile} "
                 "quantile), stage 2 the rest, each from easy to hard; train on them in order.")
    return text


def _spec_section(inputs: CardInputs, fence: str) -> str:
    if not inputs.spec_text.strip():
        return "## Spec used\n\nThis dataset was not generated by the factory: it has no spec."
    what = ("The spec this dataset was generated from, with local paths reduced to file names and server URLs and "
            "key variables removed" if inputs.redacted else "The exact spec this dataset was generated from")
    return f"## Spec used\n\n{what} (also in `spec.yaml`):\n\n{fence}yaml\n{inputs.spec_text.rstrip()}\n{fence}"


def render_card(inputs: CardInputs) -> str:
    try:
        spec = yaml.safe_load(inputs.spec_text) or {}
    except yaml.YAMLError:
        spec = {}
    spec = spec if isinstance(spec, dict) else {}
    stats = inputs.stats
    tokens = stats.get("tokens") or {}
    meta = yaml.safe_dump(card_metadata(inputs, spec), sort_keys=False, allow_unicode=True)
    source = spec.get("source") or {}
    fence = "`" * max(3, 1 + max((len(run) for run in re.findall(r"`+", inputs.spec_text)), default=0))
    parts = [
        f"---\n{meta}---\n",
        f"# {spec.get('name') or inputs.repo_id}\n",
        (spec.get("description") or "Reasoning traces distilled from a teacher model, verified and filtered.")
        + "\n",
        "## Configs\n\n" + _table(["config", "rows"], [[f"`{k}`", v] for k, v in inputs.config_rows.items()]),
        "## Generation\n\n" + _generation(spec, stats),
        "## Process reward model\n\n" + _prm(spec, stats),
        f"## Verification\n\nMethod: `{stats.get('verification') or spec.get('verification', 'math')}`. "
        f"{stats.get('samples', 0)} samples of {stats.get('problems', 0)} problems; **{stats.get('kept', 0)} kept**, "
        f"{stats.get('rejected', 0)} rejected. Pass rate: **{stats.get('pass_rate', 0):.2%}**"
        + (f"; answer correct rate: {stats['correct_rate']:.2%}" if stats.get("correct_rate") is not None else "")
        + f"; problems with at least one kept trace: {stats.get('problems_with_kept_trace', 0)}.\n\n"
        + _reasons(stats),
        *(f"## {title}\n\n{section}" for title, section in (("Selection", _selection(stats)), ("Mix", _mix(stats)))
          if section),
        "## Token statistics\n\n" + _table(["statistic", "completion tokens"], [[k, v] for k, v in tokens.items()])
        + (f"\n\n![Trace lengths]({inputs.histogram})" if inputs.histogram else ""),
        "## Decontamination\n\n" + _decontamination(stats),
        "## Dedupe\n\n" + _dedupe(stats),
        f"## Source and licence\n\nProblems from `{source.get('path') or stats.get('source') or '?'}`"
        + (f" (config `{source['config']}`)" if source.get("config") else "")
        + f", split `{source.get('split', 'train')}`. Licence of the source: **{spec.get('license') or 'not stated'}**"
        + ("" if spec.get("license") else " (set `license:` in the spec)") + ".",
        "## How to train on it\n\n" + _training(inputs),
        _spec_section(inputs, fence),
    ]
    return "\n\n".join(p.rstrip() for p in parts) + "\n"
