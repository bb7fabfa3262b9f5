"""Tree search: MCTS data synthesis (:mod:`.mcts`), training data from trees (:mod:`.extract`) and
inference-time search (:mod:`.inference`: MCTS with a PPM, step-level beam search, best-of-N, majority vote)."""

from mathforge.search.mcts import SearchConfig, SearchStats, Tree, read_trees, run_search, search

__all__ = ["SearchConfig", "SearchStats", "Tree", "read_trees", "run_search", "search"]
