"""Countdown, the tutorial's main task: use the given numbers, each once, with + - * / to reach a target.

`data` (rules, generator, solver, loading, tiers, prompts), `rewards` (the safe verifier and the reward functions),
`traces` (solver-written demonstrations for the cold start) and `task` (all of it as one `grpo_helpers.task.Task`).
"""
