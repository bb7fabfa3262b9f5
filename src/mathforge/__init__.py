"""mathforge: MCTS-verified SFT + process preference model (accuracy), then GRPO with length rewards
(efficiency), for small open LLMs doing math. See README.md for the pipeline."""

__version__ = "0.1.0"
