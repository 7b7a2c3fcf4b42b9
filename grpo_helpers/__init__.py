"""grpo_helpers: GRPO for verifiable tasks (Countdown, chapter 08's, your own), one module per job, by layer
(the README's layout has the same table).

The game and data:
    task               the task contract (TRL's conventions): rows with a `prompt` column, reward functions, a judge
    countdown/game     Countdown's rules, exact arithmetic, generator and tiers, exact solver
    countdown/data     Countdown rows: validation, loading, the train/test split, files
    countdown/prompts  the Countdown prompt
    countdown/stats    dataset statistics and their figure
    countdown/rewards  Countdown's verifier (no `eval`) and reward functions
    countdown/traces   solver-written reasoning traces for the cold start (some slip and catch it)
    countdown/claims   every "a op b = c" a completion writes, recomputed: which false ones it corrects
    countdown/task     Countdown as one `Task`
    largest            chapter 08's task: the largest of five numbers

One GRPO step, in order:
    samplers           which rows a step sees: a resumable prompt sampler, a curriculum over tiers
    rollout            G completions per prompt, the prompt prefilled once
    decoding           how the rollout decodes, in transformers' plain terms (and the positions the log-probs reuse)
    scoring            calling the reward functions: checked, timed, weighted into one total
    dynamic_sampling   DAPO's swap of groups without reward spread for fresh prompts
    batch              a scored rollout made ready for the loss: advantages, reference and old log-probs
    loss               the objective: `group_advantages`, `grpo_loss` and its stats
    logprobs           per-token log-probs without the full logits, and their memory-lean passes
    backward           the memory-lean backward (`memory_lean: true`): the same gradient, a few completions at a time

Monitoring:
    metrics            what a step logs (TRL's names), gathered over processes
    monitor            the reward-hack signals and warning
    aha                the "aha" metrics: false claims corrected on the way to a correct answer
    doctor             the GRPO doctor: what is wrong with a run, in words
    dashboard          the live figure, with the doctor's verdict under it
    preflight          one throw-away step that shows a doomed run before it starts
    evaluation         held-out evaluation: `evaluate`, Wilson intervals, pass@k, the sign test
    callbacks          `Callback`, the trainer's one extension point
    default_callbacks  the callbacks every trainer starts with: the hack warning, the doctor's verdict

Plumbing:
    config             every setting in one validated dataclass tree; presets; YAML in and out
    config_history     which settings a resume may change, and every config a run ran under
    yaml_values        YAML numbers as people type them
    checks             shared argument checks, one wording
    errors             a learner's mistake as one line in a notebook
    models             loading the bundled model, hub ids or folders; LoRA
    hardware           hardware probes: bf16 speed, the default device, giving freed memory back
    fast               the speed tricks behind `fast`: quick decoding, LoRA dropout fused with its A matrix
    checkpoint         checkpoint folders, RNG states and DeepSpeed's engine state: stop and continue exactly
    run_folder         one live run per folder; JSON-lines logs
    distributed        what DDP and DeepSpeed change in the loop
    model_states       what each rank holds of weights, gradients and optimizer state, measured

Entry points:
    trainer            `GRPOTrainer`: the loop; the update on one screen in `optimize`
    sft                the cold start: a LoRA fine-tune on solver traces
    inference          chapter 06's tools: load an adapter, ask one task, compare two models, find "aha" moments
    objectives         chapter 07's matrix of objectives on one budget
    launcher           multi-process launches from a notebook, and their memory
    run_notebooks      every chapter headlessly with one parameter set
"""

from grpo_helpers.errors import show_usage_errors_briefly

show_usage_errors_briefly()  # in a notebook, a bad parameter reads as one line (grpo_helpers/errors.py)
