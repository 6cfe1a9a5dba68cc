"""Run ``axolotl train|preprocess CONFIG`` from ``.venv-train`` with the environment it needs here.

Axolotl has its own venv (its pins differ from the factory's). Its telemetry retries for minutes without a
network, so it is always off, ``axolotl train`` launches ``accelerate`` from PATH, so the venv's bin comes
first, and the repository root is on PYTHONPATH for the factory's KD plugin. ``make train`` / ``make preprocess``
and the lab call this one function.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from pipelines.spec import SpecError

ROOT = Path(__file__).resolve().parents[2]
VENV_TRAIN = ROOT / ".venv-train"
TELEMETRY_OFF = {"AXOLOTL_DO_NOT_TRACK": "1", "DO_NOT_TRACK": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


def axolotl_env(base: dict[str, str] | None = None) -> dict[str, str]:
    env = {**(base if base is not None else os.environ), **TELEMETRY_OFF, "TOKENIZERS_PARALLELISM": "false"}
    env["PATH"] = f"{VENV_TRAIN / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    # configs load the factory's KD plugin (distill.axolotl.kd_plugin) by name: the repository must be importable
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.pop("VIRTUAL_ENV", None)
    return env


def run_axolotl(command: str, config: Path, log: Path | None = None, cwd: Path | None = None,
                extra: list[str] | None = None, stream: bool = False) -> str:
    """``axolotl COMMAND CONFIG``; returns its output (also written to ``log``), or with ``stream`` shows it as it
    comes (and returns nothing); a failure is one line."""
    binary = VENV_TRAIN / "bin" / "axolotl"
    if not binary.exists():
        raise SpecError(f"{VENV_TRAIN.name} has no axolotl: run `make setup-train`")
    if not Path(config).is_file():
        raise SpecError(f"CONFIG: {config} not found; render one with `distill config`")
    drop_stale_prepared(Path(config), cwd)
    argv = [str(binary), command, str(config), *(extra or [])]
    if stream:
        code = subprocess.run(argv, cwd=cwd, env=axolotl_env(), stdin=subprocess.DEVNULL).returncode
        if code != 0:
            raise SpecError(f"axolotl {command} {config} failed ({code}): see its output above")
        return ""
    result = subprocess.run(argv, capture_output=True, text=True, cwd=cwd, env=axolotl_env(), stdin=subprocess.DEVNULL)
    output = result.stdout + result.stderr
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(output, encoding="utf-8")
    if result.returncode != 0:
        errors = [line for line in output.splitlines() if "Error" in line or "error:" in line]
        raise SpecError(f"axolotl {command} {config} failed ({result.returncode}): "
                        f"{(errors or output.splitlines() or ['no output'])[-1][-300:]}"
                        + (f" (log: {log})" if log else ""))
    return output


def drop_stale_prepared(config: Path, cwd: Path | None = None) -> Path | None:
    """Remove the config's ``dataset_prepared_path`` when a dataset file changed after it was tokenised.

    Axolotl names its prepared data by a hash of the config (paths, types, tokenizer), not of the files' content:
    a re-export to the same path would otherwise train on the old rows without a word. Returns what it removed.
    """
    import shutil

    import yaml

    try:
        data = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return None  # axolotl reports a broken config itself
    prepared = data.get("dataset_prepared_path")
    if not prepared:
        return None
    base = cwd or Path.cwd()
    folder = Path(prepared) if Path(prepared).is_absolute() else base / prepared
    entries = [p for p in folder.rglob("*") if p.is_file()] if folder.is_dir() else []
    if not entries:
        return None
    tokenised = min(p.stat().st_mtime for p in entries)
    files = [Path(d["path"]) if Path(d["path"]).is_absolute() else base / d["path"]
             for d in data.get("datasets") or [] if isinstance(d, dict) and d.get("path")]
    if any(f.is_file() and f.stat().st_mtime > tokenised for f in files):
        shutil.rmtree(folder)
        return folder
    return None


def losses(output: str) -> list[float]:
    """Per-step training losses from Axolotl's log lines."""
    return logged(output, "loss")


def logged(output: str, key: str) -> list[float]:
    """Every value Axolotl's log lines give for ``key`` (e.g. the KD plugin's ``kd_term`` and ``ce_term``)."""
    return [float(v) for v in re.findall(rf"'{re.escape(key)}': '?([-+0-9.eEinfa]+)'?", output)]
