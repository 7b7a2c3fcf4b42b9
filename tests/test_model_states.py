"""The model-state meter on one process: what it reports is what the tensors hold (DDP and DeepSpeed runs are in
test_scale_path.py)."""

from __future__ import annotations

import torch

from grpo_helpers.model_states import ModelStateMeter, parameter_counts, read_model_states, write_model_states


def test_the_meter_reads_weights_gradients_at_the_step_and_adams_moments(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 2))
    model[0].requires_grad_(False)  # frozen, as LoRA's base: weights only
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    meter = ModelStateMeter(model=model, optimizer=optimizer)
    assert meter.report() == {"weights": 4 * (72 + 18), "gradients": 0, "optimizer": 0}  # nothing stepped yet

    model(torch.randn(3, 8)).sum().backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)  # gone after the step: the meter saw them just before it
    counts = parameter_counts(model)
    assert counts == {"parameters": 90, "trainable": 18}
    assert meter.report() == {"weights": 4 * 90, "gradients": 4 * 18, "optimizer": 8 * 18}

    write_model_states(tmp_path / "model_states.json", strategy={"name": "one process", "world_size": 1},
                       counts=counts, ranks=[meter.report()])
    assert read_model_states(tmp_path / "model_states.json")["ranks"][0]["optimizer"] == 8 * 18
    assert not list(tmp_path.glob("*.tmp"))
