"""Countdown, the tutorial's main task: use the given numbers, each once, with + - * / to reach a target.

`game` (rules, exact arithmetic, generator, tiers, solver), `data` (rows: loading, validation, the split, files),
`prompts`, `stats`, `rewards` (the safe verifier and the reward functions), `traces` (solver-written demonstrations
for the cold start), `claims` (each "a op b = c" recomputed: self-corrections) and `task` (all of it as one
`grpo_helpers.task.Task`).
"""
