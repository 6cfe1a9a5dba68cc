"""A Qwen2 checkpoint → one GGUF file (llama.cpp's format), written with the ``gguf`` package, and read back.

Tensor names come from gguf's own map for ``MODEL_ARCH.QWEN2`` (``model.layers.0.self_attn.q_proj`` →
``blk.0.attn_q``); 2-D weights are quantized (Q8_0: int8 in blocks of 32 with one fp16 scale; Q4_0: 4-bit), 1-D
tensors (norms, biases) stay F32, as llama.cpp's own converter does. The vocabulary is the tokenizer's byte-level
BPE (``tokenizer.ggml.model = gpt2``) with its merges, special ids and chat template.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.spec import SpecError

QUANT_TYPES = {"q8_0": "Q8_0", "q4_0": "Q4_0", "f32": "F32"}


def _tensors(ckpt: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    files = sorted(ckpt.glob("*.safetensors"))
    if not files:
        raise SpecError(f"CKPT: {ckpt} has no *.safetensors weights")
    out: dict[str, np.ndarray] = {}
    for path in files:
        out.update({k: v.astype(np.float32) for k, v in load_file(str(path)).items()})
    return out


def _vocab(ckpt: Path, vocab_size: int) -> tuple[list[str], list[int]]:
    """Tokens in id order (padded to the model's vocab size) and their llama.cpp token types."""
    import gguf

    data = json.loads((ckpt / "tokenizer.json").read_text(encoding="utf-8"))
    if data.get("model", {}).get("type") != "BPE":
        raise SpecError(f"CKPT: {ckpt}'s tokenizer is {data.get('model', {}).get('type')}, not byte-level BPE")
    by_id = {i: t for t, i in data["model"]["vocab"].items()}
    kinds = {}
    for added in data.get("added_tokens", []):
        by_id[added["id"]] = added["content"]
        kinds[added["id"]] = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
    tokens, types = [], []
    for i in range(vocab_size):
        if i in by_id:
            tokens.append(by_id[i])
            types.append(int(kinds.get(i, gguf.TokenType.NORMAL)))
        else:
            tokens.append(f"[PAD{i}]")
            types.append(int(gguf.TokenType.UNUSED))
    return tokens, types


def export_gguf(ckpt: Path, path: Path, quant: str = "q8_0") -> dict[str, Any]:
    """Write ``path``; returns what went in (tensor count, types, metadata) for the read-back check."""
    import gguf

    config = json.loads((ckpt / "config.json").read_text())
    if config.get("model_type") != "qwen2":
        raise SpecError(f"--gguf: the converter handles Qwen2 models; {ckpt} is {config.get('model_type')!r}")
    qtype = getattr(gguf.GGMLQuantizationType, QUANT_TYPES[quant])
    n_layers = int(config["num_hidden_layers"])
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2, n_layers)
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.QWEN2])
    writer.add_name(ckpt.name)
    writer.add_context_length(int(config.get("max_position_embeddings", 2048)))
    writer.add_embedding_length(int(config["hidden_size"]))
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(int(config["num_attention_heads"]))
    writer.add_head_count_kv(int(config.get("num_key_value_heads", config["num_attention_heads"])))
    writer.add_rope_freq_base(float(config.get("rope_theta") or (config.get("rope_parameters") or {}).get(
        "rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    writer.add_file_type({"q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
                          "f32": gguf.LlamaFileType.ALL_F32}[quant])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    tokens, types = _vocab(ckpt, int(config["vocab_size"]))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")  # Qwen2's pre-tokenizer: single digits, GPT-2 style words
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(ckpt, load_merges=True, n_vocab=len(tokens))
    if not special.merges:
        raise SpecError(f"CKPT: {ckpt}'s tokenizer.json has no BPE merges")
    template = ckpt / "chat_template.jinja"
    if special.chat_template is None and template.is_file():
        special.chat_template = template.read_text(encoding="utf-8")
    special.add_to_gguf(writer, quiet=True)

    written: dict[str, tuple[str, tuple[int, ...]]] = {}
    for hf_name, array in _tensors(ckpt).items():
        if hf_name == "lm_head.weight" and config.get("tie_word_embeddings"):
            continue  # llama.cpp reuses token_embd for the output when output.weight is absent
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise SpecError(f"--gguf: no GGUF name for tensor {hf_name!r}")
        kind = qtype if array.ndim == 2 and array.shape[-1] % 32 == 0 else gguf.GGMLQuantizationType.F32
        data = gguf.quants.quantize(array, kind) if kind != gguf.GGMLQuantizationType.F32 else array
        writer.add_tensor(name, data, raw_dtype=kind if kind != gguf.GGMLQuantizationType.F32 else None)
        written[name] = (kind.name, tuple(array.shape))
    path.parent.mkdir(parents=True, exist_ok=True)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"tensors": written, "n_vocab": len(tokens), "architecture": "qwen2"}


def check_gguf(path: Path, ckpt: Path, expected: dict[str, Any]) -> dict[str, Any]:
    """Read the file back with gguf's reader: every tensor present with its type and shape, the metadata a runtime
    needs, and the dequantized weights close to the checkpoint's (the largest relative error is reported)."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    fields = {name: field for name, field in reader.fields.items()}

    def scalar(key: str) -> Any:
        field = fields[key]
        value = field.parts[field.data[0]]
        return bytes(value).decode() if field.types[0] == gguf.GGUFValueType.STRING else value.tolist()[0]

    if scalar("general.architecture") != "qwen2":
        raise SpecError(f"--gguf: {path} reads back as {scalar('general.architecture')!r}, not qwen2")
    tokens = fields["tokenizer.ggml.tokens"]
    if len(tokens.data) != expected["n_vocab"]:
        raise SpecError(f"--gguf: {path} has {len(tokens.data)} tokens, expected {expected['n_vocab']}")
    found = {t.name: t for t in reader.tensors}
    if set(found) != set(expected["tensors"]):
        raise SpecError(f"--gguf: {path} tensors differ: missing {sorted(set(expected['tensors']) - set(found))}")
    originals = {}
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2, int(scalar("qwen2.block_count")))
    for hf_name, array in _tensors(ckpt).items():
        mapped = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if mapped in found:
            originals[mapped] = array
    worst = 0.0
    for name, tensor in found.items():
        kind, shape = expected["tensors"][name]
        if tensor.tensor_type.name != kind:
            raise SpecError(f"--gguf: {name} is {tensor.tensor_type.name} in {path}, expected {kind}")
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(shape)
        original = originals[name]
        error = float(np.abs(values - original).max() / max(float(np.abs(original).max()), 1e-12))
        worst = max(worst, error)
    return {"tensors": len(found), "n_vocab": len(tokens.data), "eos_token_id": scalar("tokenizer.ggml.eos_token_id"),
            "max_relative_error": round(worst, 5), "bytes": path.stat().st_size}
