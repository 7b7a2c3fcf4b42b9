"""The GRPO training loop: rollout -> rewards -> advantages -> reference -> loss -> optimizer step -> metrics.

One loop on `accelerate`, so the same code runs on a CPU, one GPU or several processes. Everything a run needs
to continue exactly after a crash (adapter, optimizer, scheduler, RNG states, data position) is checkpointed
atomically; metrics and sampled completions are appended as JSON lines that survive a kill.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, gather_object
from tqdm.auto import tqdm
from transformers import get_scheduler
from transformers.trainer_utils import enable_full_determinism

from grpo_helpers.checkpoint import (checkpoint_path, list_checkpoints, newest_checkpoint, load_adapter_weights,
                                     rng_state, seed_everything, set_rng_state, write_checkpoint)
from grpo_helpers.config import GRPOConfig, check_strategy
from grpo_helpers.data import TierSampler, load_split, make_sampler, render_prompts, split_record
from grpo_helpers.inference import evaluate_tiers, tier_metrics
from grpo_helpers.loss import (completion_logprobs, group_advantages, grouped_completion_logprobs,
                               grouped_logprobs_backward, grpo_loss)
from grpo_helpers.models import load_from_config, release_freed_memory
from grpo_helpers.monitor import hack_signals, hack_warning
from grpo_helpers.rewards import RewardBreakdown, equation_reward, score_completions
from grpo_helpers.rollout import Rollout, generate_groups, sampling_mode, select_groups
from grpo_helpers.run_folder import RunFolderError, RunLock, json_line, prepare_fresh_run

class Callback:
    """Extension point (minGPT style): subclass and override what you need; the dashboard is one of these."""

    def on_step_end(self, trainer: "GRPOTrainer", metrics: dict[str, Any]) -> None: ...

    def on_eval(self, trainer: "GRPOTrainer", metrics: dict[str, Any]) -> None: ...

    def on_checkpoint(self, trainer: "GRPOTrainer", path: Path) -> None: ...


@dataclass
class Batch:
    """One rollout prepared for the loss; every tensor row is one completion (prompt-major)."""

    rollout: Rollout
    input_ids: torch.Tensor  # (B*G, P + C)
    attention_mask: torch.Tensor  # (B*G, P + C)
    advantages: torch.Tensor  # (B*G,)
    ref_logps: torch.Tensor | None  # (B*G, C)
    old_logps: torch.Tensor | None  # (B*G, C)
    rewards: torch.Tensor  # (B*G,)
    per_function: dict[str, list[float]] = field(default_factory=dict)
    tasks: list[dict] = field(default_factory=list)
    dynamic: dict[str, float] = field(default_factory=dict)  # dynamic sampling: zero-std shares, fresh prompts


class GRPOTrainer:
    """Owns the model, optimizer and run state; `train()` runs the loop described in notebook 04."""

    def __init__(self, config: GRPOConfig, *, train_tasks: list[dict] | None = None,
                 test_tasks: list[dict] | None = None, callbacks: list[Callback] | tuple = (),
                 model=None, tokenizer=None, accelerator: Accelerator | None = None):
        self.config = config
        self.callbacks = list(callbacks)
        cfg = config
        self.accelerator = accelerator or Accelerator(
            gradient_accumulation_steps=1, log_with=None if cfg.train.report_to == "none" else cfg.train.report_to,
            project_dir=cfg.train.output_dir)
        self.rank, self.world_size = self.accelerator.process_index, self.accelerator.num_processes
        plugin = self.accelerator.state.deepspeed_plugin
        check_strategy(cfg, zero_stage=None if plugin is None else plugin.zero_stage)  # before anything loads
        self.output_dir = Path(cfg.train.output_dir)
        seed_everything(cfg.train.seed)
        if cfg.train.deterministic:  # cuBLAS, attention and scatter kernels otherwise vary run to run on a GPU
            enable_full_determinism(cfg.train.seed)

        if train_tasks is None or test_tasks is None:
            split_train, split_test = load_split(cfg.data, seed=cfg.train.seed)
            train_tasks = split_train if train_tasks is None else train_tasks
            test_tasks = split_test if test_tasks is None else test_tasks
        self.train_tasks, self.test_tasks = train_tasks, test_tasks
        self.sampler = make_sampler(train_tasks, batch_size=cfg.rollout.num_prompts, seed=cfg.train.seed,
                                    rank=self.rank, world_size=self.world_size, curriculum=cfg.data.curriculum,
                                    max_steps=cfg.train.max_steps)

        if model is None:
            model, tokenizer = load_from_config(cfg.model, device=self.accelerator.device)
        self.model, self.tokenizer = model, tokenizer
        self.is_lora = hasattr(self.model, "disable_adapter")
        # LoRA: the reference is the same model with the adapter switched off. Full fine-tuning: a frozen copy.
        self.ref_model = None
        if cfg.loss.beta > 0 and not self.is_lora:
            self.ref_model = copy.deepcopy(self.model).eval().requires_grad_(False)
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters: enable use_lora or unfreeze weights")
        self.optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        updates = cfg.train.max_steps * cfg.loss.num_iterations
        schedule = "constant_with_warmup" if cfg.train.lr_scheduler == "constant" else cfg.train.lr_scheduler
        self.scheduler = get_scheduler(schedule, self.optimizer, num_warmup_steps=cfg.train.warmup_steps,
                                       num_training_steps=updates)
        if plugin is not None:  # DeepSpeed sizes its engine from a batch size; there is no DataLoader to read it from
            plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = cfg.rollout.num_prompts * cfg.rollout.group_size
            plugin.deepspeed_config["gradient_clipping"] = cfg.train.max_grad_norm  # the engine clips, not us
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
        self.last_warning: str | None = None
        if cfg.train.resume:
            self.resume()

    # ------------------------------------------------------------------ plumbing: files
    @property
    def metrics_path(self) -> Path:
        return self.output_dir / "metrics.jsonl"

    @property
    def completions_path(self) -> Path:
        return self.output_dir / "completions.jsonl"

    @property
    def eval_path(self) -> Path:
        return self.output_dir / "eval.jsonl"

    def _append(self, path: Path, rows: list[dict[str, Any]]) -> None:
        if not self.accelerator.is_main_process:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            for row in rows:
                f.write(json_line(row) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _truncate_logs(self, step: int) -> None:
        """After a resume, drop log lines the crashed run wrote past its last checkpoint (they are redone)."""
        if not self.accelerator.is_main_process:
            return
        for path in (self.metrics_path, self.completions_path, self.eval_path):
            if path.is_file():
                kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
                tmp = path.with_suffix(".tmp")
                tmp.write_text("".join(line + "\n" for line in kept))
                os.replace(tmp, path)

    def _save_run_files(self, folder: Path) -> None:
        """config.yaml, plus data_split.json: the tasks actually used (a split passed in is not in the config)."""
        self.config.save_yaml(folder / "config.yaml")
        (folder / "data_split.json").write_text(json.dumps(split_record(self.train_tasks, self.test_tasks), indent=1))

    # ------------------------------------------------------------------ plumbing: checkpoints
    def _gathered_state_dict(self) -> dict[str, torch.Tensor] | None:
        """Under ZeRO-3 the weights are sharded: gather them (a collective, every rank calls it). Else None: the
        unwrapped model saves its own weights."""
        plugin = self.accelerator.state.deepspeed_plugin
        if plugin is None or plugin.zero_stage != 3:
            return None
        return self.accelerator.get_state_dict(self.model)

    def save_checkpoint(self) -> Path:
        """Write to a temporary folder, then rename: a kill mid-write leaves the previous checkpoint intact."""
        weights = self._gathered_state_dict()
        final = checkpoint_path(self.output_dir, self.step)
        if self.accelerator.is_main_process:
            def write(folder: Path) -> None:
                self.unwrapped_model.save_pretrained(folder / "model", state_dict=weights)
                state = {"step": self.step, "optimizer": self.optimizer.state_dict(),
                         "scheduler": self.scheduler.state_dict(), "rng": rng_state(),
                         "generator": self.generator.get_state(), "sampler": self.sampler.state_dict()}
                torch.save(state, folder / "trainer_state.pt")
                self._save_run_files(folder)

            write_checkpoint(self.output_dir, self.step, write, keep_last=self.config.train.keep_last)
        self.accelerator.wait_for_everyone()
        for cb in self.callbacks:
            cb.on_checkpoint(self, final)
        return final

    def resume(self) -> bool:
        """Continue from the newest complete checkpoint in output_dir; False when there is none."""
        path = newest_checkpoint(self.output_dir)
        if path is None:
            return False
        unwrapped = self.unwrapped_model
        if self.is_lora:
            load_adapter_weights(unwrapped, path / "model", self.accelerator.device)
        else:
            from transformers import AutoModelForCausalLM

            loaded = AutoModelForCausalLM.from_pretrained(path / "model", dtype=unwrapped.dtype)
            unwrapped.load_state_dict(loaded.state_dict())
        state = torch.load(path / "trainer_state.pt", weights_only=False, map_location="cpu")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        self.generator.set_state(state["generator"])
        self.sampler.load_state_dict(state["sampler"])
        self.step = state["step"]
        self._truncate_logs(self.step)
        if self.metrics_path.is_file():
            self.history = [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line]
        if self.eval_path.is_file():
            self.eval_history = [json.loads(line) for line in self.eval_path.read_text().splitlines() if line]
        return True

    # ------------------------------------------------------------------ the algorithm
    def _hf_checkpointing(self, model) -> bool:
        inner = getattr(model, "module", model)  # under a DDP or DeepSpeed wrapper
        return getattr(inner, "is_gradient_checkpointing", False) and model.training

    def _logps(self, model, batch: Batch) -> torch.Tensor:
        """Completion log-probs (B*G, C); each prompt runs once per group unless HF checkpointing forbids a cache."""
        r, temperature = batch.rollout, self.config.rollout.temperature
        if self._hf_checkpointing(model):
            return completion_logprobs(model, batch.input_ids, batch.attention_mask, r.completion_ids.shape[1],
                                       temperature=temperature)
        return grouped_completion_logprobs(model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask,
                                           r.group_size, temperature=temperature)  # (B*G, C)

    def _whole_weights(self):
        """DeepSpeed ZeRO-3 shards every weight across ranks; sampling token by token needs whole matrices, so they
        are gathered for the rollout: each rank briefly holds the full model (for a 3B model in bf16, ~6 GB per GPU
        on top of its shard). Not yet run on GPUs: DeepSpeed's per-layer hooks may still re-gather during decoding."""
        plugin = self.accelerator.state.deepspeed_plugin
        if plugin is None or plugin.zero_stage != 3:
            return nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(self.model.parameters()), modifier_rank=None)

    def _sample(self, tasks: list[dict]) -> tuple[Rollout, RewardBreakdown]:
        """G completions per task from the current policy, scored by the configured rewards."""
        cfg, G = self.config, self.config.rollout.group_size
        with self._whole_weights():
            rollout = generate_groups(self.unwrapped_model, self.tokenizer, render_prompts(self.tokenizer, tasks),
                                      group_size=G, max_new_tokens=cfg.rollout.max_new_tokens,
                                      temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                                      top_k=cfg.rollout.top_k, generator=self.generator,
                                      cuda_graph=cfg.rollout.cuda_graph)
        nums = [t["nums"] for t in tasks for _ in range(G)]
        target = [t["target"] for t in tasks for _ in range(G)]
        return rollout, score_completions(rollout.texts, nums=nums, target=target, weights=cfg.rewards.reward_weights,
                                          step=self.step + 1, time_limit=cfg.rewards.reward_time_limit)

    def _dynamic_sampling(self, tasks: list[dict], rollout: Rollout, scores: RewardBreakdown):
        """DAPO's dynamic sampling: a group whose rewards are all equal has zero advantages and teaches nothing, so
        it is swapped for the group of a fresh prompt, at most `dynamic_sampling` fresh prompts per step. Every rank
        draws the same number of fresh batches (the largest any rank needs), so the sampler stays aligned."""
        G, budget = self.config.rollout.group_size, self.config.rollout.dynamic_sampling
        pool = [(tasks, rollout, scores)]
        picks = [(0, i) for i in range(len(tasks))]  # slot -> (pool entry, prompt in it)

        def informative(entry: int, i: int) -> bool:
            values = pool[entry][2].total[i * G:(i + 1) * G]
            return max(values) - min(values) > 1e-9

        before = sum(not informative(*p) for p in picks) / len(picks)
        extra = 0
        while True:  # once a rank wants nothing (no empty group or no budget left) it never wants again
            empty = [slot for slot, p in enumerate(picks) if not informative(*p)]
            want = min(len(empty), budget - extra)
            wanted = torch.tensor(want, device=self.accelerator.device)
            if int(self.accelerator.reduce(wanted, reduction="sum")) == 0:
                break
            fresh = next(self.sampler)[:want]  # every rank draws: the sampler stays aligned across ranks
            if fresh:
                pool.append((fresh, *self._sample(fresh)))
                for i, slot in enumerate(empty[:len(fresh)]):
                    picks[slot] = (len(pool) - 1, i)
                extra += len(fresh)
        tasks = [pool[entry][0][i] for entry, i in picks]
        rollout = select_groups([entry[1] for entry in pool], picks, pad_id=self.tokenizer.pad_token_id)

        def kept(values_of) -> list[float]:  # the kept groups' values, slot by slot
            return [v for entry, i in picks for v in values_of(pool[entry][2])[i * G:(i + 1) * G]]

        total = kept(lambda breakdown: breakdown.total)
        per_function = {name: kept(lambda breakdown: breakdown.per_function[name]) for name in scores.per_function}
        after = sum(not informative(*p) for p in picks) / len(picks)
        stats = {"dynamic/zero_std_before": before, "dynamic/zero_std_after": after, "dynamic/extra_prompts": extra}
        seconds = {name: sum(entry[2].seconds.get(name, 0.0) for entry in pool) for name in scores.seconds}
        return tasks, rollout, RewardBreakdown(total=total, per_function=per_function, seconds=seconds), stats

    def make_batch(self) -> tuple[Batch, dict[str, float]]:
        """Sample a group per prompt, score it, and compute everything the loss needs that has no gradient."""
        cfg, model = self.config, self.unwrapped_model
        tasks = next(self.sampler)
        t0 = time.perf_counter()
        rollout, scores = self._sample(tasks)
        dynamic: dict[str, float] = {}
        if cfg.rollout.dynamic_sampling:
            tasks, rollout, scores, dynamic = self._dynamic_sampling(tasks, rollout, scores)
        t1 = time.perf_counter()
        G = cfg.rollout.group_size
        rewards = torch.tensor(scores.total, dtype=torch.float32)  # (B*G,)
        batch_std = None
        if cfg.loss.scale_rewards == "batch" and self.world_size > 1:  # the std of every process's rewards, as TRL
            batch_std = float(self._gather(rewards).std())
        advantages = group_advantages(rewards, G, scale=cfg.loss.scale_rewards, batch_std=batch_std)  # (B*G,)
        ids, mask = rollout.full_sequences()  # (B*G, P + C)
        batch = Batch(rollout=rollout, input_ids=ids, attention_mask=mask,
                      advantages=advantages.to(ids.device), ref_logps=None, old_logps=None, rewards=rewards,
                      per_function=scores.per_function, tasks=tasks, dynamic=dynamic)
        with sampling_mode(model):  # eval mode: reference and old log-probs without dropout noise
            if cfg.loss.beta > 0:
                if self.is_lora:
                    with model.disable_adapter():
                        batch.ref_logps = self._logps(model, batch)
                else:
                    batch.ref_logps = self._logps(self.ref_model, batch)
            t2 = time.perf_counter()
            if cfg.loss.num_iterations > 1:  # the ratio is taken to the policy that sampled the batch
                batch.old_logps = self._logps(model, batch)
        reward_seconds = sum(scores.seconds.values())
        timing = {"time/generation": t1 - t0 - reward_seconds, "time/reference": t2 - t1,
                  **{f"time/reward/{name}": value for name, value in scores.seconds.items()}}
        return batch, timing

    def _tokens_in_window(self, batches: list[Batch]) -> int:
        """Completion tokens of the whole accumulation window on all processes (the dapo normaliser)."""
        local = torch.tensor(sum(int(b.rollout.completion_mask.sum()) for b in batches), device=self.accelerator.device)
        return int(self.accelerator.reduce(local, reduction="sum"))

    def optimize(self, batches: list[Batch]) -> dict[str, float]:
        """mu passes of clipped-surrogate updates over the rollout window (one optimizer step per pass).

        Each batch goes through the model `prompts_per_pass` prompts and `completions_per_pass` of their
        completions at a time, each piece's loss scaled so that the summed gradients equal the whole batch's; the
        logged loss and stats are the whole batch's. DeepSpeed (which steps inside backward) and HF gradient
        checkpointing (no cache) take one backward per prompt piece instead.
        """
        cfg = self.config
        window_tokens = self._tokens_in_window(batches)
        sums: dict[str, float] = {}
        self.model.train()
        small_passes = self.accelerator.state.deepspeed_plugin is None and not self._hf_checkpointing(self.model)
        for _ in range(cfg.loss.num_iterations):
            for index, batch in enumerate(batches):
                pieces = self._pieces(batch)
                logps = []
                for number, piece in enumerate(pieces):
                    if small_passes:  # gradients stay local; reduced once below
                        with self.accelerator.no_sync(self.model):
                            logps.append(self._backward_in_small_passes(piece, batch, len(batches), window_tokens))
                        continue
                    last = index == len(batches) - 1 and number == len(pieces) - 1
                    with nullcontext() if last else self.accelerator.no_sync(self.model):  # all-reduce once
                        piece_logps = self._logps(self.model, piece)  # (G * prompts, C), with gradient
                        piece_loss, _ = self._loss(piece_logps, piece, window_tokens)
                        self._check_finite(piece_loss)
                        self.accelerator.backward(piece_loss * self._piece_weight(piece, batch, len(batches)))
                    logps.append(piece_logps.detach())
                with torch.no_grad():  # the whole batch's loss value and stats, from the pieces' log-probs
                    loss, stats = self._loss(torch.cat(logps), batch, window_tokens)  # finite: its pieces were
                if cfg.loss.loss_type != "dapo":
                    loss = loss / len(batches)
                for key, value in {"loss": loss.item(), **stats}.items():
                    sums[key] = sums.get(key, 0.0) + value
            if small_passes:
                self._average_gradients()
            grad_norm = self._clip_gradients()
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        passes = cfg.loss.num_iterations * len(batches)
        out = {k: v / passes for k, v in sums.items()}
        out["loss"] = sums["loss"] / cfg.loss.num_iterations  # the loss is already averaged over the window
        out["grad_norm"] = float("nan") if grad_norm is None else float(grad_norm)  # DeepSpeed: None before step 1
        return out

    def _backward_in_small_passes(self, piece: Batch, batch: Batch, accumulated: int, window_tokens: int) -> torch.Tensor:
        """Backward of the piece's loss share, `completions_per_pass` rows at a time; returns its log-probs (r, C)."""
        r = piece.rollout

        def share(logps: torch.Tensor, rows: slice) -> torch.Tensor:
            part = self._select(piece, slice(None), rows)
            loss, _ = self._loss(logps, part, window_tokens)
            self._check_finite(loss)
            return loss * self._piece_weight(part, batch, accumulated)

        return grouped_logprobs_backward(self.model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask,
                                         r.group_size, share, rows_per_pass=self.config.train.completions_per_pass,
                                         backward=self.accelerator.backward,
                                         temperature=self.config.rollout.temperature)

    def _average_gradients(self) -> None:
        """What DDP's all-reduce does, once per step, for gradients accumulated under `no_sync`."""
        if self.world_size == 1:
            return
        params = [p for p in self.model.parameters() if p.requires_grad]
        flat = torch.cat([(torch.zeros_like(p) if p.grad is None else p.grad).reshape(-1) for p in params])
        flat = self.accelerator.reduce(flat, reduction="mean")
        for p, grad in zip(params, flat.split([p.numel() for p in params])):
            p.grad = grad.view_as(p).clone()

    def _clip_gradients(self) -> torch.Tensor | float | None:
        """Clip to max_grad_norm (0 = no clipping) and return the norm before clipping, for the logs."""
        if self.config.train.max_grad_norm > 0 or self.accelerator.state.deepspeed_plugin is not None:
            return self.accelerator.clip_grad_norm_(self.model.parameters(), self.config.train.max_grad_norm)
        return torch.norm(torch.stack([p.grad.norm() for p in self.model.parameters() if p.grad is not None]))

    def _loss(self, logps: torch.Tensor, batch: Batch, window_tokens: int) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.config
        return grpo_loss(logps, old_logps=batch.old_logps, ref_logps=batch.ref_logps, advantages=batch.advantages,
                         completion_mask=batch.rollout.completion_mask, loss_type=cfg.loss.loss_type,
                         beta=cfg.loss.beta, clip_eps_low=cfg.loss.clip_eps_low, clip_eps_high=cfg.loss.clip_eps_high,
                         max_completion_length=cfg.rollout.max_new_tokens,
                         num_items_in_window=window_tokens / self.world_size)  # exact, as TRL divides

    def _pieces(self, batch: Batch) -> list[Batch]:
        """The batch cut into runs of `prompts_per_pass` prompts with their G completions (rows stay prompt-major)."""
        step, G = self.config.train.prompts_per_pass, batch.rollout.group_size
        prompts = batch.rollout.prompt_ids.shape[0]
        if step >= prompts:
            return [batch]
        return [self._select(batch, slice(start, start + step), slice(start * G, (start + step) * G))
                for start in range(0, prompts, step)]

    @staticmethod
    def _select(batch: Batch, prompts: slice, rows: slice) -> Batch:
        """Prompts `prompts` of the batch and completion rows `rows` (the caller keeps the two consistent)."""
        r = batch.rollout
        rollout = Rollout(prompt_ids=r.prompt_ids[prompts], prompt_mask=r.prompt_mask[prompts],
                          completion_ids=r.completion_ids[rows], completion_mask=r.completion_mask[rows],
                          lengths=r.lengths[rows], truncated=r.truncated[rows], texts=r.texts[rows],
                          group_size=r.group_size, seconds=r.seconds)
        return Batch(rollout=rollout, input_ids=batch.input_ids[rows], attention_mask=batch.attention_mask[rows],
                     advantages=batch.advantages[rows],
                     ref_logps=None if batch.ref_logps is None else batch.ref_logps[rows],
                     old_logps=None if batch.old_logps is None else batch.old_logps[rows],
                     rewards=batch.rewards[rows], tasks=batch.tasks[prompts])

    def _piece_weight(self, piece: Batch, batch: Batch, accumulated: int) -> float:
        """What turns a piece's loss into its share of the batch's loss (then divided over accumulated batches)."""
        loss_type, rows = self.config.loss.loss_type, piece.advantages.shape[0] / batch.advantages.shape[0]
        if loss_type == "dapo":  # already a share: token sum over the whole window's tokens
            return 1.0
        if loss_type == "bnpo":  # token mean: reweigh by the piece's share of the batch's tokens
            share = piece.rollout.completion_mask.sum().clamp(min=1) / batch.rollout.completion_mask.sum().clamp(min=1)
            return float(share) / accumulated
        return rows / accumulated  # grpo, dr_grpo: per-sequence means or sums

    def _check_finite(self, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss):
            last = list_checkpoints(self.output_dir)
            raise FloatingPointError(
                f"loss is {loss.item()} at step {self.step + 1}; the update was skipped and the run stopped. "
                f"Last good checkpoint: {last[-1] if last else 'none written yet'}")

    def train_step(self) -> tuple[dict[str, Any], list[Batch]]:
        """One optimizer step (mu of them when num_iterations > 1) on a fresh rollout window."""
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
        stats = self.optimize(batches)
        release_freed_memory()  # the backward's, before the next rollout
        self.step += 1
        metrics = self._step_metrics(batches, stats)
        metrics.update(timing)
        metrics["time/train"] = time.perf_counter() - t_train
        metrics["time/step"] = time.perf_counter() - start
        metrics["tokens_per_sec"] = metrics["completions/total_tokens"] / metrics["time/step"]
        return metrics, batches

    # ------------------------------------------------------------------ metrics
    def _gather(self, values: torch.Tensor) -> torch.Tensor:
        return self.accelerator.gather(values.to(self.accelerator.device)).cpu()

    def _step_metrics(self, batches: list[Batch], stats: dict[str, float]) -> dict[str, Any]:
        """TRL's metric names where they exist; rewards and lengths are gathered across processes."""
        G = self.config.rollout.group_size
        rewards = self._gather(torch.cat([b.rewards for b in batches]))  # (all completions,)
        lengths = self._gather(torch.cat([b.rollout.lengths for b in batches]).float())
        truncated = self._gather(torch.cat([b.rollout.truncated for b in batches]).float())
        groups = rewards.view(-1, G)
        metrics: dict[str, Any] = {
            "step": self.step, "reward": rewards.mean().item(), "reward_std": groups.std(dim=1).mean().item(),
            "frac_reward_zero_std": (groups.amax(1) == groups.amin(1)).float().mean().item(),
        }
        if "kl" in stats:  # measured only when beta > 0 (there is no reference pass otherwise)
            metrics["kl"] = stats["kl"]
        for name in self.config.rewards.reward_weights:
            values = torch.tensor([v for b in batches for v in b.per_function[name]])
            metrics[f"rewards/{name}/mean"] = self._gather(values).mean().item()
        metrics.update({
            "loss": stats["loss"], "grad_norm": stats["grad_norm"],
            "clip_ratio/low_mean": stats["clip_ratio/low_mean"], "clip_ratio/high_mean": stats["clip_ratio/high_mean"],
            "clip_ratio/region_mean": stats["clip_ratio/region_mean"],
            "completions/mean_length": lengths.mean().item(), "completions/min_length": lengths.min().item(),
            "completions/max_length": lengths.max().item(), "completions/clipped_ratio": truncated.mean().item(),
            "completions/total_tokens": lengths.sum().item(),
            "learning_rate": self.scheduler.get_last_lr()[0],
            "gen_tokens_per_sec": sum(b.rollout.tokens_per_sec for b in batches) / len(batches),
        })
        # the hack monitor and per-tier training accuracy, over every process's completions
        answered = gather_object([(text, b.tasks[i // G]) for b in batches for i, text in enumerate(b.rollout.texts)])
        metrics.update(hack_signals([text for text, _ in answered], [task for _, task in answered]))
        by_tier: dict[str, list[float]] = {}
        for text, task in answered:
            if task.get("tier"):
                by_tier.setdefault(task["tier"], []).append(self._correct(text, task))
        for tier, correct in sorted(by_tier.items()):
            metrics[f"train/accuracy/{tier}"] = sum(correct) / len(correct)
        if isinstance(self.sampler, TierSampler):
            self.sampler.update({tier: sum(c) / len(c) for tier, c in by_tier.items()})
        for key in sorted({k for b in batches for k in b.dynamic}):
            local = torch.tensor(sum(b.dynamic[key] for b in batches) / len(batches))
            metrics[key] = self.accelerator.reduce(local.to(self.accelerator.device), reduction="mean").item()
        return metrics

    @staticmethod
    def _correct(text: str, task: dict) -> float:
        return equation_reward([text], nums=[task["nums"]], target=[task["target"]])[0]

    def _completion_rows(self, batches: list[Batch]) -> list[dict[str, Any]]:
        rows = []
        for b in batches:
            G = b.rollout.group_size
            for i, text in enumerate(b.rollout.texts):
                task = b.tasks[i // G]
                rows.append({"step": self.step, "rank": self.rank, "nums": task["nums"], "target": task["target"], "completion": text,
                             "reward": b.rewards[i].item(), "advantage": b.advantages[i].item(),
                             **{f"rewards/{k}": v[i] for k, v in b.per_function.items()}})
        return rows

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, tasks: list[dict] | None = None, *, batch_size: int = 16) -> dict[str, Any]:
        """Accuracy (equation reward = 1) with Wilson 95 % intervals, format rate, mean length and the hack monitor's
        shares on held-out tasks: `eval_tasks` of each tier when the tasks carry tiers (chapter 06's evaluation)."""
        cfg = self.config
        with self._whole_weights():
            results = evaluate_tiers(self.unwrapped_model, self.tokenizer,
                                     tasks if tasks is not None else self.test_tasks, per_tier=cfg.train.eval_tasks,
                                     max_new_tokens=cfg.rollout.max_new_tokens, temperature=cfg.rollout.temperature,
                                     top_p=cfg.rollout.top_p, top_k=cfg.rollout.top_k, greedy=cfg.train.eval_greedy,
                                     batch_size=batch_size, seed=cfg.train.seed, desc=f"eval @ step {self.step}")
        return {"step": self.step, **tier_metrics(results)}

    def _run_eval(self) -> None:
        metrics = self.evaluate()
        self.eval_history.append(metrics)
        self._append(self.eval_path, [metrics])
        for cb in self.callbacks:
            cb.on_eval(self, metrics)

    # ------------------------------------------------------------------ the loop
    def _claim_folder(self) -> RunLock | None:
        """The main process locks output_dir (one live run per folder) and, for a fresh run, refuses a folder that
        holds another run unless overwrite=True; every rank raises the same error, so none waits on the others."""
        lock, error = None, None
        if self.accelerator.is_main_process:
            try:
                lock = RunLock(self.output_dir)
                if self.step == 0 and not self.history:  # a fresh run (not a resumed one, not a second train())
                    prepare_fresh_run(self.output_dir, overwrite=self.config.train.overwrite)
            except RunFolderError as caught:
                error = str(caught)
                if lock is not None:
                    lock.release()
        if self.world_size > 1:
            error = broadcast_object_list([error])[0]
        if error:
            raise RunFolderError(error)
        return lock

    def train(self) -> list[dict[str, Any]]:
        """Train up to max_steps (from where a resume left off), holding output_dir's lock meanwhile."""
        lock = self._claim_folder()
        try:
            return self._train()
        finally:
            if lock is not None:
                lock.release()

    def _train(self) -> list[dict[str, Any]]:
        cfg = self.config
        if self.accelerator.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self._save_run_files(self.output_dir)
        if cfg.train.report_to != "none":
            self.accelerator.init_trackers("grpo", config=cfg.flat())
        if cfg.train.eval_every and self.step == 0 and not self.eval_history:
            self._run_eval()
        bar = tqdm(total=cfg.train.max_steps, initial=self.step, desc="GRPO", unit="step",
                   disable=not self.accelerator.is_main_process)
        while self.step < cfg.train.max_steps:
            metrics, batches = self.train_step()
            self.history.append(metrics)
            self._append(self.metrics_path, [metrics])
            self._append(self.completions_path, gather_object(self._completion_rows(batches)))
            if cfg.train.report_to != "none":
                self.accelerator.log(metrics, step=self.step)
            bar.update(1)
            bar.set_postfix(reward=f"{metrics['reward']:.3f}", len=f"{metrics['completions/mean_length']:.0f}",
                            s_per_step=f"{metrics['time/step']:.1f}")
            for cb in self.callbacks:
                cb.on_step_end(self, metrics)
            warning = hack_warning(self.history)
            if warning and self.last_warning is None and self.accelerator.is_main_process:
                tqdm.write(warning)  # once, when it starts (also in the log); the dashboard shows it while it lasts
            self.last_warning = warning
            if cfg.train.eval_every and self.step % cfg.train.eval_every == 0:
                self._run_eval()
            if (cfg.train.save_every and self.step % cfg.train.save_every == 0) or self.step == cfg.train.max_steps:
                self.save_checkpoint()
        bar.close()
        if cfg.train.report_to != "none":
            self.accelerator.end_training()
        return self.history

    def save_adapter(self, path: str | Path) -> Path:
        """The trained adapter (or full model) plus tokenizer, ready for chapter 06."""
        path = Path(path)
        weights = self._gathered_state_dict()
        if self.accelerator.is_main_process:
            self.unwrapped_model.save_pretrained(path, state_dict=weights)
            self.tokenizer.save_pretrained(path)
        self.accelerator.wait_for_everyone()
        return path
