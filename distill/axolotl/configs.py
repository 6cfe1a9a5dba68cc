"""Render runnable Axolotl configs from the commented templates in ``axolotl_configs/``.

The templates are complete configs; rendering rewrites the values of a few keys in the text (the student, the
exported files, the output folders, the sequence length) and keeps every comment. A curriculum export gives
two configs, stage 2 starting from stage 1's output.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from distill.axolotl.kd_plugin.rules import AXOLOTL_PLUGINS, DIVERGENCES, PLUGIN, kd_config_problem
from pipelines.spec import SpecError

TEMPLATES_DIR = Path(__file__).resolve().parents[2] / "axolotl_configs"
METHODS = {"sft": "sft-qwen2.5-1.5b.yaml", "kd": "kd-qwen2.5-1.5b.yaml", "kd-online": "kd-online-qwen2.5-1.5b.yaml",
           "prm": "prm-qwen2.5-1.5b.yaml"}
DELETE = object()  # a value that removes the key
# A few steps on CPU in float32: for tests and plumbing checks, never for a real run.
SMOKE: dict[str, Any] = {
    "max_steps": 3, "num_epochs": 1, "micro_batch_size": 1, "gradient_accumulation_steps": 1, "val_set_size": 0.0,
    "logging_steps": 1, "save_strategy": "no", "evals_per_epoch": DELETE, "saves_per_epoch": DELETE,
    "save_total_limit": DELETE, "warmup_ratio": DELETE, "optimizer": "adamw_torch", "lr_scheduler": "constant",
    "learning_rate": 1.0e-3, "bf16": False, "fp16": False, "tf32": False, "flash_attention": DELETE,
    "attn_implementation": "sdpa",
    "gradient_checkpointing": False, "sample_packing": False, "pad_to_sequence_len": False, "deepspeed": DELETE,
    "fsdp_version": DELETE, "fsdp_config": DELETE, "dataloader_num_workers": 0,
}
# Quantization-aware training (QAD with a KD template): int8 dynamic activations + int4 weights in groups of 32, the
# scheme `distill export-model --quantize int4` applies after training (axolotl_configs/kd-qat-qwen2.5-1.5b.yaml).
QAT: dict[str, Any] = {"qat": {"activation_dtype": "int8", "weight_dtype": "int4", "group_size": 32,
                               "quantize_embedding": False}}
# stepwise_supervised keys Axolotl 0.19 drops (its schema matches the entry as an SFTDataset) and what it uses instead
STEPWISE_DROPPED: dict[str, Any] = {"step_separator": "\n", "train_on_last_step_only": False,
                                    "max_completion_length": None}
# `--loss axolotl_legacy`: Axolotl 0.19's own KD as the templates trained it before the factory's plugin: forward
# KL with the student renormalised over the teacher's k ids (no gradient on any other id, nor on the block's total
# mass), the targets renormalised by Axolotl's KD dataset type. rules.py refuses it for training; it is rendered only
# on this explicit request, to reproduce the measurements made with it (the lab's kd-today arm).
LEGACY_LOSS = "axolotl_legacy"
LEGACY: dict[str, Any] = {"plugins": [AXOLOTL_PLUGINS[0]], "kd_normalize_topk": True, "kd_beta": 0.0,
                          "kd_divergence": DELETE, "kd_jsd_beta": DELETE}
LEGACY_DATASET: dict[str, Any] = {"type": "axolotl.integrations.kd.chat_template"}
_SCALAR = (str, int, float, bool, type(None))
APPENDED = "# --- set by `distill config` (not in the template) ---"


def _dump_scalar(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("\n...").strip()


def _block_end(lines: list[str], start: int) -> int:
    """One past the last line of the top-level key at ``start`` (its indented block, not trailing blanks)."""
    end = start + 1
    while end < len(lines) and (lines[end].startswith((" ", "\t")) or not lines[end].strip()):
        end += 1
    while end > start + 1 and not lines[end - 1].strip():
        end -= 1
    return end


def set_key(text: str, key: str, value: Any) -> str:
    """Set (or with DELETE remove) a top-level key, keeping the other lines and a scalar's inline comment."""
    lines = text.splitlines()
    pattern = re.compile(rf"^{re.escape(key)}:(?P<value>[^#]*?)(?P<comment>\s+#.*)?$")
    index = next((i for i, line in enumerate(lines) if pattern.match(line)), None)
    if value is DELETE:
        if index is not None:
            del lines[index:_block_end(lines, index)]
        return "\n".join(lines) + "\n"
    if isinstance(value, _SCALAR):
        new = [f"{key}: {_dump_scalar(value)}"]
    else:
        new = yaml.safe_dump({key: value}, sort_keys=False, default_flow_style=False).rstrip().splitlines()
    if index is None:
        header = [] if APPENDED in lines else ["", APPENDED]
        return "\n".join(lines + header + new) + "\n"
    match = pattern.match(lines[index])
    end = _block_end(lines, index)
    if isinstance(value, _SCALAR) and match and match.group("comment") and end == index + 1:
        new[0] += match.group("comment")
    lines[index:end] = new
    return "\n".join(lines) + "\n"


def set_dataset_keys(text: str, values: dict[str, Any]) -> str:
    """Set keys of the first ``datasets`` entry in place (its comments stay)."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("datasets:")), None)
    if start is None:
        raise SpecError("--template: the template has no `datasets:` section")
    end = _block_end(lines, start)
    for key, value in values.items():
        pattern = re.compile(rf"^(?P<lead>\s+(?:- )?){re.escape(key)}:(?P<value>[^#]*?)(?P<comment>\s+#.*)?$")
        hit = next((i for i in range(start + 1, end) if pattern.match(lines[i])), None)
        if hit is None:  # add it after the entry's first line, with the entry's indentation
            lead = re.match(r"^(\s+)(- )?", lines[start + 1])
            indent = " " * (len(lead.group(1)) + (2 if lead.group(2) else 0))
            lines.insert(start + 2, f"{indent}{key}: {_dump_scalar(value)}")
            end += 1
            continue
        match = pattern.match(lines[hit])
        lines[hit] = f"{match.group('lead')}{key}: {_dump_scalar(value)}{match.group('comment') or ''}"
    return "\n".join(lines) + "\n"


def render(template_text: str, top_level: dict[str, Any], dataset: dict[str, Any]) -> str:
    """The template with the given values; checked by reading it back."""
    text = set_dataset_keys(template_text, dataset)
    for key, value in top_level.items():
        text = set_key(text, key, value)
    config = yaml.safe_load(text)
    for key, value in top_level.items():
        assert (key not in config) if value is DELETE else config.get(key) == value, key
    for key, value in dataset.items():
        assert config["datasets"][0].get(key) == value, key
    return text


def template_path(method: str, template: str | None) -> Path:
    if method not in METHODS:
        raise SpecError(f"METHOD: {method!r} is not one of {', '.join(METHODS)}")
    name = template or METHODS[method]
    path = Path(name) if Path(name).is_file() else TEMPLATES_DIR / name
    if not path.is_file():
        shipped = ", ".join(sorted(p.name for p in TEMPLATES_DIR.glob("*.yaml")))
        raise SpecError(f"--template: {name!r} not found; give a YAML path or one of: {shipped}")
    return path


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` pairs (values in YAML: 3, false, 1e-4, text) → a dict."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise SpecError(f"--set: {pair!r} is not KEY=VALUE with a top-level Axolotl key")
        value = yaml.safe_load(raw) if raw else None
        if isinstance(value, str):  # YAML 1.1 reads 2e-5 (no dot) as text
            try:
                value = float(value)
            except ValueError:
                pass
        out[key] = value
    return out


def _check_export(method: str, manifest: dict[str, Any], student: str) -> None:
    if method == "kd" and manifest["format"] != "kd":
        raise SpecError("--dataset: an SFT export has no teacher logprobs; export with --format kd for offline KD, "
                        "or use METHOD kd-online")
    if method == "kd" and manifest.get("student") != student and not _same_tokenizer(manifest, student):
        raise SpecError(f"--student: the KD export was aligned to {manifest.get('student')!r}'s tokens; use that "
                        f"student (or one with the same tokenizer) or re-export with --student {student}")


def _same_tokenizer(manifest: dict[str, Any], student: str) -> bool:
    """Another checkpoint is fine when its tokenizer is the one the targets were aligned with (same hash)."""
    from distill.axolotl.export import tokenizer_sha256
    from distill.axolotl.shared_tokenizer import load_tokenizer

    expected = ((manifest.get("kd") or {}).get("distribution") or {}).get("tokenizer_sha256")
    try:
        return expected is not None and tokenizer_sha256(load_tokenizer(student)) == expected
    except (SpecError, OSError, ValueError):
        return False


def stage_values(method: str, manifest: dict[str, Any], export_dir: Path, student: str, output_dir: Path,
                 prepared_dir: Path) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """Per config to write: (stage name, top-level values, first-dataset values)."""
    _check_export(method, manifest, student)
    dataset: dict[str, Any] = {"ds_type": "json" if manifest["file_format"] == "jsonl" else "parquet"}
    if method == "kd":
        # the temperature the stored log-probabilities were computed at (raw: 1.0), not the sampling temperature;
        # Axolotl rescales the targets from it to kd_temperature
        dataset["temperature"] = float((manifest.get("kd") or {}).get("distribution", {}).get("temperature", 1.0))
    common: dict[str, Any] = {}
    if manifest.get("longest_seq_len"):
        common["sequence_len"] = manifest["max_seq_len"]
    files = manifest["files"]
    if len(files) == 1:
        return [("train", {"base_model": student, **common, "output_dir": str(output_dir),
                           "dataset_prepared_path": str(prepared_dir)},
                 {"path": str((export_dir / files[0]["path"]).resolve()), **dataset})]
    stages = []
    previous = None
    for entry in files:  # stage1 then stage2: each starts from the previous stage's model
        stage_out = output_dir / entry["stage"]
        stages.append((entry["stage"], {
            "base_model": str(previous) if previous else student, **common, "output_dir": str(stage_out),
            "dataset_prepared_path": str(prepared_dir / entry["stage"]),
            # keep the exported easy-to-hard order inside a stage
            "shuffle_merged_datasets": False, "curriculum_sampling": True,
        }, {"path": str((export_dir / entry["path"]).resolve()), **dataset}))
        previous = stage_out
    return stages


def loss_values(template_config: dict[str, Any], loss: str | None, beta: float | None) -> dict[str, Any]:
    """``--loss forward|reverse|jsd|reverse_sampled`` and ``--beta`` (JSD's teacher weight) as config keys of the
    factory's KD plugin (distill/axolotl/kd_plugin): the divergence over the teacher's top k plus a tail bucket, or
    the sampled token's reverse-KL estimate."""
    if loss is None and beta is None:
        return {}
    if loss == LEGACY_LOSS:
        if beta is not None:
            raise SpecError(f"--beta: not with --loss {LEGACY_LOSS} (Axolotl's forward KL only: its truncated "
                            "reverse KL / JSD is not a divergence)")
        if PLUGIN not in (template_config.get("plugins") or []):
            raise SpecError(f"--loss {LEGACY_LOSS}: rendered from a default KD template (plugins: {PLUGIN})")
        return dict(LEGACY)
    if PLUGIN not in (template_config.get("plugins") or []):
        raise SpecError(f"--loss: read only by the factory's KD plugin ({PLUGIN}); this template lists "
                        f"{template_config.get('plugins')}: use a default KD template")
    divergence = loss or template_config.get("kd_divergence") or "forward"
    if divergence not in DIVERGENCES:
        raise SpecError(f"--loss: {divergence!r} is not one of {', '.join(DIVERGENCES)}")
    if divergence != "jsd":
        if beta is not None:
            raise SpecError(f"--beta: only with --loss jsd (the teacher's weight in the mixture); got --loss "
                            f"{divergence}")
        return {"kd_divergence": divergence, "kd_jsd_beta": DELETE}
    beta = 0.5 if beta is None else beta
    if not 0 < beta < 1:
        raise SpecError(f"--beta: {beta} is not in (0, 1); 0 and 1 are --loss forward and --loss reverse")
    return {"kd_divergence": "jsd", "kd_jsd_beta": beta}


def loss_for_kd_beta(kd_beta: float) -> dict[str, Any]:
    """GKD's beta (TRL's and Axolotl's ``kd_beta`` convention) as ``write_configs`` arguments: 0 keeps the
    template's divergence (forward KL), 1 is reverse KL, in between the generalized JSD with that beta."""
    if kd_beta == 0:
        return {}
    return {"loss": "reverse"} if kd_beta == 1 else {"loss": "jsd", "beta": kd_beta}


def check_kd(text: str) -> None:
    """Refuse a KD config whose loss is not a divergence or whose targets would not be raw (rules.py)."""
    problem = kd_config_problem(yaml.safe_load(text) or {})
    if problem:
        raise SpecError(problem)


def write_configs(method: str, export_dir: Path, manifest: dict[str, Any], student: str, out: Path,
                  template: str | None = None, output_dir: Path | None = None, prepared_dir: Path | None = None,
                  overrides: dict[str, Any] | None = None, smoke: bool = False, qat: bool = False,
                  loss: str | None = None, beta: float | None = None) -> list[Path]:
    """Render one config (or one per curriculum stage: ``<out>-stage1.yaml`` …); returns the paths written.
    ``qat`` adds the QAT section (a template's own ``qat:`` block is kept: it already says how); ``loss`` and
    ``beta`` pick the KD divergence. Every KD config is checked before anything is written."""
    text = template_path(method, template).read_text(encoding="utf-8")
    template_config = yaml.safe_load(text) or {}
    if method not in ("kd", "kd-online") and (loss is not None or beta is not None):
        raise SpecError(f"--loss: only for kd and kd-online, not {method}")
    legacy = loss == LEGACY_LOSS
    if legacy and method != "kd":
        raise SpecError(f"--loss {LEGACY_LOSS}: offline kd only (it reproduces the lab's earlier KD), not {method}")
    kd_values = loss_values(template_config, loss, beta)
    output_dir = output_dir or Path("out/train") / out.stem
    prepared_dir = prepared_dir or Path("out/prepared") / out.stem
    rendered = []
    for stage, top_level, dataset in stage_values(method, manifest, export_dir, student, output_dir, prepared_dir):
        values = {**top_level, **kd_values, **(SMOKE if smoke else {}),
                  **(QAT if qat and "qat" not in template_config else {}), **(overrides or {})}
        path = out if stage == "train" else out.with_name(f"{out.stem}-{stage}{out.suffix or '.yaml'}")
        header = (f"# Rendered by `distill config {method}` from {template_path(method, template).name} for "
                  f"{export_dir}" + (f" ({stage})" if stage != "train" else "") + (" [smoke profile]" if smoke else "")
                  + (" [QAT]" if qat else "")
                  + (f"\n# [{LEGACY_LOSS}] Axolotl's own top-k-normalised forward KL, no gradient outside the "
                     "teacher's k ids: refused for training (kd_plugin/rules.py), rendered to reproduce old "
                     "measurements only" if legacy else "")
                  + "\n")
        body = render(text, values, {**dataset, **(LEGACY_DATASET if legacy else {})})
        if not legacy:  # the legacy loss is exactly what the rules refuse
            check_kd(body)
        rendered.append((path, header + body))
    for path, content in rendered:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
    return [path for path, _ in rendered]


def write_prm_config(labels: Path, student: str, out: Path, mode: str = "hard", template: str | None = None,
                     output_dir: Path | None = None, prepared_dir: Path | None = None,
                     overrides: dict[str, Any] | None = None, smoke: bool = False) -> tuple[Path, dict[str, Any]]:
    """``distill config prm``: write the boolean stepwise file for ``labels.jsonl`` (``--labels hard|soft``, next to
    it) and a config training a PRM on it; returns the config and what the file holds."""
    from prm.stepwise_data import write_stepwise

    if mode not in ("hard", "soft"):
        raise SpecError(f"--labels: {mode!r} is not hard or soft")
    path = template_path("prm", template)
    text = path.read_text(encoding="utf-8")
    entry = (yaml.safe_load(text).get("datasets") or [{}])[0]
    for key, default in STEPWISE_DROPPED.items():
        if entry.get(key, default) != default:
            raise SpecError(f"--template: {key}: {entry[key]!r} would be ignored: Axolotl 0.19 reads the dataset entry "
                            f"as an SFT one, without {key}, and trains with {default!r}; keep {default!r}")
    data, stats = write_stepwise(labels, mode)  # type: ignore[arg-type]
    output_dir = output_dir or Path("out/train") / out.stem
    prepared_dir = prepared_dir or Path("out/prepared") / out.stem
    values = {"base_model": student, "output_dir": str(output_dir), "dataset_prepared_path": str(prepared_dir),
              **(SMOKE if smoke else {}), **(overrides or {})}
    dataset = {"path": str(data.resolve()), "ds_type": "json"}
    header = (f"# Rendered by `distill config prm` from {path.name} for {labels} ({mode} labels: {stats['rows']} "
              f"rows, {stats['positive_steps']} of {stats['steps']} steps good)"
              + (" [smoke profile]" if smoke else "") + "\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(header + render(text, values, dataset), encoding="utf-8")
    return out, stats
