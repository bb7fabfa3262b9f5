"""verl as a second backend of `mathforge rl`: PPO (with a critic) or GRPO, multi-node, on verl 0.9.1.

Modules (each imports only what its side needs):

* :mod:`mathforge.verl.export`: our problems -> verl's RL parquet (runs in the main environment).
* :mod:`mathforge.verl.reward`: ``compute_score`` in verl's custom-reward signature (runs in verl's reward
  workers; imports steps, rewards' formulas and the grader, never torch/trl/vllm unless the PPM term is on).
* :mod:`mathforge.verl.agent_loop`: the step format with our sandboxed executor between steps, as a verl agent
  loop (runs in verl's agent-loop workers).
* :mod:`mathforge.verl.launcher`: ``mathforge rl --backend verl``: recipe -> Hydra overrides, ``--dry_run``
  validation against the pinned verl config, ``main_ppo``, then the FSDP checkpoint merged into a HF folder.
"""

VERL_VERSION = "0.9.1"
"""The verl release the overrides are written for (verl changes its config layout between minor versions)."""
