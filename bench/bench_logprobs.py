"""Chunked vs naive completion log-probs on the bundled model: peak memory, agreement, wall time (one JSON object).

    python bench/bench_logprobs.py [--rows 8 --prompt 145 --completion 256 --chunk-size 128 --checkpointing both]

Each (variant, backbone-checkpointing) pair runs forward + backward in its own fresh subprocess, so no run sees
another's allocator state. With backbone gradient checkpointing the naive pass is dominated by its logits; without
it the backbone's saved activations (~1.3 MiB per token for this model with LoRA) dominate both variants alike.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from grpo_helpers.logprobs import _final_hidden, completion_logprobs, naive_completion_logprobs
from grpo_helpers.models import load_model_and_tokenizer

# glibc keeps freed heap blocks resident and raises its mmap threshold dynamically, which hides a pass's true
# peak behind memory left from earlier ones; a fixed low threshold gives every tensor its own mapping, returned on free
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
METHOD = ("peak RSS: each (variant, checkpointing) runs in a fresh subprocess with glibc told to mmap every block "
          ">= 64 KiB (freed memory returns to the OS); load the LoRA model (lora_dropout 0, train mode), build the "
          "batch, warm up on one short row (faults in the lazily mapped weights), then reset the kernel's peak "
          "counter (write 5 to /proc/self/clear_refs), read VmRSS, run forward + backward of sum(logps * w * mask) "
          "and report VmHWM minus that VmRSS. 'backbone only' is the decoder pass both variants share (the same "
          "call, no LM head), measured in its own process: variant minus it is the LM head's share, give or take "
          "~40 MiB of run-to-run noise (the chunked pass peaks inside the backbone's backward, after its logit "
          "chunks are freed, so its share is ~0). memory_ratio is against the naive full-logits pass of issue 4 "
          "(the plain forward: all N x T x V fp32 logits, then log-softmax and gather); memory_ratio_vs_logits_to_keep "
          "against the stricter model(..., logits_to_keep=C+1), N x (C+1) x V (TRL's way)")


def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def make_batch(rows: int, prompt: int, completion: int, vocab: int, seed: int):
    """Left-padded prompts + right-padded completions, as the trainer concatenates them."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (rows, prompt + completion), generator=g)  # (N, T)
    mask = torch.ones_like(ids)
    for i in range(rows):
        mask[i, : (i * 7) % 20] = 0  # prompt padding
        mask[i, prompt + completion - (i * 29) % 100:] = 0  # completion padding
    weights = torch.randn(rows, completion, generator=g)  # (N, C): a generic functional of the log-probs
    return ids, mask, weights


def run_one(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)  # the same LoRA A init in every subprocess
    model, _ = load_model_and_tokenizer(args.model, dtype="float32", device="cpu", use_lora=True, lora_dropout=0.0,
                                        gradient_checkpointing=args.one_checkpointing == "on")
    model.train()  # HF only checkpoints in train mode; dropout is 0 so every run computes the same function
    for name, p in model.named_parameters():  # LoRA B starts at 0; a non-zero adapter makes the check meaningful
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02, generator=torch.Generator().manual_seed(0))
    ids, mask, weights = make_batch(args.rows, args.prompt, args.completion, model.config.vocab_size, args.seed)
    c = args.completion

    hidden_weights = torch.randn(args.rows, c, model.config.hidden_size)  # (N, C, H), for the backbone-only pass

    def fwd_bwd(ids_, mask_, weights_):
        if args.one_variant == "backbone":  # what both variants share: decoder forward + backward, no LM head
            hidden = _final_hidden(model, ids_, mask_)  # the very call completion_logprobs makes
            (hidden[:, -c - 1:-1] * hidden_weights[: len(ids_)]).sum().backward()
            return torch.zeros(len(ids_), c)
        if args.one_variant == "chunked":
            logps = completion_logprobs(model, ids_, mask_, c, chunk_size=args.chunk_size)
        else:
            logps = naive_completion_logprobs(model, ids_, mask_, c, all_positions=args.one_variant == "naive_full")
        (logps * weights_ * mask_[:, -c:]).sum().backward()
        return logps.detach()

    fwd_bwd(ids[:1, -c - 16:], mask[:1, -c - 16:], weights[:1])
    model.zero_grad(set_to_none=True)
    Path("/proc/self/clear_refs").write_text("5")
    base = rss_kib("VmRSS")
    start = time.perf_counter()
    logps = fwd_bwd(ids, mask, weights)
    seconds = time.perf_counter() - start
    torch.save({"logps": logps, "mask": mask[:, -c:], "peak_extra_kib": rss_kib("VmHWM") - base,
                "seconds": seconds, "vocab": model.config.vocab_size,
                "grads": {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}}, args.out)


def compare(naive_full: dict, naive: dict, chunked: dict, backbone: dict) -> dict:
    real = naive["mask"].bool()
    mib = lambda kib: round(kib / 1024, 1)  # noqa: E731
    head = {name: run["peak_extra_kib"] - backbone["peak_extra_kib"] for name, run in (("naive_full", naive_full),
                                                                                         ("naive", naive),
                                                                                         ("chunked", chunked))}
    return {
        "naive_full_peak_extra_mib": mib(naive_full["peak_extra_kib"]),
        "naive_keep_peak_extra_mib": mib(naive["peak_extra_kib"]),
        "chunked_peak_extra_mib": mib(chunked["peak_extra_kib"]),
        "memory_ratio": round(chunked["peak_extra_kib"] / naive_full["peak_extra_kib"], 3),
        "memory_ratio_vs_logits_to_keep": round(chunked["peak_extra_kib"] / naive["peak_extra_kib"], 3),
        "backbone_only_peak_extra_mib": mib(backbone["peak_extra_kib"]),
        "naive_full_minus_backbone_mib": mib(head["naive_full"]),
        "naive_keep_minus_backbone_mib": mib(head["naive"]),
        "chunked_minus_backbone_mib": mib(head["chunked"]),
        "max_abs_logp_diff": (naive_full["logps"] - chunked["logps"])[real].abs().max().item(),
        "max_abs_logp_diff_naive_keep_vs_full": (naive_full["logps"] - naive["logps"])[real].abs().max().item(),
        "max_abs_lora_grad_diff": max((naive["grads"][n] - g).abs().max().item() for n, g in chunked["grads"].items()),
        "max_abs_lora_grad": max(g.abs().max().item() for g in naive["grads"].values()),
        "naive_full_seconds": round(naive_full["seconds"], 2),
        "naive_keep_seconds": round(naive["seconds"], 2),
        "chunked_seconds": round(chunked["seconds"], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bundled:smollm2-135m-instruct")
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--prompt", type=int, default=145)
    parser.add_argument("--completion", type=int, default=256)
    parser.add_argument("--chunk-size", type=int, default=128)
    parser.add_argument("--checkpointing", choices=["both", "on", "off"], default="both",
                        help="backbone gradient checkpointing in the measured pass")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--one-variant", choices=["chunked", "naive_full", "naive", "backbone"], help=argparse.SUPPRESS)
    parser.add_argument("--one-checkpointing", choices=["on", "off"], help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one_variant:
        return run_one(args)

    load_before = os.getloadavg()[0]
    report = {"model": args.model, "dtype": "float32", "lora": True, "threads": args.threads, "rows": args.rows,
              "prompt_tokens": args.prompt, "completion_tokens": args.completion, "chunk_size": args.chunk_size}
    with tempfile.TemporaryDirectory() as tmp:
        for checkpointing in (["on", "off"] if args.checkpointing == "both" else [args.checkpointing]):
            runs = {}
            for variant in ("naive_full", "naive", "chunked", "backbone"):
                out = Path(tmp) / f"{variant}-{checkpointing}.pt"
                subprocess.run([sys.executable, __file__, *sys.argv[1:], "--one-variant", variant,
                                "--one-checkpointing", checkpointing, "--out", str(out)],
                               check=True, env={**os.environ, **MALLOC_ENV})
                runs[variant] = torch.load(out)
            report["vocab"] = runs["naive"]["vocab"]
            report[f"backbone_checkpointing_{checkpointing}"] = compare(runs["naive_full"], runs["naive"], runs["chunked"],
                                                                           runs["backbone"])
    report.update({"load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
                   "targets": {"memory_ratio (checkpointing on)": "<= 0.25", "max_abs_logp_diff": "<= 1e-5"},
                   "method": METHOD})
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
