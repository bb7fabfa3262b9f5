"""`mathforge push`: publish a policy, a PPM or the search datasets to the Hugging Face Hub, with cards.

    mathforge push --model_dir runs/tiny/round_2/sft --repo_id me/tiny-math-policy [--dry_run out/]
    mathforge push --model_dir runs/tiny/round_2/ppm --repo_id me/tiny-math-ppm
    mathforge push --dataset_dir runs/tiny/round_2/extract --repo_id me/tiny-math-data

**Models.** The upload folder holds the weights, config and tokenizer files of ``--model_dir``, the
recipes that made it under ``recipes/`` (the trainer's resolved ``recipe.yaml``, the evolve step's
``step_recipe.yaml``, the run's ``evolve.yaml`` and any ``--recipes``), the evaluation results under
``eval/``, and ``README.md``: a model card whose metadata names the base model, the training data,
the licence and, as ``model-index``, every evaluation result (``--eval_results``; by default the
``eval_greedy``/``eval_search`` folders next to a model trained by ``mathforge evolve``, and a PPM's
own held-out pairwise accuracy); its text says how to load and run the model.

**Datasets.** An extraction folder (``sft/``, ``pairs/``, ``values/``, ``stats.json``) becomes one
dataset repo with one configuration per set; a folder with ``train.jsonl`` becomes a one-set repo.
The card says what each set holds and how it was made.

``--dry_run DIR`` writes exactly the folder that would be uploaded and nothing else. Without a token
(``hf auth login`` or ``HF_TOKEN``) or without network the command stops with one line, not a traceback.

:func:`publish` is the one way mathforge writes to the Hub: this command, the end of `mathforge sft`/`ppm`/`rl`
training with ``push_to_hub: true`` (:func:`mathforge.training.hub_push`), and `mathforge extract
--push_to_hub` all call it, so every repo gets the same folder and card.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mathforge.config import is_local, parse_config, resolve
from mathforge.errors import UserError

# Files of a saved model that belong on the Hub (checkpoints, logs, rank reports and optimizer state do not).
MODEL_FILES = re.compile(
    r"^(.*\.safetensors|model\.safetensors\.index\.json|config\.json|generation_config\.json|tokenizer.*|"
    r"special_tokens_map\.json|added_tokens\.json|vocab\.json|merges\.txt|chat_template\.jinja|"
    r"ppm_metrics\.json|eval_results\.json)$"
)
HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
DATA_SETS = {
    "sft": "policy SFT set: TRL conversational prompt/completion; the top correct trajectories per problem "
    "by mean step Q (columns prompt, completion, id, mean_q, min_q)",
    "pairs": "PPM preference pairs, TRL standard format: the chat prompt + a shared solution prefix, then the "
    "chosen and rejected continuation (columns prompt, chosen, rejected, id, depth, q_chosen, q_rejected, "
    "rule)",
    "values": "value targets: the text up to a node and its Q in [-1, 1] (columns prompt, value, id, depth, N)",
}


@dataclass
class PushConfig:
    """What to publish, where, and what goes on its card."""

    repo_id: str | None = field(default=None, metadata={"help": "Hub repo: owner/name."})
    model_dir: str | None = field(default=None, metadata={"help": "A policy or PPM saved by mathforge."})
    dataset_dir: str | None = field(
        default=None,
        metadata={"help": "An extraction folder (sft/, pairs/, values/) or a folder with train.jsonl."},
    )
    dry_run: str | None = field(
        default=None, metadata={"help": "Write the upload folder here instead of uploading (must be empty)."}
    )
    base_model: str | None = field(
        default=None, metadata={"help": "Base model Hub id for the card; default: from the model's recipe."}
    )
    datasets: list[str] | None = field(
        default=None, metadata={"help": "Training data Hub ids for the card; default: from the recipe."}
    )
    eval_results: list[str] | None = field(
        default=None,
        metadata={
            "help": "Evaluation results.json files or folders; default: eval_* next to an evolve model."
        },
    )
    recipes: list[str] | None = field(default=None, metadata={"help": "More recipe YAMLs to include."})
    license: str = field(default="apache-2.0", metadata={"help": "Licence id for the card."})
    private: bool = field(default=True, metadata={"help": "Create the repo as private."})
    token: str | None = field(
        default=None, metadata={"help": "Hub token; default: HF_TOKEN or `hf auth login`."}
    )
    commit_message: str = field(default="Upload with mathforge push", metadata={"help": "Commit message."})

    def __post_init__(self):
        if (self.model_dir is None) == (self.dataset_dir is None):
            raise ValueError("give exactly one of --model_dir and --dataset_dir")
        self.model_dir = self.model_dir and os.path.expanduser(self.model_dir)
        self.dataset_dir = self.dataset_dir and os.path.expanduser(self.dataset_dir)
        if not self.repo_id or not HUB_ID.match(self.repo_id):
            raise ValueError(f"--repo_id must be owner/name, not {self.repo_id!r}")


# --- helpers -------------------------------------------------------------------------------------------


def _place(src: Path, dst: Path) -> None:
    """A hard link where possible (weights can be many GB), else a copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _hub_like(name: str | None) -> bool:
    """A Hub id (owner/name) that is not also a local path."""
    return bool(name) and HUB_ID.match(name) is not None and not is_local(name)


def _origin(model_dir: Path, seen: int = 0) -> tuple[str | None, list[str]]:
    """(base model Hub id or None, training data) by following recipe.yaml's model_name_or_path through
    local folders (an evolve policy was trained from another local policy, ..., from the base)."""
    recipe = _read_yaml(model_dir / "recipe.yaml") or _read_yaml(model_dir / "step_recipe.yaml")
    parent, data = recipe.get("model_name_or_path"), recipe.get("dataset_name")
    datasets = [data] if data else []
    if parent and is_local(parent) and Path(resolve(parent)).is_dir() and seen < 16:
        base, more = _origin(Path(resolve(parent)), seen + 1)
        return base, datasets + more
    return (parent if _hub_like(parent) else None), datasets


def _evolve_run(model_dir: Path) -> Path | None:
    """The run folder when model_dir is runs/<name>/round_<k>/<step> of `mathforge evolve`."""
    run = model_dir.resolve().parent.parent
    return run if (run / "evolve.yaml").is_file() else None


def _results_files(paths: list[str]) -> list[Path]:
    out = []
    for p in paths:
        file = Path(p) / "results.json" if Path(p).is_dir() else Path(p)
        if not file.is_file():
            raise UserError(f"no evaluation results at {p} (a results.json file or an eval output folder)")
        out.append(file)
    return out


def eval_results(files: list[Path], model_name: str):
    """`EvalResult`s (the card's model-index) from `mathforge eval` results.json files."""
    from huggingface_hub import EvalResult

    from mathforge.eval.benchmarks import get_benchmark

    results = []
    for file in files:
        try:
            data = json.loads(file.read_text())
            benchmarks = data["benchmarks"]
        except (ValueError, KeyError, TypeError):
            raise UserError(f"{file} is not a mathforge eval results.json") from None
        cfg = data.get("config") or {}
        search = cfg.get("search") or "none"
        how = "greedy" if search == "none" and not cfg.get("temperature") else f"search={search}"
        if search == "none" and cfg.get("temperature"):
            how = f"n={cfg.get('n')}, temperature {cfg.get('temperature')}"
        for name, row in benchmarks.items():
            try:
                bench = get_benchmark(name)
                dataset_type, title, split = bench.hub_id, bench.title, bench.hub_split
            except UserError:  # a local problem set (e.g. the toy task's test split)
                dataset_type, title, split = name, row.get("title", name), cfg.get("dataset_split")
            common = dict(
                task_type="text-generation",
                task_name="Math problem solving",
                dataset_type=dataset_type,
                dataset_name=title,
                dataset_split=split,
            )
            results.append(
                EvalResult(
                    metric_type="accuracy",
                    metric_name=f"pass@1 ({how})",
                    metric_value=row["pass@1"],
                    **common,
                )
            )
            if row.get("mean_tokens") is not None:
                results.append(
                    EvalResult(
                        metric_type="mean_tokens",
                        metric_name=f"mean tokens ({how})",
                        metric_value=row["mean_tokens"],
                        **common,
                    )
                )
    return results


# --- folders -------------------------------------------------------------------------------------------


def model_folder(config: PushConfig, out: Path) -> None:
    """Write the model upload folder (weights, tokenizer, recipes/, eval/, README.md) into ``out``."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    src = Path(config.model_dir)
    if not (src / "config.json").is_file():
        raise UserError(f"no model in {src} (no config.json): pass a folder written by mathforge sft/ppm/rl")
    files = sorted(p for p in src.iterdir() if p.is_file() and MODEL_FILES.match(p.name))
    if not any(p.suffix == ".safetensors" for p in files):
        raise UserError(f"no .safetensors weights in {src}: has its training finished?")
    for p in files:
        _place(p, out / p.name)
    arch = (json.loads((src / "config.json").read_text()).get("architectures") or ["?"])[0]
    is_ppm = arch.endswith("ForSequenceClassification")

    # recipes: the trainer's resolved recipe, the evolve step's, the run's, any given
    run = _evolve_run(src)
    recipes = [src / "recipe.yaml", src / "step_recipe.yaml", *(run and [run / "evolve.yaml"] or [])]
    recipes += [Path(r) for r in config.recipes or []]
    kept = []
    for r in recipes:
        if r.is_file():
            _place(r, out / "recipes" / r.name)
            kept.append(r.name)
        elif r in [Path(x) for x in config.recipes or []]:
            raise UserError(f"recipe not found: {r}")

    # evaluation results: given, or the evolve round's eval_greedy / eval_search
    if config.eval_results is not None:
        result_files = _results_files(config.eval_results)
    else:
        result_files = [
            f
            for f in (
                src.parent / "eval_greedy" / "results.json",
                src.parent / "eval_search" / "results.json",
            )
            if run and not is_ppm and f.is_file()
        ]
    for f in result_files:
        _place(f, out / "eval" / f.parent.name / "results.json")
    name = config.repo_id.split("/")[1]
    evals = eval_results(result_files, name)
    metrics = (
        json.loads((src / "ppm_metrics.json").read_text()) if (src / "ppm_metrics.json").is_file() else {}
    )
    base, data = _origin(src)
    base = config.base_model or base
    datasets = config.datasets if config.datasets is not None else [d for d in data if _hub_like(d)]
    if is_ppm and "eval_pairwise_accuracy" in metrics:
        evals.append(
            EvalResult(
                task_type="text-classification",
                task_name="Step preference (held-out pairs)",
                dataset_type=datasets[0] if datasets else "mathforge/pairs",
                dataset_name="held-out preference pairs",
                metric_type="accuracy",
                metric_name="pairwise accuracy",
                metric_value=round(100.0 * metrics["eval_pairwise_accuracy"], 2),
            )
        )
    card_data = ModelCardData(
        model_name=name,
        base_model=base,
        datasets=datasets or None,
        license=config.license,
        library_name="transformers",
        pipeline_tag="text-classification" if is_ppm else "text-generation",
        tags=["mathforge", "math", "ppm" if is_ppm else "policy", "trl"],
        eval_results=evals or None,
    )
    body = _model_card_body(config, name, base, data, kept, evals, is_ppm, local_base=not base)
    card = ModelCard(f"---\n{card_data.to_yaml()}\n---\n{body}")
    card.save(out / "README.md")


def _model_card_body(config, name, base, data, recipes, evals, is_ppm, local_base) -> str:
    kind = "process preference model (PPM)" if is_ppm else "policy"
    lines = [f"# {name}", ""]
    origin = (
        f"[`{base}`](https://huggingface.co/{base})"
        if base
        else "a model built locally (`mathforge tiny-model`)"
    )
    lines += [
        f"A math {kind} trained with mathforge from {origin}: "
        + (
            "the policy backbone with a scalar head, trained with TRL's RewardTrainer on same-prefix step "
            "preference pairs (Bradley-Terry loss); its score of a solution prefix is tanh(r) in [-1, 1]."
            if is_ppm
            else "supervised fine-tuning on solutions whose every step ran (Python code) and whose answer was "
            "verified, from Monte Carlo Tree Search (rStar-Math self-evolution), optionally followed by RL."
        ),
        "",
        "## Training data",
        "",
    ]
    lines += [f"- `{d}`" for d in data] or ["- (not recorded)"]
    lines += ["", "## Recipes", "", "The exact recipes are in `recipes/` in this repository:", ""]
    lines += [f"- `recipes/{r}`" for r in recipes] or ["- (none recorded)"]
    lines += ["", "## Evaluation", ""]
    if evals:
        lines += ["| dataset | metric | value |", "|---|---|---|"]
        lines += [f"| {e.dataset_name} | {e.metric_name} | {e.metric_value:.1f} |" for e in evals]
    else:
        lines += ["No evaluation results were attached."]
    lines += ["", "## How to use", ""]
    if is_ppm:
        lines += [
            "```python",
            "from mathforge.ppm import load_scorer",
            f'scorer = load_scorer("{config.repo_id}")',
            'scores = scorer(["<prompt + solution prefix>"])  # one value in [-1, 1] per text',
            "```",
            "",
            "Use it to guide search: `mathforge eval --search best_of_n --ppm_path "
            f"{config.repo_id} --model_name_or_path <policy> ...` (or `--search mcts`, `--search beam`).",
        ]
    else:
        lines += [
            "The model writes the step format of mathforge: Python steps in `<step>` blocks whose printed output "
            "the *executor* appends in `<output>` blocks, then `<answer>` with `\\boxed{}`. Run it with the "
            "executor in the loop:",
            "",
            "```bash",
            "pip install mathforge",
            f"mathforge eval --model_name_or_path {config.repo_id} --benchmarks math500 gsm8k",
            "```",
            "",
            "or load it directly (the chat template ends a turn with its EOS token):",
            "",
            "```python",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            f'tok = AutoTokenizer.from_pretrained("{config.repo_id}")',
            f'model = AutoModelForCausalLM.from_pretrained("{config.repo_id}")',
            "```",
        ]
    lines += ["", "## Licence", "", f"{config.license}" + (", as its base model." if base else "."), ""]
    return "\n".join(lines)


def _size_category(n: int) -> str:
    for limit, label in (
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
    ):
        if n < limit:
            return label
    return "n>1M"


def dataset_folder(config: PushConfig, out: Path) -> None:
    """Write the dataset upload folder (one folder per set with train.jsonl, README.md) into ``out``."""
    from huggingface_hub import DatasetCard, DatasetCardData

    src = Path(config.dataset_dir)
    if (src / "train.jsonl").is_file():
        sets = {src.name if src.name in DATA_SETS else "default": src}
    else:
        sets = {k: src / k for k in DATA_SETS if (src / k / "train.jsonl").is_file()}
    counts = {}
    for name, folder in sets.items():
        with open(folder / "train.jsonl", "rb") as f:
            counts[name] = sum(1 for line in f if line.strip())
    sets = {name: folder for name, folder in sets.items() if counts[name]}  # an empty set has no config
    if not sets:
        raise UserError(
            f"no data in {src}: expected train.jsonl, or sft/ pairs/ values/ from `mathforge extract`"
        )
    counts = {name: counts[name] for name in sets}
    for name, folder in sets.items():
        _place(folder / "train.jsonl", out / f"{name}/train.jsonl")
    stats = json.loads((src / "stats.json").read_text()) if (src / "stats.json").is_file() else {}
    if stats:
        _place(src / "stats.json", out / "stats.json")
    search_recipe = src.parent / "search" / "step_recipe.yaml"  # the search step of an evolve round
    if search_recipe.is_file():
        _place(search_recipe, out / "recipes" / "search.yaml")
    name = config.repo_id.split("/")[1]
    card_data = DatasetCardData(
        license=config.license,
        language="en",
        task_categories=["text-generation"],
        tags=["mathforge", "math", "mcts", "synthetic"],
        size_categories=_size_category(max(counts.values())),
        pretty_name=name,
        configs=[
            {
                "config_name": k,
                "data_files": [{"split": "train", "path": f"{k}/train.jsonl"}],
                **({"default": True} if i == 0 else {}),
            }
            for i, k in enumerate(sets)
        ],
    )
    lines = [
        f"# {name}",
        "",
        "Math training data from Monte Carlo Tree Search over code-augmented steps "
        "(mathforge): every step's Python ran in a sandbox, every final answer was "
        "checked against the gold answer.",
        "",
        "## Configurations",
        "",
    ]
    for k, n in counts.items():
        lines.append(f"- `{k}` ({n} rows): {DATA_SETS.get(k, 'rows of train.jsonl')}")
    if stats:
        lines += ["", "## Statistics of the search", "", "| | |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in stats.items()]
    if search_recipe.is_file():
        lines += ["", "The search recipe is in `recipes/search.yaml`."]
    first = next(iter(sets))
    lines += [
        "",
        "## How to load",
        "",
        "```python",
        "from datasets import load_dataset",
        f'ds = load_dataset("{config.repo_id}", "{first}", split="train")',
        "```",
        "",
        "## Licence",
        "",
        config.license,
        "",
    ]
    DatasetCard(f"---\n{card_data.to_yaml()}\n---\n" + "\n".join(lines)).save(out / "README.md")


def build_folder(config: PushConfig, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()):
        raise UserError(f"{out} is not empty: give --dry_run a new or empty folder")
    (model_folder if config.model_dir else dataset_folder)(config, out)
    return out


# --- upload --------------------------------------------------------------------------------------------


def hub_token(config: PushConfig) -> str:
    from huggingface_hub import get_token

    token = config.token or get_token()
    if not token:
        raise UserError(
            "no Hugging Face token: run `hf auth login` or set HF_TOKEN (or write the folder with --dry_run DIR)"
        )
    return token


def upload(folder: Path, config: PushConfig, token: str) -> str:
    """Create the repo (if needed) and upload the folder in one commit; returns the repo URL."""
    from huggingface_hub import HfApi

    repo_type = "model" if config.model_dir else "dataset"
    api = HfApi(token=token)
    try:
        url = api.create_repo(config.repo_id, repo_type=repo_type, private=config.private, exist_ok=True)
        api.upload_folder(
            folder_path=str(folder),
            repo_id=config.repo_id,
            repo_type=repo_type,
            commit_message=config.commit_message,
        )
    except Exception as err:  # HTTP errors, no network, offline mode: one line, not a traceback
        text = str(err).strip().splitlines()
        raise UserError(
            f"could not push to {config.repo_id}: {type(err).__name__}: {text[0] if text else ''}"
        ) from None
    return str(url)


def push_config(repo_option: str, **options) -> PushConfig:
    """A :class:`PushConfig` made in code (by the training stages and `mathforge extract`), checked before the
    work it publishes: a repo id that is not owner/name (named as the caller's option ``repo_option``), a bad
    option, and a missing token (unless ``dry_run``) are one-line errors now."""
    repo_id = options.get("repo_id")
    if not repo_id or not HUB_ID.match(repo_id):
        raise UserError(f"{repo_option} must be a Hub repo id owner/name, not {repo_id!r}")
    try:
        config = PushConfig(**options)
    except ValueError as err:
        raise UserError(str(err)) from None
    if not config.dry_run:
        hub_token(config)
    return config


def publish(config: PushConfig) -> Path | str:
    """Write the upload folder of ``config.model_dir`` (a policy or a PPM) or ``config.dataset_dir`` with its
    card, and upload it to ``config.repo_id`` in one commit; with ``dry_run`` only write the folder there.
    Returns the repo URL, or the dry-run folder."""
    src = Path(config.model_dir or config.dataset_dir)
    if not src.is_dir():
        raise UserError(f"folder not found: {src}")
    if config.dry_run:
        out = build_folder(config, Path(config.dry_run))
        files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
        print(f"dry run: wrote {len(files)} files to {out} (nothing uploaded): {', '.join(files)}")
        return out
    token = hub_token(config)  # before building anything
    with tempfile.TemporaryDirectory(prefix="mathforge-push-") as tmp:
        folder = build_folder(config, Path(tmp) / "upload")
        url = upload(folder, config, token)
    print(f"pushed {src} to {url}")
    return url


def main(argv: list[str] | None = None) -> Path | str:
    (config,) = parse_config([PushConfig], argv, prog="mathforge push")
    return publish(config)


if __name__ == "__main__":
    from mathforge.cli import run_main

    sys.exit(run_main(main, sys.argv[1:], "mathforge push"))
