"""`mathforge tiny-model --output DIR`: a small random Qwen2 model + tokenizer, built locally in seconds.

No model can be downloaded in tests or on a CPU box, so the pipeline is exercised on a model built
here: the Qwen2 architecture (`Qwen2ForCausalLM`) with seeded random weights, and a byte-level BPE
tokenizer trained with `tokenizers` on the toy task's text (:func:`mathforge.data.toy.corpus`).
The result loads with `AutoModelForCausalLM` / `AutoTokenizer.from_pretrained(DIR)` like any Hub
model, so every stage treats it as a real one.

Tokenizer choices, as in Qwen2:
* Qwen2's pre-tokenizer splits every digit into its own token before byte-level BPE, so a number is
  copied digit by digit;
* the step tags of :mod:`mathforge.steps` are single added tokens, *not* special (a decode with
  ``skip_special_tokens=True``, which TRL and vLLM use, must keep them);
* ChatML: ``<|im_start|>``, ``<|im_end|>`` (EOS: ends every turn) and ``<|endoftext|>`` (padding).
  The chat template inserts no default system prompt and supports ``add_generation_prompt``.

Same seed, same files (weights and tokenizer), byte for byte.
"""

from __future__ import annotations

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
            "help": "micro (~0.2M params, unit tests that train), tiny (~1M, CPU runs and tests) "
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
    overwrite: bool = field(default=False, metadata={"help": "Replace a non-empty output folder."})

    def __post_init__(self):
        if self.size not in SIZES:
            raise ValueError(f"unknown size {self.size!r} (choose from: {', '.join(SIZES)})")
        if self.vocab_size < 300:  # 256 bytes + special tokens + a few merges
            raise ValueError(f"vocab_size must be at least 300, got {self.vocab_size}")


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


def build_model(tokenizer, size: str = "tiny", seed: int = 0, max_position_embeddings: int = 2048):
    """A `Qwen2ForCausalLM` with seeded random weights and a generation config that stops at `<|im_end|>`."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    eos, pad = tokenizer.convert_tokens_to_ids([IM_END, PAD])
    config = Qwen2Config(
        vocab_size=len(tokenizer),
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


def build(
    output: str | os.PathLike,
    size: str = "tiny",
    seed: int = 0,
    vocab_size: int = 1024,
    corpus_size: int = 4000,
    max_position_embeddings: int = 2048,
    overwrite: bool = False,
) -> Path:
    """Build and save the model + tokenizer to ``output`` (via a temp folder renamed into place)."""
    out = Path(output)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise UserError(f"output {out} exists and is not empty; pass --overwrite true to replace it")
    start = time.perf_counter()
    tokenizer = train_tokenizer(vocab_size, corpus_size, seed, max_position_embeddings)
    model = build_model(tokenizer, size, seed, max_position_embeddings)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
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
    megabytes = sum(f.stat().st_size for f in out.iterdir()) / 1e6
    print(
        f"built {size} Qwen2 model in {out}: {model.num_parameters() / 1e6:.2f}M parameters, "
        f"vocab {len(tokenizer)}, {megabytes:.1f} MB, {time.perf_counter() - start:.1f}s"
    )
    return out


def main(argv: list[str] | None = None) -> Path:
    from mathforge.config import parse_config

    (config,) = parse_config([TinyModelConfig], argv, prog="mathforge tiny-model")
    return build(
        config.output,
        config.size,
        config.seed,
        config.vocab_size,
        config.corpus_size,
        config.max_position_embeddings,
        config.overwrite,
    )


if __name__ == "__main__":
    from mathforge.cli import run_main

    raise SystemExit(run_main(main, None, "mathforge tiny-model"))
