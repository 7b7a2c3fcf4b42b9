"""Entry point for `accelerate launch`: the chapter-04 trainer on one or many processes, from a config YAML.

    accelerate launch --config_file launch/accelerate/ddp.yaml launch/train_grpo.py \
        --config launch/configs/qwen2.5-3b-countdown.yaml --set max_steps 100 --set lr 1e-6
    accelerate launch --config_file launch/accelerate/cpu_2proc.yaml launch/train_grpo.py --config cpu
    launch/cpu_2proc.sh --task my_task.py --set sft_steps 0      # your own task (see --task)

Every rank runs the same loop on its own prompts (the sampler gives rank r its own slice of each step's tasks);
rewards and metrics are gathered across ranks before logging, and only the main process writes the metrics,
completions, checkpoints and the final adapter. Collectives time out after --timeout seconds, so a rank that dies
cannot leave the others waiting forever (torchrun also stops the survivors as soon as one worker exits with an
error).
"""

from __future__ import annotations

import argparse
import json
import importlib
import importlib.util
import os
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import InitProcessGroupKwargs, gather_object

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without `pip install -e .`

from grpo_helpers.checkpoint import list_checkpoints, strategy_of  # noqa: E402
from grpo_helpers.config import GRPOConfig, describe, load_config  # noqa: E402
from grpo_helpers.countdown.data import load_split  # noqa: E402
from grpo_helpers.distributed import gathered  # noqa: E402
from grpo_helpers.doctor import Doctor  # noqa: E402
from grpo_helpers.errors import UsageError  # noqa: E402
from grpo_helpers.model_states import ModelStateMeter, parameter_counts, peak_memory, write_model_states  # noqa: E402
from grpo_helpers.sft import run_cold_start  # noqa: E402
from grpo_helpers.task import Task  # noqa: E402
from grpo_helpers.trainer import GRPOTrainer  # noqa: E402
from grpo_helpers.yaml_values import command_line_value  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="cpu", help="a preset name (cpu, gpu-qwen2.5-3b) or a config YAML file")
    parser.add_argument("--set", nargs=2, action="append", default=[], metavar=("FIELD", "VALUE"),
                        help="override one config field by its plain name; VALUE is read as YAML, 1e-6 as a number "
                             "(repeatable)")
    parser.add_argument("--cpu", action="store_true",
                        help="force CPU processes (gloo) even where CUDA is present; automatic without CUDA")
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="FILE_OR_MODULE",
                        help="a .py file or module to import first, e.g. one that adds your own reward functions to "
                             "grpo_helpers.countdown.rewards.REWARD_FUNCTIONS (repeatable)")
    parser.add_argument("--task", default=None, metavar="FILE_OR_MODULE",
                        help="train your own task instead of Countdown: a .py file or module defining `task` (a "
                             "grpo_helpers.task.Task or a list of reward functions, the first judging correctness), "
                             "`train_dataset` and `eval_dataset` (rows with a 'prompt' column)")
    parser.add_argument("--check", action="store_true",
                        help="only check the settings (config, --set, --import, --task) and exit: the wrappers run it "
                             "once before starting the ranks")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds a collective waits for the other ranks before the run fails")
    return parser.parse_args(argv)


def set_overrides(pairs: list[list[str]]) -> dict[str, Any]:
    """The `--set FIELD VALUE` pairs as load_config overrides, each VALUE read as YAML with numbers as typed
    (`--set lr 1e-6` is the float 1e-06: plain PyYAML would pass the string '1e-6', which the config refuses)."""
    return {name: command_line_value(value, option=f"--set {name}") for name, value in pairs}


def adapter_checksum(model: torch.nn.Module) -> float:
    """Sum of all trainable weights in float64: equal on every rank when data parallelism kept them in sync.
    Under DeepSpeed ZeRO-3 each rank holds only a shard (the local tensors are empty), so the full weights are
    gathered first: otherwise every rank would report 0 and the check could never fail."""
    params = [p for p in model.parameters() if p.requires_grad]
    with gathered(params):  # ZeRO-3 partitioned parameters are gathered first
        if any(p.numel() == 0 for p in params):
            raise RuntimeError("adapter_checksum: a trainable parameter is empty even after gathering")
        return float(sum(p.detach().double().sum() for p in params))


def import_extension(name: str):
    """Import a user's module (by dotted name) or file (by path): its task, or side effects such as rewards."""
    if name.endswith(".py"):
        path = Path(name).resolve()
        if not path.is_file():
            raise SystemExit(f"--import {name}: no such file")
        sys.path.insert(0, str(path.parent))
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module
        spec.loader.exec_module(module)
        return module
    return importlib.import_module(name)


def user_task(name: str) -> tuple[Task, list | object, list | object | None]:
    """(task, train_dataset, eval_dataset) from a --task module, or one error naming what the module lacks."""
    module = import_extension(name)
    missing = [attr for attr in ("task", "train_dataset") if not hasattr(module, attr)]
    if missing:
        raise SystemExit(f"--task {name}: the module defines no {' and no '.join(missing)}; it needs `task` (a "
                         f"grpo_helpers.task.Task or a list of reward functions), `train_dataset` and `eval_dataset`")
    task = module.task if isinstance(module.task, Task) else Task(reward_funcs=module.task)
    return task, module.train_dataset, getattr(module, "eval_dataset", None)


def checked_settings(args: argparse.Namespace) -> tuple[GRPOConfig, tuple[Task, Any, Any] | None]:
    """The config and the user's task (None: Countdown), or one line naming what is wrong: before any process group,
    model or rank exists."""
    try:
        for name in args.imports:
            import_extension(name)
        config = load_config(args.config, **set_overrides(args.set))
        return config, (user_task(args.task) if args.task else None)
    except (UsageError, ValueError) as error:
        raise SystemExit(f"launch/train_grpo.py: {error}") from None


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    config, own = checked_settings(args)
    if args.check:
        print(f"settings ok: {args.config}" + (f", task from {args.task}" if args.task else ""), flush=True)
        return
    try:
        train(args, config, own)
    except KeyboardInterrupt:
        raise SystemExit(f"interrupted: every checkpoint written is whole (newest: "
                         f"{(list_checkpoints(Path(config.train.output_dir)) or ['none yet'])[-1]}); continue with "
                         f"--set resume true and the same settings") from None


def make_accelerator(*, cpu: bool, timeout: float) -> Accelerator:
    """The Accelerator for this rank. DeepSpeed on CPU processes (launch/cpu_zero2.sh, cpu_zero3.sh) needs two things
    accelerate does not do by itself: DeepSpeed's CPU accelerator (DS_ACCELERATOR=cpu, read when DeepSpeed is first
    imported) and a process group with the gloo backend, made before the Accelerator; without them accelerate falls
    back to one process while DeepSpeed sees two. Everything else (DDP on CPUs or GPUs, DeepSpeed on GPUs) is plain."""
    deadline = timedelta(seconds=timeout)
    if cpu and os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        PartialState(backend="gloo", timeout=deadline)
        return Accelerator(kwargs_handlers=[InitProcessGroupKwargs(timeout=deadline)])
    return Accelerator(cpu=cpu, kwargs_handlers=[InitProcessGroupKwargs(timeout=deadline)])


def train(args: argparse.Namespace, config: GRPOConfig, own: tuple[Task, Any, Any] | None) -> None:
    """The run itself, on every rank: the cold start when the recipe has one, GRPO, the adapter and its checksum."""
    accelerator = make_accelerator(cpu=args.cpu or not torch.cuda.is_available(), timeout=args.timeout)
    if accelerator.is_main_process:
        print(f"{accelerator.num_processes} process(es), {accelerator.distributed_type}, device "
              f"{accelerator.device}\n{describe(config)}", flush=True)
    start = time.perf_counter()
    if own is not None:
        task, train_rows, eval_rows = own
    else:
        task = None
        train_rows, eval_rows = load_split(config.data, seed=config.train.seed)
    if config.cold_start.sft_steps > 0 and not config.model.init_adapter:  # the recipe's cold start, on every rank
        config = config.replace(init_adapter=str(run_cold_start(config, train_dataset=train_rows, task=task,
                                                                accelerator=accelerator)))
        accelerator.free_memory()  # accelerate keeps every prepared model: drop the cold start's before GRPO's
    trainer = GRPOTrainer(config, accelerator=accelerator, train_dataset=train_rows, eval_dataset=eval_rows,
                          reward_funcs=task)
    trainer.callbacks.append(Doctor())  # says each problem in the metrics when it appears; train() ends with all
    meter = ModelStateMeter(model=trainer.model, optimizer=trainer.optimizer)
    trainer.train()
    adapter = trainer.save_adapter(Path(config.train.output_dir) / "adapter")
    held = gather_object([{**meter.report(), **peak_memory()}])  # each rank's weights, gradients, optimizer, peaks

    checksums = accelerator.gather(torch.tensor([adapter_checksum(trainer.model)], dtype=torch.float64,
                                                device=accelerator.device)).tolist()
    if accelerator.is_main_process:
        last = trainer.history[-1] if trainer.history else {}
        print(f"done: {trainer.step} steps in {time.perf_counter() - start:.0f} s; last reward "
              f"{last.get('reward', float('nan')):.3f}; adapter -> {adapter}", flush=True)
        print(f"trainable-weight checksum per rank: {checksums}", flush=True)
        write_model_states(Path(config.train.output_dir) / "model_states.json", strategy=strategy_of(accelerator),
                           counts=parameter_counts(trainer.model), ranks=held)
        print(f"model-state bytes per rank: {json.dumps(held)}", flush=True)
        if len(set(checksums)) != 1:
            raise SystemExit(f"ranks ended with different weights: {checksums}")
    # the DDP model goes before the process group: were DDP's reducer to drop the last reference to a gloo group,
    # the group's destructor would run holding the GIL while a gloo thread waits for it (a known torch deadlock)
    del trainer
    accelerator.free_memory()
    accelerator.end_training()


if __name__ == "__main__":
    main()
