"""Training data from search trees, without searching again (rStar-Math §3.3, AlphaMath).

    mathforge extract --trees runs/tiny/search/round1.jsonl --output_dir runs/tiny/search/round1_data

Three sets, each a folder with ``train.jsonl`` (load with ``datasets.load_dataset("json", ...)``, or
pass the folder to ``mathforge sft --dataset_name``), plus ``stats.json``:

* ``sft/``: per problem, the top-k (default 2) correct root-to-leaf trajectories by mean step Q (ties:
  higher min step Q), trajectories with a failing step dropped. TRL conversational prompt/completion:
  ``prompt`` = [system?, user: problem], ``completion`` = [assistant: the solution, outputs from the
  executor]; plus ``id``, ``mean_q``, ``min_q``.
* ``pairs/``: preference pairs for the PPM in TRL's standard (string) format: ``prompt`` = the chat
  prompt + the shared solution prefix, ``chosen``/``rejected`` = what follows it. *Step rule*: at each
  node, positives = up to 2 children that reach a correct answer (highest Q), negatives = up to 2
  children that never do but reach a wrong leaf (lowest Q); the chunk is rendered with its
  ``<output>`` block. *Final-step rule*: the 2 correct trajectories with the highest mean Q against
  the 2 wrong ones with the lowest; since prompt + chosen must be the whole trajectory, they are split
  where they part (the shared prefix goes into ``prompt``). Only pairs with a Q margin >= 0.5 are kept,
  duplicates once. Wrong leaves are ``wrong``/``too_deep``/``code_errors``; ``invalid`` chunks are
  never a pair side (the PPM only ever scores well-formed steps). Columns: prompt, chosen, rejected,
  id, depth (of the chosen/rejected chunk's first node), q_chosen, q_rejected, rule (step|final).
  (No column is called ``margin``: TRL's RewardTrainer would use it in its loss.)
* ``values/``: Q of every visited node and every terminal (root and invalid chunks excepted) as a
  regression target: ``prompt`` (text up to and including the node), ``value``, ``id``, ``depth``, ``N``.

Prompts are ``steps.chat_prompt`` with the tokenizer of ``--model_name_or_path`` (default: the model
recorded in the trees), so the pairs match what the PPM sees in search.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from mathforge import steps
from mathforge.config import parse_config, resolve
from mathforge.errors import UserError
from mathforge.search.mcts import WRONG_REASONS, node_text, read_trees, tree_files

KINDS = ("sft", "pairs", "values")


@dataclass
class ExtractConfig:
    """Which trees to read, the selection rules, and where the datasets go."""

    trees: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Tree JSONL files written by search; each also reads the shard files beside it "
            "(trees.rank*-of-*.jsonl, from a data-parallel search)."
        },
    )
    output_dir: str | None = field(
        default=None, metadata={"help": "Folder for sft/, pairs/, values/, stats.json."}
    )
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Tokenizer for prompts; default: the model recorded in the trees."}
    )
    system_prompt: str | None = field(
        default=None, metadata={"help": "System message; default: the one the trees were searched with."}
    )
    sft_top_k: int = field(default=2, metadata={"help": "Correct trajectories kept per problem."})
    pairs_per_side: int = field(default=2, metadata={"help": "Positives and negatives per node."})
    min_margin: float = field(default=0.5, metadata={"help": "Smallest Q(chosen) - Q(rejected) kept."})
    push_to_hub: str | None = field(
        default=None,
        metadata={
            "help": "Hub dataset repo (owner/name) to publish output_dir to, as `mathforge push` does."
        },
    )
    private: bool = field(default=True, metadata={"help": "Create the Hub repo as private."})


# --- reading a tree --------------------------------------------------------------------------------------


class TreeView:
    """A written tree with what the rules need: paths, leaf outcomes below each node, rendering."""

    def __init__(self, tree: dict):
        self.tree = tree
        self.nodes = {n["id"]: n for n in tree["nodes"]}
        self.children: dict[int, list[int]] = {i: [] for i in self.nodes}
        for n in tree["nodes"]:
            if n["parent"] is not None:
                self.children[n["parent"]].append(n["id"])
        self.has_correct, self.has_wrong = {}, {}
        for n in sorted(tree["nodes"], key=lambda n: -n["id"]):  # children before parents
            i = n["id"]
            self.has_correct[i] = n["terminal"] == "correct" or any(
                self.has_correct[c] for c in self.children[i]
            )
            self.has_wrong[i] = n["terminal"] in WRONG_REASONS or any(
                self.has_wrong[c] for c in self.children[i]
            )

    def path(self, node_id: int) -> list[dict]:
        """Nodes from the root's child down to ``node_id``."""
        out = []
        while self.nodes[node_id]["parent"] is not None:
            out.append(self.nodes[node_id])
            node_id = self.nodes[node_id]["parent"]
        return out[::-1]

    def leaves(self, reasons) -> list[list[dict]]:
        return [self.path(n["id"]) for n in self.tree["nodes"] if n["terminal"] in reasons]

    @staticmethod
    def render(nodes: list[dict]) -> str:
        return "".join(node_text(n) for n in nodes)


def _mean_min(path: list[dict]) -> tuple[float, float]:
    qs = [n["Q"] for n in path]
    return sum(qs) / len(qs), min(qs)


# --- the three rules -------------------------------------------------------------------------------------


def sft_rows(view: TreeView, top_k: int = 2, system_prompt: str | None = None) -> list[dict]:
    ranked = []
    for path in view.leaves(("correct",)):
        if any(n["error"] for n in path):
            continue
        mean_q, min_q = _mean_min(path)
        ranked.append((-mean_q, -min_q, path[-1]["id"], path))
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    rows = []
    for neg_mean, neg_min, _, path in sorted(ranked, key=lambda r: r[:3])[:top_k]:
        rows.append(
            {
                "prompt": system + [{"role": "user", "content": view.tree["problem"]}],
                "completion": [{"role": "assistant", "content": view.render(path)}],
                "id": view.tree["id"],
                "mean_q": -neg_mean,
                "min_q": -neg_min,
            }
        )
    return rows


def pair_rows(view: TreeView, prompt: str, per_side: int = 2, min_margin: float = 0.5) -> list[dict]:
    """Step-rule and final-step-rule pairs of one tree; ``prompt`` is the chat prompt of its problem."""
    rows, seen = [], set()

    def add(prefix: list[dict], chosen: list[dict], rejected: list[dict], q_c: float, q_r: float, rule: str):
        row = {
            "prompt": prompt + view.render(prefix),
            "chosen": view.render(chosen),
            "rejected": view.render(rejected),
        }
        key = tuple(row.values())
        if q_c - q_r >= min_margin and key not in seen:
            seen.add(key)
            row.update(id=view.tree["id"], depth=len(prefix) + 1, q_chosen=q_c, q_rejected=q_r, rule=rule)
            rows.append(row)

    for node_id in sorted(view.nodes):
        if not (view.has_correct[node_id] and view.has_wrong[node_id]):
            continue
        kids = [view.nodes[c] for c in view.children[node_id] if view.nodes[c]["kind"] != "invalid"]
        pos = sorted((k for k in kids if view.has_correct[k["id"]]), key=lambda k: (-k["Q"], k["id"]))
        neg = sorted(
            (k for k in kids if view.has_wrong[k["id"]] and not view.has_correct[k["id"]]),
            key=lambda k: (k["Q"], k["id"]),
        )
        prefix = view.path(node_id)
        for p in pos[:per_side]:
            for n in neg[:per_side]:
                add(prefix, [p], [n], p["Q"], n["Q"], "step")

    def ranked(paths, best_first):
        sign = -1 if best_first else 1
        return sorted(paths, key=lambda p: (sign * _mean_min(p)[0], sign * _mean_min(p)[1], p[-1]["id"]))

    correct = ranked(view.leaves(("correct",)), True)[:per_side]
    wrong = ranked(view.leaves(WRONG_REASONS), False)[:per_side]
    for c in correct:
        for w in wrong:
            shared = 0
            while shared < min(len(c), len(w)) and c[shared]["id"] == w[shared]["id"]:
                shared += 1
            add(c[:shared], c[shared:], w[shared:], _mean_min(c)[0], _mean_min(w)[0], "final")
    return rows


def value_rows(view: TreeView, prompt: str) -> list[dict]:
    rows = []
    for node in view.tree["nodes"]:
        if node["parent"] is None or node["kind"] == "invalid" or not (node["N"] or node["terminal"]):
            continue
        rows.append(
            {
                "prompt": prompt + view.render(view.path(node["id"])),
                "value": node["Q"],
                "id": view.tree["id"],
                "depth": node["depth"],
                "N": node["N"],
            }
        )
    return rows


def extract(trees: list[dict], tokenizer, config: ExtractConfig) -> tuple[dict[str, list[dict]], dict]:
    """The three row sets and the stats of a list of trees (later copies of an id replace earlier ones)."""
    by_id = {str(t["id"]): t for t in trees}
    sets: dict[str, list[dict]] = {k: [] for k in KINDS}
    correct_trajectories = 0
    for tree in by_id.values():
        view = TreeView(tree)
        system = (
            config.system_prompt if config.system_prompt is not None else tree["config"].get("system_prompt")
        )
        prompt = steps.chat_prompt(tokenizer, tree["problem"], system)
        sets["sft"] += sft_rows(view, config.sft_top_k, system)
        sets["pairs"] += pair_rows(view, prompt, config.pairs_per_side, config.min_margin)
        sets["values"] += value_rows(view, prompt)
        correct_trajectories += len(view.leaves(("correct",)))
    n = len(by_id)
    solved = sum(bool(t["solved"]) for t in by_id.values())
    stats = {
        "problems": n,
        "solved": solved,
        "coverage": round(100.0 * solved / max(1, n), 2),
        "correct_trajectories_per_problem": round(correct_trajectories / max(1, n), 3),
        "sft_rows": len(sets["sft"]),
        "sft_per_problem": round(len(sets["sft"]) / max(1, n), 3),
        "pairs": len(sets["pairs"]),
        "pairs_per_problem": round(len(sets["pairs"]) / max(1, n), 3),
        "final_step_pairs": sum(r["rule"] == "final" for r in sets["pairs"]),
        "values": len(sets["values"]),
    }
    return sets, stats


def write_sets(sets: dict[str, list[dict]], stats: dict, output_dir: str | os.PathLike) -> None:
    out = Path(output_dir)
    for kind, rows in sets.items():
        (out / kind).mkdir(parents=True, exist_ok=True)
        tmp = out / kind / "train.jsonl.tmp"
        with open(tmp, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        tmp.replace(out / kind / "train.jsonl")
    (out / "stats.json").write_text(json.dumps(stats, indent=2))


def config_types(recipe: dict | None = None) -> list[type]:
    """The option dataclasses `mathforge extract` parses (evolve checks step recipes against them)."""
    return [ExtractConfig]


def main(argv: list[str] | None = None) -> dict:
    (config,) = parse_config(config_types(), argv, prog="mathforge extract")
    if not config.trees:
        raise UserError("no tree files: pass --trees FILE [FILE ...] (written by `mathforge search`)")
    if not config.output_dir:
        raise UserError("no output_dir: set where sft/, pairs/ and values/ go")
    push = None
    if config.push_to_hub:  # checked before the work it would publish
        from mathforge.push import push_config

        push = push_config(
            "push_to_hub", repo_id=config.push_to_hub, dataset_dir=config.output_dir, private=config.private
        )
    trees = []
    for path in config.trees:
        files = tree_files(path)  # the file and the shard files a data-parallel search wrote beside it
        if not files:
            raise UserError(f"tree file not found: {path} (nor shard files {Path(path).stem}.rank*-of-*)")
        for name in files:
            trees += read_trees(name)
    if not trees:
        raise UserError(f"no trees in {', '.join(config.trees)}")
    model = config.model_name_or_path or trees[0]["config"].get("model_name_or_path")
    if not model:
        raise UserError("no tokenizer: set model_name_or_path (the trees record no model)")
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(resolve(model))
    except OSError as err:
        raise UserError(f"could not load the tokenizer of {model}: {str(err).splitlines()[0]}") from None
    sets, stats = extract(trees, tokenizer, config)
    write_sets(sets, stats, config.output_dir)
    print(
        f"{stats['problems']} problems, coverage {stats['coverage']:.1f}%: "
        f"{stats['correct_trajectories_per_problem']:.2f} correct trajectories/problem, "
        f"SFT {stats['sft_rows']} rows ({stats['sft_per_problem']:.2f}/problem), "
        f"pairs {stats['pairs']} ({stats['pairs_per_problem']:.2f}/problem, {stats['final_step_pairs']} final-step), "
        f"values {stats['values']} -> {config.output_dir}"
    )
    if push is not None:
        from mathforge.push import publish

        publish(push)  # one repo, one configuration per set: load_dataset(repo_id, "pairs")
    return stats


if __name__ == "__main__":
    from mathforge.cli import run_main

    sys.exit(run_main(main, sys.argv[1:], "mathforge extract"))
