"""The GRPO training loop: rollout -> rewards -> advantages -> reference -> loss -> optimizer step -> metrics.

One loop on `accelerate`, so the same code runs on a CPU, one GPU or several processes. The update itself is on one
screen in `optimize`: log-probs, `grpo_loss`, backward, clip, step. The pieces it calls each live in one place: the
task (prompts, rewards, judge) in task.py, sampling in rollout.py, the objective in loss.py, log-probs in
logprobs.py, the memory-lean backward (`memory_lean: true`) in backward.py, checkpoints in checkpoint.py, the logged
metrics in metrics.py, evaluation in evaluation.py, what several processes change in distributed.py, and what runs
beside the loop (the hack warning, the doctor's verdict, a dashboard) in callbacks. Everything a run needs to
continue exactly after a crash is checkpointed atomically; metrics and sampled completions are appended as JSON
lines that survive a kill.
"""

from __future__ import annotations

import copy
import json
import time
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from tqdm.auto import tqdm
from transformers import get_scheduler
from transformers.trainer_utils import enable_full_determinism

from grpo_helpers.backward import window_backward
from grpo_helpers.batch import Batch, add_fixed_logprobs, to_batch
from grpo_helpers.callbacks import Callback
from grpo_helpers.checkpoint import list_checkpoints, resume_training, save_training_checkpoint, seed_everything
from grpo_helpers.config import GRPOConfig, fit_strategy
from grpo_helpers.config_history import check_resume, record_config
from grpo_helpers.countdown.data import load_split
from grpo_helpers.countdown.task import countdown_task
from grpo_helpers.default_callbacks import default_callbacks
from grpo_helpers.distributed import (clip_gradients, gather, gathered_state_dict, size_deepspeed_engine, total,
                                      whole_weights, zero_stage)
from grpo_helpers.dynamic_sampling import resample_flat_groups
from grpo_helpers.evaluation import evaluate_tiers, tier_metrics
from grpo_helpers.hardware import release_freed_memory
from grpo_helpers.logprobs import completion_logprobs
from grpo_helpers.loss import grpo_loss, window_share
from grpo_helpers.metrics import completion_rows, step_metrics
from grpo_helpers.models import load_from_config
from grpo_helpers.rollout import Rollout, generate_groups
from grpo_helpers.run_folder import LOG_FILES, append_json_lines, claim_run_folder, keep_lines_up_to, read_json_lines
from grpo_helpers.samplers import TierSampler, make_sampler
from grpo_helpers.scoring import RewardBreakdown, RewardFunction
from grpo_helpers.task import Task, split_digest


class GRPOTrainer:
    """Owns the model, optimizer and run state; `train()` runs the loop described in notebook 04.

    The task follows TRL's conventions (grpo_helpers/task.py): `train_dataset` and `eval_dataset` are rows with a
    `prompt` column (a list of dicts or a `datasets.Dataset`), `reward_funcs` a `Task` or a list of reward functions
    (the first one judges correctness). With neither, the run is Countdown, its rows made from `config.data`.
    `callbacks` run after the defaults every trainer starts with (default_callbacks.py: the hack warning and the
    doctor's verdict); `self.callbacks` is a plain list."""

    def __init__(self, config: GRPOConfig, *, train_dataset: Any = None, eval_dataset: Any = None,
                 reward_funcs: Task | list[RewardFunction] | dict[str, RewardFunction] | None = None,
                 callbacks: list[Callback] | tuple = (), model=None, tokenizer=None,
                 accelerator: Accelerator | None = None):
        self.task = _resolve_task(reward_funcs, config)
        if reward_funcs is not None:  # the run records the weights it trains with, not the preset's
            config = config.replace(reward_weights=dict(self.task.reward_weights))
        self.callbacks = default_callbacks() + list(callbacks)  # the hack warning and the doctor's verdict
        self.accelerator = accelerator or Accelerator(
            log_with=None if config.train.report_to == "none" else config.train.report_to,
            project_dir=config.train.output_dir)
        self.rank, self.world_size = self.accelerator.process_index, self.accelerator.num_processes
        cfg = self.config = fit_strategy(config, zero_stage=zero_stage(self.accelerator),  # before anything loads
                                         verbose=self.accelerator.is_main_process)
        self.output_dir = Path(cfg.train.output_dir)
        seed_everything(cfg.train.seed)
        if cfg.train.deterministic:  # cuBLAS, attention and scatter kernels otherwise vary run to run on a GPU
            enable_full_determinism(cfg.train.seed)

        self.train_dataset, self.eval_dataset = self._datasets(train_dataset, eval_dataset)
        self.sampler = make_sampler(self.train_dataset, batch_size=cfg.rollout.num_prompts, seed=cfg.train.seed,
                                    rank=self.rank, world_size=self.world_size, curriculum=cfg.data.curriculum,
                                    max_steps=cfg.train.max_steps)
        if cfg.data.curriculum != "uniform" and not isinstance(self.sampler, TierSampler) and self.rank == 0:
            tqdm.write(f"curriculum={cfg.data.curriculum!r} needs a 'tier' column on every training row: these rows "
                       f"have none, so prompts are drawn uniformly")

        if model is None:
            model, tokenizer = load_from_config(cfg.model, device=self.accelerator.device)
        self.model, self.tokenizer = model, tokenizer
        # LoRA: the reference is the same model with the adapter switched off. Full fine-tuning: a frozen copy.
        self.ref_model = None
        if cfg.loss.beta > 0 and not hasattr(self.model, "disable_adapter"):
            self.ref_model = copy.deepcopy(self.model).eval().requires_grad_(False)
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters: enable use_lora or unfreeze weights")
        self.optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        schedule = "constant_with_warmup" if cfg.train.lr_scheduler == "constant" else cfg.train.lr_scheduler
        self.scheduler = get_scheduler(schedule, self.optimizer, num_warmup_steps=cfg.train.warmup_steps,
                                       num_training_steps=cfg.train.max_steps * cfg.loss.num_iterations)
        size_deepspeed_engine(self.accelerator, micro_batch=cfg.rollout.num_prompts * cfg.rollout.group_size,
                              max_grad_norm=cfg.train.max_grad_norm)
        # the scheduler is not prepared: accelerate steps a prepared one once per process per step, which would run
        # the schedule N times too fast on N processes
        self.model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        # The model itself, under any DDP/DeepSpeed wrapper. Asking accelerate each time imports DeepSpeed
        # (megabytes of resident memory) even when nothing was wrapped.
        self.unwrapped_model = model if self.model is model else self.accelerator.unwrap_model(self.model)
        # Sampling has its own generator so that changing e.g. dropout does not change which tokens are drawn.
        self.generator = torch.Generator(device=self.accelerator.device).manual_seed(cfg.train.seed * 1000 + self.rank)
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self.eval_history: list[dict[str, Any]] = []
        self.last_completions: list[dict[str, Any]] = []  # the last step's rows of completions.jsonl, for the doctor
        self.findings: list[Any] = []  # the GRPO doctor's verdict, set when train() ends (doctor.DoctorReport)
        self.should_stop = False  # a callback sets it to end train() after the current step (and its checkpoint)
        if cfg.train.resume:
            self.resume()

    def _datasets(self, train_dataset: Any, eval_dataset: Any) -> tuple[list[dict], list[dict]]:
        """The rows, validated; a Countdown run makes any split it is not given from config.data."""
        cfg = self.config
        if self.task.name == "countdown" and (train_dataset is None or eval_dataset is None):
            split_train, split_test = load_split(cfg.data, seed=cfg.train.seed)
            train_dataset = split_train if train_dataset is None else train_dataset
            eval_dataset = split_test if eval_dataset is None else eval_dataset
        if train_dataset is None:
            raise ValueError(f"train_dataset is missing: task {self.task.name!r} brings no data of its own; pass rows "
                             f"with a 'prompt' column")
        if self.task.name != "countdown" and self.rank == 0:
            tqdm.write("train_dataset is used as given: the config's data settings (dataset, num_tasks, tiers, "
                       "test_size) describe Countdown's generator and do not apply")
        train = self.task.rows(train_dataset, what="train_dataset")
        if eval_dataset is None:
            if cfg.train.eval_every:
                raise ValueError(f"eval_dataset is missing while eval_every={cfg.train.eval_every}: pass held-out "
                                 f"rows, or set eval_every=0")
            return train, []
        return train, self.task.rows(eval_dataset, what="eval_dataset")

    # ------------------------------------------------------------------ the run's files
    def _log(self, name: str, rows: list[dict[str, Any]]) -> None:
        if self.accelerator.is_main_process:
            append_json_lines(self.output_dir / name, rows)

    def _save_run_files(self, folder: Path) -> None:
        """config.yaml, plus data_split.json: the tasks actually used (a split passed in is not in the config). In the
        run folder config.yaml is the latest config and config_history.jsonl keeps every config the run was trained
        under, with the step it applied from; a checkpoint holds the config it was written under."""
        if folder == self.output_dir:
            record_config(folder, self.config, step=self.step)
        else:
            self.config.save_yaml(folder / "config.yaml")
        split = split_digest(self.train_dataset, self.eval_dataset)
        (folder / "data_split.json").write_text(json.dumps(split, indent=1))

    def save_checkpoint(self) -> Path:
        """Written to a temporary folder, then renamed: a kill mid-write leaves the previous checkpoint intact."""
        path = save_training_checkpoint(self.output_dir, self.step, accelerator=self.accelerator, model=self.model,
                                        unwrapped_model=self.unwrapped_model, optimizer=self.optimizer,
                                        scheduler=self.scheduler, sampler=self.sampler, generator=self.generator,
                                        keep_last=self.config.train.keep_last, more=self._save_run_files)
        for cb in self.callbacks:
            cb.on_checkpoint(self, path)
        return path

    def resume(self) -> bool:
        """Continue from the newest complete checkpoint in output_dir; False when there is none. A config that
        changes what the run learns is refused (grpo_helpers/config_history.py says which settings may change)."""
        step = resume_training(self.output_dir, accelerator=self.accelerator, model=self.model,
                               unwrapped_model=self.unwrapped_model, optimizer=self.optimizer,
                               scheduler=self.scheduler, sampler=self.sampler, generator=self.generator)
        if step is None:
            return False
        check_resume(self.output_dir, self.config, step=step, what="run")
        self.step = step
        if self.accelerator.is_main_process:
            for name in LOG_FILES:
                keep_lines_up_to(self.output_dir / name, step)
        self.history = read_json_lines(self.output_dir / "metrics.jsonl")
        self.eval_history = read_json_lines(self.output_dir / "eval.jsonl")
        return True

    # ------------------------------------------------------------------ the algorithm
    def _sample(self, tasks: list[dict]) -> tuple[Rollout, RewardBreakdown]:
        """G completions per row from the current policy, scored by the task's weighted reward functions (each
        column of the rows reaches them by name, repeated across the row's group)."""
        cfg, G = self.config, self.config.rollout.group_size
        prompts = self.task.render_prompts(self.tokenizer, tasks)
        rollout = generate_groups(self.unwrapped_model, self.tokenizer, prompts, group_size=G,
                                  max_new_tokens=cfg.rollout.max_new_tokens, temperature=cfg.rollout.temperature,
                                  top_p=cfg.rollout.top_p, top_k=cfg.rollout.top_k, generator=self.generator,
                                  fast=cfg.model.fast, cuda_graph=cfg.rollout.cuda_graph)
        return rollout, self.task.score(rollout.texts, tasks, repeat=G, weights=cfg.rewards.reward_weights,
                                        step=self.step + 1, time_limit=cfg.rewards.reward_time_limit,
                                        completion_lengths=rollout.lengths.tolist(),
                                        max_completion_length=cfg.rollout.max_new_tokens)

    def make_batch(self) -> tuple[Batch, dict[str, float]]:
        """Sample a group per prompt, score it, and compute everything the loss needs that has no gradient."""
        cfg = self.config
        tasks = next(self.sampler)
        t0 = time.perf_counter()
        dynamic: dict[str, float] = {}
        # under ZeRO-3 the weights are gathered once for all of the step's sampling, on every rank together (a
        # rank with no flat group to resample still holds them while the others sample)
        with whole_weights(self.accelerator, self.model):
            rollout, scores = self._sample(tasks)
            if cfg.rollout.dynamic_sampling:
                tasks, rollout, scores, dynamic = resample_flat_groups(
                    tasks, rollout, scores, budget=cfg.rollout.dynamic_sampling, sample=self._sample,
                    task_batches=self.sampler, total_over_processes=lambda n: total(self.accelerator, n),
                    pad_id=self.tokenizer.pad_token_id)
        t1 = time.perf_counter()
        batch = self.prepare_batch(tasks, rollout, scores, dynamic=dynamic)
        t2 = time.perf_counter()
        timing = {"time/generation": t1 - t0 - sum(scores.seconds.values()), "time/reference": t2 - t1,
                  **{f"time/reward/{name}": value for name, value in scores.seconds.items()}}
        return batch, timing

    def prepare_batch(self, tasks: list[dict], rollout: Rollout, scores: RewardBreakdown, *,
                      dynamic: dict[str, float] | None = None) -> Batch:
        """A scored rollout with everything the loss needs that has no gradient: the advantages, and the reference's
        and the sampling policy's log-probs when the loss uses them."""
        cfg = self.config
        batch_std = None
        if cfg.loss.scale_rewards == "batch" and self.world_size > 1:  # the std of every process's rewards, as TRL
            batch_std = float(gather(self.accelerator, torch.tensor(scores.total)).std())
        batch = to_batch(rollout, scores, tasks, scale_rewards=cfg.loss.scale_rewards, batch_std=batch_std,
                         dynamic=dynamic, mask_truncated=cfg.loss.mask_truncated_completions)
        add_fixed_logprobs(batch, self.unwrapped_model, reference=self.ref_model, temperature=cfg.rollout.temperature,
                           reference_needed=cfg.loss.beta > 0, old_needed=cfg.loss.num_iterations > 1,
                           lean=cfg.train.memory_lean)
        return batch

    def _loss(self, logps: torch.Tensor, batch: Batch, window_tokens: int, *,
              entropy: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.config
        return grpo_loss(logps, old_logps=batch.old_logps, ref_logps=batch.ref_logps, advantages=batch.advantages,
                         completion_mask=batch.scored, loss_type=cfg.loss.loss_type,
                         beta=cfg.loss.beta, clip_eps_low=cfg.loss.clip_eps_low, clip_eps_high=cfg.loss.clip_eps_high,
                         max_completion_length=cfg.rollout.max_new_tokens,
                         num_items_in_window=window_tokens / self.world_size,  # exact, as TRL divides
                         importance_sampling_level=cfg.loss.importance_sampling_level,
                         cispo_eps_max=cfg.loss.cispo_eps_max, entropy=entropy)

    def optimize(self, batches: list[Batch], *, update: bool = True) -> dict[str, float]:
        """mu passes of clipped-surrogate updates over the rollout window (one optimizer step per pass); with
        update=False one pass that leaves its (clipped) gradients on the parameters and the weights as they were."""
        cfg, accelerator, model = self.config, self.accelerator, self.model
        # at least 1: with every completion masked (all truncated) the loss is 0, not 0 / 0
        window_tokens = max(1, int(total(accelerator, sum(int(b.scored.sum()) for b in batches))))
        loss_fn = partial(self._loss, window_tokens=window_tokens)
        model.train()
        passes = []
        for _ in range(cfg.loss.num_iterations if update else 1):
            if cfg.train.memory_lean:  # the same gradients, a few completions at a time (grpo_helpers/backward.py)
                per_batch = window_backward(model, batches, loss_fn, accelerator=accelerator,
                                            loss_type=cfg.loss.loss_type, prompts_per_pass=cfg.train.prompts_per_pass,
                                            completions_per_pass=cfg.train.completions_per_pass,
                                            temperature=cfg.rollout.temperature, check_finite=self._check_finite)
            else:
                per_batch = []
                share = window_share(cfg.loss.loss_type, batches=len(batches))  # of the window's loss
                for number, batch in enumerate(batches):  # gradient accumulation: the batches' gradients add up
                    last = number == len(batches) - 1  # several processes: average the gradients once, at the end
                    with nullcontext() if last else accelerator.no_sync(model):
                        logps, entropy = completion_logprobs(
                            model, batch.input_ids, batch.attention_mask, batch.rollout.completion_ids.shape[1],
                            temperature=cfg.rollout.temperature, return_entropy=True)  # (B*G, C) each
                        loss, stats = loss_fn(logps, batch, entropy=entropy)
                        self._check_finite(loss)
                        accelerator.backward(loss * share)  # under DeepSpeed: its backward, then its step
                    per_batch.append({"loss": loss.item() * share, **stats})
            grad_norm = clip_gradients(accelerator, model, cfg.train.max_grad_norm)
            if update:
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
            passes.append(_window_stats(per_batch))
        return {**{key: sum(p[key] for p in passes) / len(passes) for key in passes[0]}, "grad_norm": grad_norm}

    def _check_finite(self, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss):
            last = list_checkpoints(self.output_dir)
            raise FloatingPointError(
                f"loss is {loss.item()} at step {self.step + 1}; the update was skipped and the run stopped. "
                f"Last good checkpoint: {last[-1] if last else 'none written yet'}")

    def train_step(self, *, update: bool = True) -> tuple[dict[str, Any], list[Batch]]:
        """One optimizer step (mu of them when num_iterations > 1) on a fresh rollout window. update=False does the
        same work and logs nothing, steps nothing and leaves the weights as they were (the pre-flight check: it
        consumes prompts and random numbers and leaves gradients, which preflight.py puts back and drops)."""
        cfg = self.config
        start = time.perf_counter()
        batches, timing = [], {}
        for _ in range(cfg.train.grad_accum_steps):
            batch, t = self.make_batch()
            batches.append(batch)
            for key, value in t.items():
                timing[key] = timing.get(key, 0.0) + value
        release_freed_memory()  # sampling's leftovers, before the train pass allocates
        t_train = time.perf_counter()
        stats = self.optimize(batches, update=update)
        release_freed_memory()  # the backward's, before the next rollout
        if update:
            self.step += 1
        metrics = step_metrics(batches, stats, task=self.task, step=self.step,
                               reward_names=list(cfg.rewards.reward_weights), learning_rate=self.scheduler.get_last_lr()[0], accelerator=self.accelerator)
        if update and isinstance(self.sampler, TierSampler):  # the curriculum follows measured success
            self.sampler.update({key.rsplit("/", 1)[1]: value for key, value in metrics.items()
                                 if key.startswith("train/accuracy/")})
        metrics.update(timing)
        metrics["time/train"] = time.perf_counter() - t_train
        metrics["time/step"] = time.perf_counter() - start
        metrics["tokens_per_sec"] = metrics["completions/total_tokens"] / metrics["time/step"]
        return metrics, batches

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, tasks: list[dict] | None = None) -> dict[str, Any]:
        """Accuracy (equation reward = 1) with Wilson 95 % intervals, format rate, mean length and the hack monitor's
        shares on held-out tasks: `eval_tasks` of each tier when the tasks carry tiers (chapter 06's evaluation)."""
        cfg = self.config
        with whole_weights(self.accelerator, self.model):
            results = evaluate_tiers(self.unwrapped_model, self.tokenizer,
                                     tasks if tasks is not None else self.eval_dataset, task=self.task,
                                     per_tier=cfg.train.eval_tasks,
                                     max_new_tokens=cfg.rollout.max_new_tokens, temperature=cfg.rollout.temperature,
                                     top_p=cfg.rollout.top_p, top_k=cfg.rollout.top_k, greedy=cfg.train.eval_greedy,
                                     batch_size=cfg.train.eval_batch_size, seed=cfg.train.seed,
                                     desc=f"eval @ step {self.step}")
        return {"step": self.step, **tier_metrics(results, task=self.task)}

    def _run_eval(self) -> None:
        metrics = self.evaluate()
        self.eval_history.append(metrics)
        self._log("eval.jsonl", [metrics])
        for cb in self.callbacks:
            cb.on_eval(self, metrics)

    # ------------------------------------------------------------------ the loop
    def train(self) -> list[dict[str, Any]]:
        """Train up to max_steps (from where a resume left off) or until a callback sets `should_stop`, holding
        output_dir's lock meanwhile; a fresh run refuses a folder that holds another run unless overwrite=True."""
        cfg = self.config
        lock = claim_run_folder(self.output_dir, fresh=self.step == 0 and not self.history,
                                overwrite=cfg.train.overwrite, is_main=self.accelerator.is_main_process,
                                world_size=self.world_size)
        with lock or nullcontext():
            if self.accelerator.is_main_process:
                self.output_dir.mkdir(parents=True, exist_ok=True)
                self._save_run_files(self.output_dir)
            if cfg.train.report_to != "none":
                self.accelerator.init_trackers("grpo", config=cfg.flat())
            if cfg.train.eval_every and self.step == 0 and not self.eval_history:
                self._run_eval()
            bar = tqdm(total=cfg.train.max_steps, initial=self.step, desc="GRPO", unit="step",
                       disable=not self.accelerator.is_main_process)
            self.should_stop = False
            while self.step < cfg.train.max_steps and not self.should_stop:
                try:
                    metrics, batches = self.train_step()
                except KeyboardInterrupt:
                    last = list_checkpoints(self.output_dir)
                    tqdm.write(f"interrupted during step {self.step + 1}; the newest checkpoint, "
                               f"{last[-1] if last else 'none yet'}, is whole: build the same config with "
                               f"resume=True to continue from it")
                    raise
                self._after_step(metrics, batches)
                bar.update(1)
                bar.set_postfix(reward=f"{metrics['reward']:.3f}", len=f"{metrics['completions/mean_length']:.0f}",
                                s_per_step=f"{metrics['time/step']:.1f}")
                if cfg.train.eval_every and self.step % cfg.train.eval_every == 0:
                    self._run_eval()
                last = self.step == cfg.train.max_steps or self.should_stop
                if (cfg.train.save_every and self.step % cfg.train.save_every == 0) or last:
                    self.save_checkpoint()
            bar.close()
            if cfg.train.report_to != "none":
                self.accelerator.end_training()
        for cb in self.callbacks:
            cb.on_train_end(self)  # among them the GRPO doctor's verdict on the whole run
        return self.history

    def _after_step(self, metrics: dict[str, Any], batches: list[Batch]) -> None:
        """Log the step and tell the callbacks (among them the hack monitor's warning)."""
        self.history.append(metrics)
        self._log("metrics.jsonl", [metrics])
        self.last_completions = gather_object(completion_rows(batches, step=self.step, rank=self.rank))
        self._log("completions.jsonl", self.last_completions)
        if self.config.train.report_to != "none":
            self.accelerator.log(metrics, step=self.step)
        for cb in self.callbacks:
            cb.on_step_end(self, metrics)

    def save_adapter(self, path: str | Path) -> Path:
        """The trained adapter (or full model) plus tokenizer, ready for chapter 06."""
        path = Path(path)
        weights = gathered_state_dict(self.accelerator, self.model)
        if self.accelerator.is_main_process:
            self.unwrapped_model.save_pretrained(path, state_dict=weights)
            self.tokenizer.save_pretrained(path)
        self.accelerator.wait_for_everyone()
        return path


def _window_stats(per_batch: list[dict[str, float]]) -> dict[str, float]:
    """A window's stats from its batches': the loss is the sum of their shares, every other value their mean."""
    return {key: sum(b[key] for b in per_batch) / (1 if key == "loss" else len(per_batch)) for key in per_batch[0]}


def _resolve_task(reward_funcs: Task | list[RewardFunction] | dict[str, RewardFunction] | None,
                  config: GRPOConfig) -> Task:
    """The run's task: the one given; one made from plain reward functions (weighted by reward_weights when it names
    them, the first function judging correctness); or Countdown with the config's weights."""
    if reward_funcs is None:
        return countdown_task(config.rewards.reward_weights)
    if isinstance(reward_funcs, Task):
        return reward_funcs
    task = Task(reward_funcs=reward_funcs)
    weights = config.rewards.reward_weights
    if set(weights) <= set(task.reward_funcs):  # the config names these functions: its weights apply
        task.reward_weights = dict(weights)
    else:
        tqdm.write(f"reward_weights {weights} name other functions than {list(task.reward_funcs)}: each of these "
                   f"weighs 1.0 (pass a Task to choose, or set reward_weights to their names)")
    return task
