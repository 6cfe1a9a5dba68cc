"""The ExecuTorch side of ``distill export-model --target executorch``: export a Qwen2 student to a ``.pte`` and run it.

Runs in ``.venv-ondevice`` (``make setup-ondevice``: executorch pins a torchao newer than the factory's), started
by the factory as ``python -m distill.ondevice.executorch_runtime export|generate …``: it imports only torch,
transformers and executorch, and answers one JSON object on a stdout line of its own (``RESULT``).

The export follows optimum-executorch's XNNPACK recipe for causal LMs (``optimum/exporters/executorch``): the
model with a static KV cache (transformers' ``TorchExportableModuleWithStaticCache``), linear layers quantized
with torchao's ``Int8DynamicActivationIntxWeightConfig`` (8da4w: int8 per-token dynamic activations, int4
weights in groups of 32, the QAT configs' scheme), ``torch.export`` with a dynamic sequence length for the
prefill, ``to_edge_transform_and_lower`` with the ``XnnpackPartitioner``. One difference: the program returns the
last position's logits only (``logits_to_keep=1``), so a prefill does not spend the output head on every prompt
token. The embedding stays fp32, as in the QAT configs.

The same greedy loop (:func:`timed_greedy`) times the ``.pte`` here and transformers' fp32 model in the factory.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SCHEMES = ("8da4w", "8da8w", "fp32")
RESULT = "executorch_runtime result: "  # the stdout line the factory reads


def timed_greedy(step: Callable[[list[int], int], Any], prompt: list[int], max_new_tokens: int,
                 eos_ids: set[int]) -> dict[str, Any]:
    """Greedy decoding through ``step(ids, start_position) -> last logits``: the new tokens (an end-of-turn
    token ends the loop, not kept), time to first token (the prefill and its argmax) and the decode time."""
    start = time.perf_counter()
    token = int(step(prompt, 0).argmax())
    first = time.perf_counter()
    tokens: list[int] = []
    position = len(prompt)
    while token not in eos_ids and len(tokens) < max_new_tokens:
        tokens.append(token)
        if len(tokens) == max_new_tokens:
            break
        token = int(step([token], position).argmax())
        position += 1
    end = time.perf_counter()
    return {"tokens": tokens, "ttft_ms": (first - start) * 1000, "decode_ms": (end - first) * 1000,
            "total_ms": (end - start) * 1000}


def load_model(source: str, seed: int = 0) -> Any:
    """A checkpoint folder, or a ``config.json`` (random weights from ``seed``: the same on both sides)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(source)
    if path.is_file():
        config = AutoConfig.from_pretrained(path.parent if path.name == "config.json" else path)
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return model.eval()


def linear_config(scheme: str, group_size: int) -> Any:
    import torch
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig
    from torchao.quantization.granularity import PerAxis, PerGroup

    if scheme == "8da4w":
        return Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, weight_granularity=PerGroup(group_size))
    return Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int8, weight_granularity=PerAxis(0))


def random_quantized_model(config_json: Path, seed: int, scheme: str, group_size: int) -> Any:
    """Random weights of a config's shape, each linear layer quantized as soon as it is drawn: a 1.5B shape never
    holds its 6 GB of fp32 weights at once (timing needs the shape, not trained weights). The output head gets
    its own random weights rather than the embedding's."""
    import torch
    from torchao.quantization import quantize_
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(config_json.parent)
    torch.manual_seed(seed)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    quantized = linear_config(scheme, group_size)
    for module in model.modules():
        for name, param in list(module.named_parameters(recurse=False)):
            value = torch.empty(param.shape, dtype=torch.float32)
            if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)) and name == "weight":
                value.normal_(0.0, config.initializer_range)
            elif "norm" in type(module).__name__.lower():
                value.fill_(1.0)
            else:
                value.zero_()
            setattr(module, name, torch.nn.Parameter(value, requires_grad=False))
        if isinstance(module, torch.nn.Linear):
            quantize_(module, quantized)
    model.model.rotary_emb = type(model.model.rotary_emb)(config=config)  # its buffers were on the meta device
    release_memory()
    return model.eval()


def release_memory() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them after the large temporaries of an export)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc
        pass


def quantize_linears(model: Any, scheme: str, group_size: int) -> None:
    """torchao's 8da4w / 8da8w on every nn.Linear (the output head too), as optimum-executorch's ``qlinear``."""
    if scheme == "fp32":
        return
    import torch
    from torchao.quantization import quantize_

    config = linear_config(scheme, group_size)
    if model.config.tie_word_embeddings:  # the head gets its own (quantized) copy; the embedding stays fp32
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone(), requires_grad=False)
    quantize_(model, config, lambda m, fqn: isinstance(m, torch.nn.Linear))


def export(source: str, pte: Path, scheme: str, group_size: int, max_seq_len: int, seed: int = 0) -> dict[str, Any]:
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.exir.passes import MemoryPlanningPass
    from executorch.exir.passes.init_mutable_pass import InitializedMutableBufferPass
    from transformers import GenerationConfig
    from transformers.integrations.executorch import TorchExportableModuleWithStaticCache

    class LastLogits(TorchExportableModuleWithStaticCache):
        """transformers' static-cache wrapper, returning only the last position's logits."""

        def forward(self, input_ids: torch.Tensor, cache_position: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
            for layer in self.static_cache.layers:
                layer.cumulative_length.copy_(cache_position[0])
            out = self.model(input_ids=input_ids, attention_mask=None, past_key_values=self.static_cache,
                             use_cache=True, logits_to_keep=1)
            return out.logits[:, -1, :]

    started = time.perf_counter()
    if Path(source).is_file() and scheme != "fp32":
        model = random_quantized_model(Path(source), seed, scheme, group_size)
    else:
        model = load_model(source, seed)
        quantize_linears(model, scheme, group_size)
    model.generation_config = GenerationConfig(use_cache=True, cache_implementation="static", max_length=max_seq_len,
                                               cache_config={"batch_size": 1, "max_cache_len": max_seq_len})
    wrapper = LastLogits(model, batch_size=1, max_cache_len=max_seq_len)
    ids, positions = torch.zeros((1, 3), dtype=torch.long), torch.arange(3, dtype=torch.long)
    length = torch.export.Dim("seq_length_dim", max=max_seq_len - 1)
    with torch.no_grad():
        program = torch.export.export(wrapper, args=(), kwargs={"input_ids": ids, "cache_position": positions},
                                      dynamic_shapes={"input_ids": {1: length}, "cache_position": {0: length}},
                                      strict=True)
    eos = model.generation_config.eos_token_id if model.generation_config.eos_token_id is not None else \
        model.config.eos_token_id
    metadata = {"get_max_seq_len": max_seq_len, "get_vocab_size": int(model.config.vocab_size),
                "use_kv_cache": True, "enable_dynamic_shape": True,
                "get_eos_ids": [int(e) for e in (eos if isinstance(eos, list) else [eos] if eos is not None else [])]}
    del model, wrapper  # the exported program holds the weights it needs
    lowered = to_edge_transform_and_lower({"forward": program}, partitioner=[XnnpackPartitioner()],
                                          compile_config=EdgeCompileConfig(_check_ir_validity=False,
                                                                           _skip_dim_order=True),
                                          constant_methods=metadata)
    del program  # lowered: the XNNPACK payloads hold the packed weights now
    release_memory()
    delegated = sum(1 for node in lowered.exported_program("forward").graph_module.graph.nodes
                    if node.op == "call_function" and "executorch_call_delegate" in str(node.target))
    # The KV cache starts as zeros in the program (without the pass only its shape is kept and the runtime's
    # memory starts as whatever it holds; a masked position still multiplies its value by 0, and NaN * 0 is NaN),
    # as ExecuTorch's own exports do for their caches (examples/models/voxtral_tts).
    program_et = lowered.to_executorch(config=ExecutorchBackendConfig(
        extract_delegate_segments=True, memory_planning_pass=MemoryPlanningPass(alloc_graph_input=False),
        do_quant_fusion_and_const_prop=True, passes=[InitializedMutableBufferPass(["key_cache", "value_cache"])]))
    pte.parent.mkdir(parents=True, exist_ok=True)
    with pte.open("wb") as file:
        program_et.write_to_file(file)
    from executorch.version import __version__ as executorch_version

    return {"path": str(pte), "bytes": pte.stat().st_size, "scheme": scheme, "group_size": group_size,
            "max_seq_len": max_seq_len, "xnnpack_delegates": delegated, "eos_ids": metadata["get_eos_ids"],
            "export_s": round(time.perf_counter() - started, 1), "executorch": executorch_version,
            "torch": torch.__version__}


def pte_step(pte: Path, threads: int) -> Callable[[list[int], int], Any]:
    """``step(ids, start_position) -> last logits`` of a ``.pte`` in ExecuTorch's runtime (its Python bindings)."""
    import torch
    from executorch.extension.pybindings import portable_lib

    portable_lib._unsafe_reset_threadpool(threads)
    module = portable_lib._load_for_executorch(str(pte))

    def step(ids: list[int], start: int) -> Any:
        inputs = (torch.tensor([ids], dtype=torch.long), torch.arange(start, start + len(ids), dtype=torch.long))
        return module.forward(inputs)[0][0]

    return step


def generate(pte: Path, prompts: list[list[int]], max_new_tokens: int, eos_ids: set[int], threads: int,
             warmup: bool = True) -> dict[str, Any]:
    """Greedy generations of ``prompts`` (token ids) from the ``.pte``, each timed (after one untimed warm-up)."""
    started = time.perf_counter()
    step = pte_step(pte, threads)
    load_s = time.perf_counter() - started
    if warmup and prompts:
        timed_greedy(step, prompts[0], min(max_new_tokens, 8), eos_ids)
    runs = [timed_greedy(step, prompt, max_new_tokens, eos_ids) for prompt in prompts]
    return {"load_s": round(load_s, 3), "runs": runs}


def runner_generate(pte: Path, tokenizer_json: Path, prompts: list[str], max_new_tokens: int) -> dict[str, Any]:
    """Greedy generations through ExecuTorch's own C++ text runner (``TextLLMRunner``, what its apps and
    ``llama_main`` use: the ``.pte``'s metadata methods, the tokenizer file, its own sampling), one text each."""
    from executorch.extension.llm.runner import GenerationConfig, TextLLMRunner

    runner = TextLLMRunner(str(pte), str(tokenizer_json))
    config = GenerationConfig(echo=False, max_new_tokens=max_new_tokens, temperature=0.0)
    outputs = []
    for prompt in prompts:
        stats: list[Any] = []
        runner.reset()
        runner.generate(prompt, config, stats_callback=stats.append)  # the runner prints the text itself
        generated = json.loads(stats[-1].to_json_string())["generated_tokens"] if stats else 0
        pieces: list[str] = []
        runner.reset()
        try:
            runner.generate(prompt, config, token_callback=pieces.append)
            text = "".join(pieces)
        except UnicodeDecodeError:  # a piece that is part of a UTF-8 character cannot cross into Python as str
            text = None
        outputs.append({"text": text, "generated_tokens": generated})
    return {"outputs": outputs}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export", help="CKPT (or a config.json: random weights) → a .pte")
    ex.add_argument("source")
    ex.add_argument("pte", type=Path)
    ex.add_argument("--scheme", choices=SCHEMES, default="8da4w")
    ex.add_argument("--group-size", type=int, default=32)
    ex.add_argument("--max-seq-len", type=int, default=512)
    ex.add_argument("--seed", type=int, default=0)
    gen = sub.add_parser("generate", help="greedy generations from a .pte; the request is a JSON file")
    gen.add_argument("pte", type=Path)
    gen.add_argument("request", type=Path, help='{"prompts": [[ids]], "max_new_tokens": N, "eos_ids": [..]}')
    gen.add_argument("--threads", type=int, default=2)
    run = sub.add_parser("runner", help="greedy texts from ExecuTorch's TextLLMRunner; the request is a JSON file")
    run.add_argument("pte", type=Path)
    run.add_argument("tokenizer", type=Path, help="tokenizer.json")
    run.add_argument("request", type=Path, help='{"prompts": ["chat-formatted text"], "max_new_tokens": N}')
    args = parser.parse_args(argv)
    if args.command == "runner":
        request = json.loads(args.request.read_text())
        result = runner_generate(args.pte, args.tokenizer, request["prompts"], int(request["max_new_tokens"]))
    elif args.command == "export":
        result = export(args.source, args.pte, args.scheme, args.group_size, args.max_seq_len, args.seed)
    else:
        request = json.loads(args.request.read_text())
        result = generate(args.pte, request["prompts"], int(request["max_new_tokens"]), set(request["eos_ids"]),
                          args.threads, bool(request.get("warmup", True)))
    # on a line of its own: ExecuTorch's C++ runner writes to the same stdout, without a final newline
    print("\n" + RESULT + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
