"""The cold start: a short LoRA fine-tune on solver-written reasoning traces, before GRPO.

It takes rows the way the trainer does (grpo_helpers/task.py): prompt-completion rows (TRL's SFT format) are
learned as they are; rows without a `completion` get one from the task's `traces` (Countdown: the solver's).

Why: GRPO can only reinforce what the policy already samples. The bundled 135M model samples no correct answer
on any Countdown tier, so its rewards carry no signal about solving (only about format, which it then games).
DeepSeek-R1 (unlike R1-Zero) starts RL from a small supervised cold start; this is that step for a laptop model:
teach the search-then-answer layout and a non-zero success rate, then let RL improve on it.

The loss is the mean negative log-likelihood of the completion tokens only (the prompt is context, not a
target), computed with the same chunked log-probs as the GRPO loss. Progress, metrics (JSON lines), checkpoints
and exact resume work as in the GRPO trainer; the adapter lands in `{output_dir}/cold_start/adapter`.

Its folder follows the GRPO run's rules (grpo_helpers/run_folder.py): one live run per folder, and a cold start
into a folder that holds an earlier one is refused unless `resume=True` (a finished one is reused, no step
retrained; an unfinished one continues) or `overwrite=True` (it is deleted and trained again): a GRPO run may have
been built from that adapter. A resume may not change what the cold start learns (grpo_helpers/config_history.py).
"""

from __future__ import annotations

import random
import shutil
import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from tqdm.auto import tqdm
from transformers import get_scheduler

from grpo_helpers.checkpoint import resume_training, save_training_checkpoint, seed_everything
from grpo_helpers.config import GRPOConfig
from grpo_helpers.config_history import COLD_START_FIELDS, COLD_START_SAFE_ON_RESUME, check_resume, record_config
from grpo_helpers.countdown.task import countdown_task
from grpo_helpers.distributed import clip_gradients, gathered_state_dict, size_deepspeed_engine
from grpo_helpers.logprobs import completion_logprobs
from grpo_helpers.models import load_from_config
from grpo_helpers.run_folder import (RunFolderError, RunLock, append_json_lines, existing_run, keep_lines_up_to,
                                     read_json_lines)
from grpo_helpers.samplers import PromptSampler
from grpo_helpers.task import Task, tokenize_prompts

WARMUP_STEPS = 10


def cold_start_dir(config: GRPOConfig) -> Path:
    return Path(config.train.output_dir) / "cold_start"


def earlier_cold_start(folder: Path) -> str | None:
    """What an earlier cold start left in its folder (logged steps, checkpoints, its adapter), in words; None when
    nothing."""
    found = [existing_run(folder), "a trained adapter in adapter/" if (folder / "adapter").exists() else None]
    return ", ".join(text for text in found if text) or None


def balanced_sample(tasks: list[dict], n: int, *, seed: int) -> list[dict]:
    """Up to n tasks, the same number from each tier (all tasks alike when untiered), in a seeded random order: a
    cold start that saw only the easiest tier would answer every task in that tier's style."""
    by_tier: dict[Any, list[dict]] = {}
    for task in tasks:
        by_tier.setdefault(task.get("tier"), []).append(task)
    rng = random.Random(seed)
    picked = []
    for index, rows in enumerate(by_tier.values()):
        share = n // len(by_tier) + (index < n % len(by_tier))
        picked += rng.sample(rows, min(share, len(rows)))
    rng.shuffle(picked)
    return picked


def trace_batch(tokenizer, rows: list[dict], *, task: Task) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prompt (left-padded, as at sampling time) + completion + EOS (right-padded), and which tokens are targets.

    Returns input_ids and attention_mask (N, P + C) and completion_mask (N, C): 1 on the completion's tokens and
    its EOS, the tokens the loss is taken on."""
    prompts = tokenize_prompts(tokenizer, task.render_prompts(tokenizer, rows))
    completions = [tokenizer(r["completion"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
                   for r in rows]
    C = max(len(c) for c in completions)
    completion_ids = torch.full((len(rows), C), tokenizer.pad_token_id, dtype=torch.long)  # (N, C)
    completion_mask = torch.zeros((len(rows), C), dtype=torch.long)  # (N, C)
    for i, ids in enumerate(completions):
        completion_ids[i, :len(ids)] = torch.tensor(ids)
        completion_mask[i, :len(ids)] = 1
    input_ids = torch.cat([prompts["input_ids"], completion_ids], dim=1)  # (N, P + C)
    attention_mask = torch.cat([prompts["attention_mask"], completion_mask], dim=1)  # (N, P + C)
    return input_ids, attention_mask, completion_mask


def sft_loss(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood per completion token (prompt tokens are not targets)."""
    logps = completion_logprobs(model, input_ids, attention_mask, completion_mask.shape[1])  # (N, C)
    mask = completion_mask.to(logps.dtype)
    return -(logps * mask).sum() / mask.sum().clamp(min=1)


class ColdStart:
    """Supervised fine-tuning of a fresh LoRA adapter on verified traces; `train()` then `adapter_dir`."""

    def __init__(self, config: GRPOConfig, *, train_dataset: Any, task: Task | None = None, model=None,
                 tokenizer=None, accelerator: Accelerator | None = None,
                 callbacks: list[Callable[["ColdStart", dict[str, Any]], None]] | tuple = ()):
        cfg = config.cold_start
        self.accelerator = accelerator or Accelerator()
        if cfg.sft_steps < 1:
            raise ValueError(f"sft_steps={cfg.sft_steps}: the cold start needs at least one step (0 means no cold start)")
        if not config.model.use_lora:
            raise ValueError("the cold start trains a LoRA adapter: set use_lora=True")
        self.config, self.callbacks = config, list(callbacks)
        self.output_dir = cold_start_dir(config)
        seed_everything(config.train.seed)
        self.task = task or countdown_task(config.rewards.reward_weights)
        self.traces = self._traces(self.task.rows(train_dataset, what="train_dataset"))
        if len(self.traces) < cfg.sft_batch_size * self.accelerator.num_processes:
            raise ValueError(f"only {len(self.traces)} of {cfg.sft_traces} sampled training rows have a trace (a "
                             f"completion to learn): use more training rows")
        self.sampler = PromptSampler(self.traces, batch_size=cfg.sft_batch_size, seed=config.train.seed,
                                     rank=self.accelerator.process_index, world_size=self.accelerator.num_processes)
        if model is None:
            model, tokenizer = load_from_config(replace(config.model, init_adapter=""), device=self.accelerator.device)
        self.tokenizer = tokenizer
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.sft_lr, weight_decay=0.0)
        # not prepared: accelerate would step it once per process per step, ending the cosine early on N ranks
        self.scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=min(WARMUP_STEPS, cfg.sft_steps // 10),
                                       num_training_steps=cfg.sft_steps)
        size_deepspeed_engine(self.accelerator, micro_batch=cfg.sft_batch_size,
                              max_grad_norm=config.train.max_grad_norm)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.unwrapped_model = self.accelerator.unwrap_model(self.model)
        self.step, self.history = 0, []
        if config.train.resume:
            self.resume()

    def _traces(self, rows: list[dict]) -> list[dict]:
        """Up to sft_traces prompt-completion rows, balanced over tiers: given ones, or the task's own traces."""
        cfg, seed = self.config.cold_start, self.config.train.seed
        picked = balanced_sample(rows, cfg.sft_traces, seed=seed)
        if all("completion" in row for row in rows):
            return picked
        if self.task.traces is None:
            raise ValueError(f"the cold start needs prompt-completion rows (a 'completion' column) or a task with "
                             f"traces: task {self.task.name!r} has neither")
        if cfg.sft_recovery_share:  # only Countdown-like traces know it: a user's traces(rows, seed) keeps working
            return self.task.traces(picked, seed=seed, recovery_share=cfg.sft_recovery_share)
        return self.task.traces(picked, seed=seed)

    @property
    def metrics_path(self) -> Path:
        return self.output_dir / "metrics.jsonl"

    @property
    def adapter_dir(self) -> Path:
        return self.output_dir / "adapter"

    # ------------------------------------------------------------------ plumbing: checkpoints
    def save_checkpoint(self) -> None:
        save_training_checkpoint(self.output_dir, self.step, accelerator=self.accelerator, model=self.model,
                                 unwrapped_model=self.unwrapped_model, optimizer=self.optimizer,
                                 scheduler=self.scheduler, sampler=self.sampler, keep_last=2)

    def resume(self) -> bool:
        """Continue from the newest complete cold-start checkpoint; False when there is none."""
        step = resume_training(self.output_dir, accelerator=self.accelerator, model=self.model,
                               unwrapped_model=self.unwrapped_model, optimizer=self.optimizer,
                               scheduler=self.scheduler, sampler=self.sampler)
        if step is None:
            return False
        check_resume(self.output_dir, self.config, step=step, what="cold start", names=COLD_START_FIELDS,
                     may_change=COLD_START_SAFE_ON_RESUME)
        self.step = step
        if self.accelerator.is_main_process:
            keep_lines_up_to(self.metrics_path, step)
        self.history = [row for row in read_json_lines(self.metrics_path) if row["step"] <= step]
        return True

    # ------------------------------------------------------------------ the loop
    def train_step(self) -> dict[str, Any]:
        start = time.perf_counter()
        rows = next(self.sampler)
        input_ids, attention_mask, completion_mask = (t.to(self.accelerator.device)
                                                      for t in trace_batch(self.tokenizer, rows, task=self.task))
        self.model.train()
        loss = sft_loss(self.model, input_ids, attention_mask, completion_mask)
        self.accelerator.backward(loss)
        grad_norm = clip_gradients(self.accelerator, self.model, self.config.train.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        loss = self.accelerator.reduce(loss.detach(), reduction="mean")
        return {"step": self.step, "loss": loss.item(), "grad_norm": grad_norm,
                "learning_rate": self.scheduler.get_last_lr()[0], "tokens": int(completion_mask.sum()),
                "time/step": time.perf_counter() - start}

    def train(self) -> Path:
        """Run the remaining steps (none if a finished cold start is resumed) and save the adapter, holding the
        folder's lock meanwhile."""
        with self._claim_folder() or nullcontext():
            return self._train()

    def _claim_folder(self) -> RunLock | None:
        """The main process locks the folder; a cold start that resumed nothing refuses a folder holding an earlier
        one unless overwrite=True, which deletes that one. Every rank raises the same error, so none waits on the
        others. The lock (main process) or None."""
        lock, error = None, None
        if self.accelerator.is_main_process:
            try:
                lock = RunLock(self.output_dir)
                if self.step == 0:
                    self._clear_earlier_cold_start()
            except RunFolderError as caught:
                error = str(caught)
                if lock is not None:
                    lock.release()
        if self.accelerator.num_processes > 1:
            error = broadcast_object_list([error])[0]
        if error:
            raise RunFolderError(error)
        return lock

    def _clear_earlier_cold_start(self) -> None:
        found = earlier_cold_start(self.output_dir)
        if found is None:
            return
        if not self.config.train.overwrite:
            if self.config.train.resume:
                raise RunFolderError(f"{self.output_dir} holds a cold start ({found}) but no whole checkpoint to "
                                     f"resume it from. Set overwrite=True to train it again from scratch, or choose "
                                     f"another output_dir")
            raise RunFolderError(f"{self.output_dir} already holds a cold start ({found}). Set resume=True to reuse "
                                 f"it (a finished one is not retrained; an unfinished one continues from its last "
                                 f"checkpoint), overwrite=True to train it again from scratch, or choose another "
                                 f"output_dir")
        self.metrics_path.unlink(missing_ok=True)
        shutil.rmtree(self.output_dir / "checkpoints", ignore_errors=True)
        shutil.rmtree(self.adapter_dir, ignore_errors=True)

    def _train(self) -> Path:
        cfg = self.config.cold_start
        if self.accelerator.is_main_process:
            record_config(self.output_dir, self.config, step=self.step, names=COLD_START_FIELDS)
        bar = tqdm(total=cfg.sft_steps, initial=self.step, desc="cold start (SFT)", unit="step",
                   disable=not self.accelerator.is_main_process)
        while self.step < cfg.sft_steps:
            metrics = self.train_step()
            self.history.append(metrics)
            if self.accelerator.is_main_process:
                append_json_lines(self.metrics_path, [metrics])
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.3f}", s_per_step=f"{metrics['time/step']:.1f}")
            for callback in self.callbacks:
                callback(self, metrics)
            if (cfg.sft_save_every and self.step % cfg.sft_save_every == 0) or self.step == cfg.sft_steps:
                self.save_checkpoint()
        bar.close()
        weights = gathered_state_dict(self.accelerator, self.model)  # a collective under ZeRO-3: every rank
        if self.accelerator.is_main_process:
            self.unwrapped_model.save_pretrained(self.adapter_dir, state_dict=weights)
            self.tokenizer.save_pretrained(self.adapter_dir)
        self.accelerator.wait_for_everyone()
        return self.adapter_dir


def run_cold_start(config: GRPOConfig, *, train_dataset: Any, **kwargs: Any) -> Path:
    """Train the cold start (or reuse a finished one in the same folder when resume=True; overwrite=True trains a
    used folder's again); the adapter's folder."""
    trainer = ColdStart(config, train_dataset=train_dataset, **kwargs)
    path = trainer.train()
    del trainer
    return path
