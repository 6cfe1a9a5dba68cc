"""``distill export-model``: a student checkpoint → a quantized model folder (torchao), an ExecuTorch ``.pte``
(``--target executorch``) and/or a GGUF file, each checked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from distill.command import fail, flag_error
from pipelines.spec import SpecError

if TYPE_CHECKING:
    from distill.ondevice.quantize import ExportModelOptions

DEFAULT_SYSTEM = ("Clean up the dictation: fix each disfluency in one step inside <thought>...</thought>, "
                  "then write the clean text.")  # the lab's dictation prompt (lab/tasks.py), for the check only


def export_model(
    ckpt: Path = typer.Argument(..., help="A full-precision student folder (Axolotl's output_dir, a lab student)."),
    out: Path = typer.Option(..., help="Folder for the quantized model (+ model.pte, model.gguf) and ondevice.json."),
    target: str = typer.Option("torchao", help="torchao (a transformers folder with torchao weights) | executorch "
                                               "(out/model.pte for ExecuTorch's XNNPACK backend; needs `make "
                                               "setup-ondevice`)."),
    quantize: Optional[str] = typer.Option(None, help="int8 (int8 weights per channel) | int4 (int4 weights in "
                                                      "groups, the QAT configs' scheme); both with int8 dynamic "
                                                      "activations. executorch: int4 (8da4w, the default), int8 "
                                                      "(8da8w) or fp32."),
    group_size: int = typer.Option(32, help="int4: inputs per weight scale (Axolotl's qat.group_size)."),
    gguf: bool = typer.Option(False, "--gguf", help="Also write out/model.gguf (llama.cpp's format) from CKPT."),
    gguf_type: str = typer.Option("q8_0", help="GGUF weights: q8_0 | q4_0 | f32."),
    system: str = typer.Option(DEFAULT_SYSTEM, help="System prompt of the load-and-generate check."),
    check_prompts: Optional[Path] = typer.Option(None, help="executorch: the check's prompts, a JSONL file with a "
                                                            "`question` per line (held-out problems; default: two "
                                                            "built-in dictation prompts)."),
    max_seq_len: int = typer.Option(512, help="executorch: the KV cache's length (prompt + generated tokens)."),
    check: bool = typer.Option(True, help="Load the result and generate (and read the GGUF back)."),
) -> None:
    """Quantize a student for the device and check that it loads and generates."""
    from pydantic import ValidationError

    from distill.ondevice.quantize import ExportModelOptions, check_checkpoint, quantize_checkpoint, write_manifest

    try:
        try:
            options = ExportModelOptions(target=target, quantize=quantize, group_size=group_size, gguf=gguf,
                                         gguf_type=gguf_type, max_seq_len=max_seq_len)
        except ValidationError as exc:
            raise flag_error(exc) from None
        if options.target == "torchao" and options.quantize == "fp32":
            raise SpecError("--quantize: fp32 is for --target executorch; torchao takes int8 or int4")
        if options.target == "torchao" and options.quantize is None and not options.gguf:
            raise SpecError("--quantize: give int8 or int4, or --gguf (or both)")
        ckpt_config = check_checkpoint(ckpt)
        record: dict = {"source": str(ckpt.resolve()), **options.model_dump()}
        if options.target == "executorch":
            prompts = read_check_prompts(check_prompts) if check_prompts else None
            record["executorch"] = export_executorch(ckpt, ckpt_config, out, options, system, check, prompts)
        elif options.quantize:
            record["torchao"] = quantize_checkpoint(ckpt, out, options.quantize, options.group_size)
            if check:
                record["check"] = check_generates_orfail(out, ckpt, system)
        if options.gguf:
            from distill.ondevice.gguf_export import check_gguf, export_gguf

            out.mkdir(parents=True, exist_ok=True)
            expected = export_gguf(ckpt, out / "model.gguf", options.gguf_type)
            record["gguf_file"] = {"path": "model.gguf", **(check_gguf(out / "model.gguf", ckpt, expected) if check
                                                            else {"tensors": len(expected["tensors"])})}
            if check:
                from distill.ondevice.check import check_gguf_runtime

                record["gguf_file"]["llama_cpp"] = check_gguf_runtime(out / "model.gguf", ckpt, system or None)
        write_manifest(out, record)
    except SpecError as exc:
        fail(str(exc))
    parts = []
    if "executorch" in record:
        e = record["executorch"]
        parts.append(f"model.pte {e['scheme']} {e['bytes']} B, {e['xnnpack_delegates']} XNNPACK delegates")
        if "check" in e:
            parts.append(f"ExecuTorch generates; token agreement with fp32 "
                         f"{e['check']['token_agreement_with_fp32']:.2f}")
            if "llm_runner" in e["check"]:
                r = e["check"]["llm_runner"]
                parts.append(f"ExecuTorch's TextLLMRunner: same text {r['same_text_as_check']}/{r['prompts']}")
    if "torchao" in record:
        t = record["torchao"]
        parts.append(f"{options.quantize} weights {t['bytes']} B (fp32 {t['source_bytes']} B)")
        if "check" in record:
            parts.append(f"generates; token agreement with fp32 {record['check']['token_agreement_with_fp32']:.2f}")
    if "gguf_file" in record:
        g = record["gguf_file"]
        parts.append(f"model.gguf {options.gguf_type} {g['bytes']} B, {g['tensors']} tensors"
                     + (f", max relative error {g['max_relative_error']}" if "max_relative_error" in g else "")
                     + (f", llama.cpp generates (agreement {g['llama_cpp']['token_agreement_with_fp32']:.2f})"
                        if g.get("llama_cpp", {}).get("generates") else ""))
    typer.echo(f"wrote {out}: " + "; ".join(parts) + f" ({json.dumps(str(out / 'ondevice.json'))})")


def export_executorch(ckpt: Path, ckpt_config: dict, out: Path, options: ExportModelOptions, system: str,
                      check: bool, prompts: list[str] | None = None) -> dict:
    """out/model.pte from CKPT, loaded in ExecuTorch's runtime and compared with fp32 on the check prompts."""
    from distill.ondevice.check import CHECK_PROMPTS
    from distill.ondevice.executorch import SCHEMES, check_pte, export_pte, ondevice_python
    from distill.ondevice.quantize import group_size_fits

    ondevice_python()  # a missing runtime fails before any work
    scheme = SCHEMES[options.quantize or "int4"]
    if scheme == "8da4w":
        group_size_fits(ckpt_config, options.group_size)
    if ckpt_config.get("model_type") != "qwen2":
        raise SpecError(f"--target executorch: the export handles Qwen2 students; {ckpt} is "
                        f"{ckpt_config.get('model_type')!r}")
    out.mkdir(parents=True, exist_ok=True)
    result = export_pte(ckpt, out / "model.pte", scheme, options.group_size, options.max_seq_len)
    result["path"] = "model.pte"
    result["source_bytes"] = sum(p.stat().st_size for p in ckpt.glob("*.safetensors"))
    if check:
        result["check"] = check_pte(out / "model.pte", ckpt, system or None, prompts or CHECK_PROMPTS)
    return result


def read_check_prompts(path: Path) -> list[str]:
    """The `question` of each JSONL row (a problems file, as `distill run` reads)."""
    if not path.is_file():
        raise SpecError(f"--check-prompts: {path} is not a file")
    from prm.jsonl import json_lines

    prompts = []
    for number, row in json_lines(path, "--check-prompts"):
        if not isinstance(row, dict) or "question" not in row:
            raise SpecError(f"--check-prompts: {path}:{number} is not a JSON object with a `question`")
        prompts.append(str(row["question"]))
    if not prompts:
        raise SpecError(f"--check-prompts: {path} has no prompts")
    return prompts


def check_generates_orfail(out: Path, ckpt: Path, system: str) -> dict:
    from distill.ondevice.check import check_generates

    return check_generates(out, ckpt, system or None)


def register(app: typer.Typer) -> None:
    app.command("export-model")(export_model)
