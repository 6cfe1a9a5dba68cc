"""Post-training quantization of a student checkpoint with torchao, saved with the model (transformers' TorchAoConfig).

``int8``: int8 per-token dynamic activations, int8 weights per output channel. ``int4``: int8 dynamic activations,
int4 weights in groups of 32: the scheme Axolotl's ``qat:`` section fake-quantizes during QAT/QAD
(axolotl_configs/*-qat-*.yaml), so a QAD student is exported with the very noise it was trained under. The folder
loads with ``AutoModelForCausalLM.from_pretrained`` wherever torchao is installed (and so in ``distill eval``,
backend transformers). The embedding (tied to the output head) stays in full precision, as in the QAT configs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from pipelines.spec import SpecError

Scheme = Literal["int8", "int4"]
MANIFEST = "ondevice.json"


class ExportModelOptions(BaseModel):
    target: Literal["torchao", "executorch"] = "torchao"
    # torchao: None = no torchao folder (a GGUF only); executorch: None = int4 (8da4w), fp32 = no quantization
    quantize: Literal["int8", "int4", "fp32"] | None = None
    group_size: int = Field(32, gt=0)  # int4: inputs per weight scale (Axolotl's qat.group_size)
    gguf: bool = False
    gguf_type: Literal["q8_0", "q4_0", "f32"] = "q8_0"
    max_seq_len: int = Field(512, ge=16)  # executorch: the static KV cache's length


def torchao_config(scheme: Scheme, group_size: int = 32) -> Any:
    """The torchao config of a scheme (weights stored as int8 values, so safetensors can hold them)."""
    import torch
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig
    from torchao.quantization.granularity import PerAxis, PerGroup

    if scheme == "int8":
        return Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int8, weight_granularity=PerAxis(0))
    return Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, weight_granularity=PerGroup(group_size))


def check_checkpoint(ckpt: Path) -> dict[str, Any]:
    """The checkpoint's config.json (a model folder with weights), or a one-line error naming CKPT."""
    config = ckpt / "config.json"
    if not config.is_file():
        raise SpecError(f"CKPT: {ckpt} has no config.json (not a model folder)")
    if not any(ckpt.glob("*.safetensors")) and not any(ckpt.glob("pytorch_model*.bin")):
        raise SpecError(f"CKPT: {ckpt} has no weights (*.safetensors)")
    data = json.loads(config.read_text())
    if data.get("quantization_config"):
        raise SpecError(f"CKPT: {ckpt} is already quantized ({data['quantization_config'].get('quant_method')}); "
                        "give the full-precision checkpoint")
    return data


def group_size_fits(ckpt_config: dict[str, Any], group_size: int) -> None:
    widths = {"hidden_size": ckpt_config.get("hidden_size"), "intermediate_size": ckpt_config.get("intermediate_size")}
    for name, width in widths.items():
        if isinstance(width, int) and width % group_size:
            raise SpecError(f"--group-size: {group_size} does not divide the model's {name} ({width})")


def quantize_checkpoint(ckpt: Path, out: Path, scheme: Scheme, group_size: int = 32) -> dict[str, Any]:
    """Quantize every linear layer of ``ckpt`` and save model + tokenizer to ``out``; returns sizes in bytes."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TorchAoConfig

    ckpt_config = check_checkpoint(ckpt)
    if scheme == "int4":
        group_size_fits(ckpt_config, group_size)
    model = AutoModelForCausalLM.from_pretrained(
        ckpt, dtype=torch.float32, quantization_config=TorchAoConfig(quant_type=torchao_config(scheme, group_size)))
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(ckpt).save_pretrained(out)
    return {"source_bytes": _weights_bytes(ckpt), "bytes": _weights_bytes(out)}


def _weights_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def write_manifest(out: Path, record: dict[str, Any]) -> None:
    (out / MANIFEST).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
