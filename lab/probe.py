"""What the lab's probes (lab/reverse_probe.py, lab/sft_probe.py) share: render one student's recipe with
`distill config` as the lab does and train it with Axolotl, once per folder."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DISTILL = [str(ROOT / ".venv" / "bin" / "python"), "-m", "distill.cli"]


def train_student(method: str, name: str, export: Path, student: Path, out: Path, sets: dict[str, Any],
                  extra: list[str] | None = None) -> dict[str, Any]:
    """`distill config METHOD` (the keys in ``sets``, then ``extra`` arguments), `axolotl train` into
    ``out/NAME``; the losses it logged. A folder already trained by the probe is reused."""
    from distill.axolotl.train import losses, run_axolotl

    folder = out / name
    done = folder / "probe-trained.json"
    if done.exists():
        return json.loads(done.read_text())
    argv = [*DISTILL, "config", method, "--dataset", str(export), "--student", str(student), "--out",
            str(out / "configs" / f"{name}.yaml"), "--output-dir", str(folder), "--prepared-dir",
            str(out / "prepared" / name), "--smoke", *(a for k, v in sets.items() for a in ("--set", f"{k}={v}")),
            *(extra or [])]
    result = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, check=True)
    (config,) = [Path(p) for p in re.findall(r"wrote (\S+\.yaml)", result.stdout)]
    print(f"  {name}: axolotl train {config} (from {student})", flush=True)
    steps_loss = losses(run_axolotl("train", config, log=out / "logs" / f"{name}.log", cwd=ROOT))
    record = {"losses": steps_loss, "final_loss": steps_loss[-1] if steps_loss else None}
    done.write_text(json.dumps(record) + "\n")
    return record
