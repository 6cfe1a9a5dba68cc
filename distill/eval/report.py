"""The eval's output: ``results.json`` (every number), ``report.md`` (models side by side) and PNG plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from distill.eval.config import EvalConfig
from pipelines.store import write_text_atomic


def pct(value: float | None, se: float | None = None) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.1f}" + (f" ± {100 * se:.1f}" if se is not None else "")


def num(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def headline(run: dict[str, Any]) -> dict[str, Any]:
    """The numbers a reader compares: on the clean problems when some leaked, else on all."""
    return run["clean"] if run.get("clean") else run["all"]


def _cell(run: dict[str, Any] | None) -> str:
    if run is None:
        return "–"
    head = headline(run)
    return pct(head.get("pass@1"), head.get("pass@1_se"))


def _k(metrics: dict[str, Any], name: str) -> tuple[str, float | None]:
    curve = metrics.get(name) or {}
    if not curve:
        return "", None
    k = max(curve, key=int)
    return k, curve[k]


def _detail_rows(name: str, run: dict[str, Any], subset: str) -> str:
    mtr = run[subset]
    k, pk = _k(mtr, "pass@k")
    mk, mj = _k(mtr, "maj@k")
    cal = (mtr.get("calibration") or {}).get("ece")
    cal_lp = (mtr.get("calibration_logprob") or {}).get("ece")
    tokens = mtr.get("tokens") or {}
    extra = f" | {num(mtr.get('chrf'))} | {num(mtr.get('wer'))}" if "chrf" in mtr else ""
    return (f"| {name} | {subset} | {mtr['problems']} | {pct(mtr.get('pass@1'), mtr.get('pass@1_se'))} | "
            f"{pct(pk)} (k={k}) | {pct(mj)}{f' (k={mk})' if mk else ''} | {pct(mtr.get('format_adherence'))} | "
            f"{pct(mtr.get('truncation_rate'))} | {num(tokens.get('mean'), 1)} / {num(tokens.get('median'), 1)} | "
            f"{num(cal)} | {num(cal_lp)} | {num(mtr.get('chain_rouge_l'))} | {mtr.get('errors', 0)}{extra} |")


def render_markdown(cfg: EvalConfig, results: dict[str, Any]) -> str:
    models = list(results["models"])
    sets = list(results["sets"])
    lines = ["# distill eval", "",
             f"Models: {', '.join(models)}. Sets: {', '.join(sets)}. Each cell: pass@1 (%, mean over the k samples) "
             "± its standard error over problems; on the problems that did not leak into the training data "
             "when some did (see Leakage).", "",
             "| set | distribution | " + " | ".join(models) + " |",
             "|---|---|" + "---|" * len(models)]
    for name in sets:
        info = results["sets"][name]
        cells = [_cell(results["runs"].get(m, {}).get(name)) for m in models]
        lines.append(f"| {name} | {info['distribution']['label']} | " + " | ".join(cells) + " |")
    lines += ["", "Confidence for ECE: the share of a problem's k samples giving the same final answer "
              "(self-consistency); ECE (lp): exp(mean token log-probability) where the model returned them. "
              "Chain: ROUGE-L F1 of the thought against the teacher's thoughts on the same problem "
              f"({results.get('teacher_traces') or 'no --teacher-traces'}).", ""]
    for name in sets:
        info = results["sets"][name]
        leak = info["leakage"]
        similarity = info["verification"] == "similarity"
        lines += [f"## {name}", "",
                  f"{info['problems']} problems from `{info['source']}` ({info['family']}; verification "
                  f"{info['verification']}). Distribution: **{info['distribution']['label']}** "
                  f"({info['distribution']['reason']}). Leakage ({leak['ngram']}-gram overlap with --train): "
                  f"**{leak['count']}** problem(s)" + (", excluded from the `clean` rows." if leak["count"] else "."),
                  "", "| model | subset | problems | pass@1 ± SE | pass@k | maj@k | format | truncated | "
                  "tokens mean / median | ECE | ECE (lp) | chain | errors |" + (" chrF | WER |" if similarity else ""),
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|" + ("---|---|" if similarity else "")]
        for model in models:
            run = results["runs"].get(model, {}).get(name)
            if run is None:
                continue
            lines.append(_detail_rows(model, run, "all"))
            if run.get("clean"):
                lines.append(_detail_rows(model, run, "clean"))
        lines += ["", f"![pass@k]({_plot_name('passk', name)}) ![reliability]({_plot_name('reliability', name)}) "
                      f"![tokens]({_plot_name('tokens', name)})", ""]
    return "\n".join(lines).replace(" | (k=)", " | ").rstrip() + "\n"


def _plot_name(kind: str, set_name: str) -> str:
    return f"plots/{kind}-{set_name}.png"


def write_report(cfg: EvalConfig, results: dict[str, Any],
                 samples: dict[tuple[str, str], list[dict[str, Any]]]) -> None:
    from distill.eval.plots import write_plots

    cfg.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(cfg.out / "results.json", json.dumps(results, indent=2, default=str) + "\n")
    write_plots(cfg.out, results, samples, _plot_name)
    write_text_atomic(cfg.out / "report.md", render_markdown(cfg, results))


def read_results(out: Path) -> dict[str, Any]:
    return json.loads((out / "results.json").read_text(encoding="utf-8"))
