"""How fast could the standard job's step be on this machine? Its matmuls alone, timed at their real shapes (JSON).

    python bench/roofline.py [--trl-sec 43] [--prompt-len 145] [--measured STEP_TIME_JSON]

The standard job of bench/step_time.py (SmolLM2-135M, 2 prompts x G=4, 64 new tokens) is mostly products with
the model's frozen weights: 63 decode steps of 8 rows after a prefill of the prompts, the reference pass, and the
train pass (forward and the backward's input gradients). This script times exactly those products (the 30
layers' 7 projections and the LM head over distinct weight matrices, so nothing stays in cache) with the fastest
of four ways on this CPU (MKL `F.linear`, a weight stored transposed, oneDNN, oneDNN-prepacked), each phase at its
most favourable row count: every prompt and completion in one product, no recomputation. The sum is a lower
bound for the step: attention, norms, activations, LoRA, dropout, sampling and Python are left out, and the
train pass is counted without the prompt recomputation that keeps the peak RSS under 1.5 GiB. Prepacked
weights are a second copy of the model (+540 MB), so that way is not open to a run under 1.5 GiB either.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
import torch.nn.functional as F
from transformers import AutoConfig


def best_of(fn, repeats: int) -> float:
    fn()  # first touch: pages faulted in, kernels chosen
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def layer_shapes(config) -> list[tuple[int, int]]:
    """(out, in) of every projection of every decoder layer."""
    h, i = config.hidden_size, config.intermediate_size
    d = getattr(config, "head_dim", None) or h // config.num_attention_heads
    q, kv = config.num_attention_heads * d, config.num_key_value_heads * d
    return [(q, h), (kv, h), (kv, h), (h, q), (i, h), (i, h), (h, i)] * config.num_hidden_layers


def matmul_seconds(weights: list[torch.Tensor], rows: int, backward: bool, repeats: int) -> dict[str, float]:
    """Seconds for one product per weight at `rows` rows: forward x @ W.T (four ways: MKL, W stored transposed,
    oneDNN, oneDNN with W prepacked for `rows`) or, with `backward`, the input gradient g @ W (same work)."""
    inputs = {n: torch.randn(rows, n) for n in {w.shape[0 if backward else 1] for w in weights}}
    if backward:
        return {"mkl": best_of(lambda: [inputs[w.shape[0]] @ w for w in weights], repeats)}
    transposed = [w.t().contiguous() for w in weights]
    out = {"mkl": best_of(lambda: [F.linear(inputs[w.shape[1]], w) for w in weights], repeats),
           "transposed": best_of(lambda: [inputs[w.shape[0]] @ w for w in transposed], repeats)}
    del transposed
    out["onednn"] = best_of(lambda: [torch.ops.mkldnn._linear_pointwise(inputs[w.shape[1]], w, None, "none", [], "")
                                     for w in weights], repeats)
    packed = [torch.ops.mkldnn._reorder_linear_weight(w, rows) for w in weights]
    out["onednn_prepacked"] = best_of(
        lambda: [torch.ops.mkldnn._linear_pointwise(inputs[w.shape[1]], p, None, "none", [], "")
                 for w, p in zip(weights, packed)], repeats)
    return out


def bandwidth_gb_s(repeats: int) -> float:
    block = torch.ones(2**28)  # 1 GiB of fp32
    return block.numel() * 4 / best_of(lambda: block.sum(), repeats) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trl-sec", type=float, default=43.0, help="TRL's s/step on this job (the issue: 43)")
    parser.add_argument("--prompt-len", type=int, default=145, help="tokens per rendered prompt (standard: 145)")
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--measured", help="a bench/step_time.py JSON: its phase medians are shown beside")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from grpo_helpers.models import bundled_model_dir

    config = AutoConfig.from_pretrained(bundled_model_dir())
    weights = [torch.randn(o, i) for o, i in layer_shapes(config)]
    head = [torch.randn(config.vocab_size, config.hidden_size)]
    rows, prompt_tokens = args.prompts * args.group_size, args.prompts * args.prompt_len
    completion_tokens, decode_steps = rows * args.new_tokens, args.new_tokens - 1  # the prefill gives token 1
    scored = prompt_tokens + completion_tokens  # tokens through the layers in a grouped scoring pass

    layer_params, head_params = sum(w.numel() for w in weights), head[0].numel()

    def forward(layer_rows: int, head_rows: int) -> dict[str, float]:
        layers = matmul_seconds(weights, layer_rows, False, args.repeats)
        last = matmul_seconds(head, head_rows, False, args.repeats)
        return {way: layers[way] + last[way] for way in layers}

    def gflop(layer_rows: int, head_rows: int, passes: int = 1) -> float:
        return passes * 2 * (layer_rows * layer_params + head_rows * head_params) / 1e9

    decode = forward(rows, rows)
    prefill = forward(prompt_tokens, args.prompts)
    reference = forward(scored, completion_tokens)
    backward = (matmul_seconds(weights, scored, True, args.repeats)["mkl"]
                + matmul_seconds(head, completion_tokens, True, args.repeats)["mkl"])
    phases = {
        "generation": {"gflop": gflop(prompt_tokens, args.prompts) + decode_steps * gflop(rows, rows),
                       "ways": {w: prefill[w] + decode_steps * decode[w] for w in decode}},
        "reference": {"gflop": gflop(scored, completion_tokens), "ways": reference},
        "train": {"gflop": gflop(scored, completion_tokens, passes=2),
                  "ways": {w: reference[w] + backward for w in reference}},
    }
    for phase in phases.values():
        phase["best_way"] = min(phase["ways"], key=phase["ways"].get)
        phase["matmul_sec"] = round(phase["ways"][phase["best_way"]], 2)
        phase["without_prepacking_sec"] = round(min(s for w, s in phase["ways"].items() if w != "onednn_prepacked"), 2)
        phase["ways"] = {w: round(s, 2) for w, s in phase["ways"].items()}
        phase["gflop"] = round(phase["gflop"], 1)
    bandwidth = bandwidth_gb_s(args.repeats)
    weight_bytes = 4 * (layer_params + head_params)
    bound = sum(p["matmul_sec"] for p in phases.values())
    bound_unpacked = sum(p["without_prepacking_sec"] for p in phases.values())
    target = args.trl_sec / 4
    report = {
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads,
                    "torch": torch.__version__, "memory_bandwidth_gb_s": round(bandwidth, 1)},
        "job": {"prompts": args.prompts, "group_size": args.group_size, "prompt_len": args.prompt_len,
                "new_tokens": args.new_tokens, "layers": config.num_hidden_layers, "vocab": config.vocab_size},
        "phases": phases,
        "decode_weight_read_floor_sec": round(decode_steps * weight_bytes / bandwidth / 1e9, 2),
        "matmul_bound_sec": round(bound, 2),
        "matmul_bound_without_prepacking_sec": round(bound_unpacked, 2),
        "target_sec": round(target, 2),
        "left_for_everything_else_sec": round(target - bound, 2),
        "left_without_prepacking_sec": round(target - bound_unpacked, 2),
    }
    if args.measured:
        with open(args.measured) as f:
            run = json.load(f)["standard"]
        report["measured"] = {"sec_per_step_median": run["sec_per_step_median"],
                              "generation": run["generation_sec_median"], "reference": run["reference_sec_median"],
                              "train": run["train_sec_median"]}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
