"""Qwen2.5's tokenizer, built offline: the tokenizer of the models users train, for tests and the CPU mode.

Qwen2/2.5 (and DeepSeek-R1-Distill-Qwen) use a byte-level BPE of 151,643 ranks, the same ranks as Qwen1,
which the ``dashscope`` package on PyPI ships as ``dashscope/resources/qwen.tiktoken``. transformers'
``TikTokenConverter`` turns the ranks into vocab and merges; around them goes Qwen2's pipeline (NFC, the
split pattern with single digits, byte-level), then the special tokens from id 151643 on, the ChatML chat
template of Qwen2.5-Math and the base model's end-of-text settings. ``AutoTokenizer.from_pretrained`` on the
saved folder gives the ids of the real one (``Hello, world!`` -> 9707, 11, 1879, 0).

In this vocabulary the step tags are several tokens (``<step>`` is ``<``, ``step``, ``>``) and a closing
``>`` merges with a following newline (``>\\n`` is one token), which is what makes the pipeline's token
bookkeeping honest: text cut at a stop string and re-tokenized is not what the model sampled.

Nothing is downloaded at run time beyond the PyPI package (``pip install dashscope tiktoken``); the
vocabulary file stays in site-packages.
"""

from __future__ import annotations

import importlib.util
import os

from mathforge.errors import UserError

NUM_RANKS = 151643
# Qwen2.5's special tokens, from id 151643 on, in id order (tokenizer_config.json of Qwen2.5-Math-1.5B).
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
]
NOT_SPECIAL = {"<tool_call>", "</tool_call>"}  # added tokens, but kept by skip_special_tokens
VOCAB_SIZE = 151936  # the embedding rows of Qwen2.5-Math-1.5B/7B (padded past the last token)
ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"

# Qwen2.5-Math's chat template (tools branch left out): a conversation without a system message gets
# the model's default one.
DEFAULT_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\n" + DEFAULT_SYSTEM.replace("\\", "\\\\") + "<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if (message.role == 'user') or (message.role == 'system' and not loop.first) "
    "or (message.role == 'assistant') %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def ranks_file() -> str:
    """Path of ``qwen.tiktoken`` inside the installed ``dashscope`` package (the package is not imported)."""
    spec = importlib.util.find_spec("dashscope")
    if spec is None or spec.origin is None:
        raise UserError("the Qwen tokenizer needs the dashscope package: pip install dashscope tiktoken")
    path = os.path.join(os.path.dirname(spec.origin), "resources", "qwen.tiktoken")
    if not os.path.exists(path):
        raise UserError(f"{path} is missing: reinstall dashscope (pip install --force-reinstall dashscope)")
    return path


def build_tokenizer(model_max_length: int = 4096):
    """Qwen2.5-Math's tokenizer as a transformers tokenizer (~5 s: the ranks are converted to merges)."""
    if importlib.util.find_spec("tiktoken") is None:
        raise UserError("the Qwen tokenizer needs tiktoken to read its ranks: pip install tiktoken")
    from tokenizers import AddedToken, normalizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tok = TikTokenConverter(vocab_file=ranks_file(), pattern=PRETOKENIZE_REGEX).converted()
    tok.normalizer = normalizers.NFC()
    if tok.get_vocab_size() != NUM_RANKS:
        raise UserError(f"qwen.tiktoken holds {tok.get_vocab_size()} ranks, expected {NUM_RANKS}")
    tok.add_special_tokens(
        [AddedToken(t, special=t not in NOT_SPECIAL, normalized=False) for t in SPECIAL_TOKENS]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=ENDOFTEXT,
        pad_token=ENDOFTEXT,
        unk_token=None,
        bos_token=None,
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
        model_max_length=model_max_length,
        split_special_tokens=False,
    )
    return tokenizer
