"""Running on many GPUs and nodes: data-parallel shards of the inference stages, and the guards the
training stages need under DeepSpeed ZeRO-3 and FSDP.

**Shards** (search, evaluation). ``accelerate launch --num_processes N -m mathforge.search ...`` (or
torchrun, or one launch per node with ``--num_machines``) starts N copies of an inference stage; each
copy reads its place from the variables the launcher sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``LOCAL_WORLD_SIZE``: the global rank and world size, the same numbers ``accelerate.PartialState``
reports), takes its own GPUs and works on its own problems with its own vLLM engine and executor. The
copies never talk to each other, so no process group is created: vLLM starts a single-process engine
in each, exactly as in a one-process run.

**Training under ZeRO-3 / FSDP** (``mathforge rl``): a model that is only *used* in the training
process (the PPM reward) is loaded outside ``deepspeed.zero.Init``, and transformers' ``generate`` on
the policy never waits on other ranks (see :func:`generation_guard`).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

from mathforge.errors import UserError

# set by accelerate launch / torchrun; an inference shard removes them so that the engine it starts (vLLM,
# or torch.distributed inside a library) does not take this process for one rank of a bigger job
LAUNCHER_VARIABLES = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "ROLE_RANK",
    "ROLE_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RUN_ID",
)


@dataclass(frozen=True)
class Shard:
    """This process's place among the copies of an inference stage.

    rank: global rank (0 .. world_size - 1), across all nodes; selects the problems.
    world_size: number of copies, across all nodes.
    local_rank: rank on this node; selects the GPUs.
    local_world_size: copies on this node.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def label(self) -> str:
        return f"rank{self.rank}-of-{self.world_size}"

    def owns(self, position: int) -> bool:
        """Whether the problem at ``position`` (in the whole problem list) is this copy's."""
        return position % self.world_size == self.rank


def launched_shard(environ=None) -> Shard:
    """This process's shard from the launcher's variables; one copy when none are set."""
    env = os.environ if environ is None else environ
    try:
        world = int(env.get("WORLD_SIZE", 1))
        rank = int(env.get("RANK", 0))
        local_rank = int(env.get("LOCAL_RANK", rank))
        local_world = int(env.get("LOCAL_WORLD_SIZE", world))
    except ValueError as err:
        raise UserError(f"bad launcher variable ({err}); RANK/WORLD_SIZE must be integers") from None
    if not 0 <= rank < world or not 0 <= local_rank < local_world:
        raise UserError(f"launcher variables out of range: RANK {rank}, WORLD_SIZE {world}")
    return Shard(rank, world, local_rank, local_world)


def start_shard(gpus_per_copy: int = 1) -> Shard:
    """Read this process's shard, give it its own GPUs and detach it from the launcher's job.

    With several copies on a node, copy ``local_rank`` sees GPUs ``local_rank * gpus_per_copy`` onward
    of those visible (``CUDA_VISIBLE_DEVICES`` if set, else all), so that each vLLM engine (with
    ``tensor_parallel_size = gpus_per_copy``) and its PPM land on GPUs of their own. Call before CUDA is
    initialised. Without a GPU nothing is assigned."""
    shard = launched_shard()
    for name in LAUNCHER_VARIABLES:
        os.environ.pop(name, None)
    if shard.local_world_size > 1:
        import torch

        if torch.cuda.is_available():
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            ids = visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]
            need = shard.local_world_size * gpus_per_copy
            if len(ids) < need:
                raise UserError(
                    f"{shard.local_world_size} processes x {gpus_per_copy} GPUs each need {need} GPUs on this "
                    f"node; {len(ids)} visible (lower --num_processes or tensor_parallel_size)"
                )
            start = shard.local_rank * gpus_per_copy
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(ids[start : start + gpus_per_copy])
    return shard


# --- training under ZeRO-3 / FSDP --------------------------------------------------------------------------


@contextlib.contextmanager
def outside_zero_init():
    """Load models inside this block as whole models, even when the process runs under a ZeRO-3
    accelerate config (which makes ``from_pretrained`` build them under ``deepspeed.zero.Init``, their
    parameters partitioned across ranks for a DeepSpeed engine that is never created for a model used
    only for inference in the training process).

    TRL instead wraps its own reward models in a DeepSpeed inference engine (``prepare_deepspeed``); under
    ZeRO-3 every forward then gathers parameters from all ranks, which only works when every rank makes
    the same forward calls. A scorer called on each rank's own rollouts must have whole weights. The
    switch is transformers' own: its DeepSpeed config reference, unset while the block runs (accelerate's
    ``zero3_init_context_manager(enable=False)`` re-sets the same stage-3 config in accelerate 1.16)."""
    import transformers.integrations.deepspeed as hf_deepspeed

    ref = getattr(hf_deepspeed, "_hf_deepspeed_config_weak_ref", None)
    config = ref() if ref is not None else None
    if config is None or not hf_deepspeed.is_deepspeed_zero3_enabled():
        yield
        return
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed.set_hf_deepspeed_config(config)


def for_generation(model, trainer):
    """``model`` (the trainer's policy, unwrapped for generation), with :func:`generation_guard`'s
    arguments added to every ``generate`` call."""
    extra = generation_guard(trainer)
    return _GenerateWith(model, extra) if extra else model


class _GenerateWith:
    """A model whose ``generate`` gets extra keyword arguments; everything else is the model's."""

    def __init__(self, model, extra: dict):
        self._model, self._extra = model, extra

    def generate(self, *args, **kwargs):
        return self._model.generate(*args, **{**self._extra, **kwargs})

    def __getattr__(self, name):
        return getattr(self._model, name)


def generation_guard(trainer) -> dict:
    """The extra ``generate`` arguments for step rollouts from the trainer's own (transformers) policy,
    or a one-line error where they would hang.

    transformers turns ``synced_gpus`` on under ZeRO-3 and FSDP: every rank then keeps stepping until all
    are done, which only works if every rank makes the same number of ``generate`` calls. Step rollouts
    make as many as their own trajectories need, so they must not sync: under ZeRO-3 the parameters are
    gathered for generation (TRL's ``ds3_gather_for_generation``, its default) and each rank generates
    alone (``synced_gpus=False``). FSDP gives no such whole copy to ``generate`` here, so it is refused."""
    accelerator = trainer.accelerator
    if getattr(trainer, "use_vllm", False) or accelerator.num_processes == 1:
        return {}
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    if kind == DistributedType.FSDP:
        raise UserError(
            "step rollouts with transformers generate under FSDP would hang (ranks make different numbers of "
            "generate calls on a sharded model): use_vllm: true, a DeepSpeed config, or rollout_format: text"
        )
    if (
        kind == DistributedType.DEEPSPEED
        and getattr(accelerator.state.deepspeed_plugin, "zero_stage", 0) == 3
    ):
        if not trainer.args.ds3_gather_for_generation:
            raise UserError(
                "step rollouts under ZeRO-3 need ds3_gather_for_generation: true (each rank generates alone "
                "with whole weights; sharded weights would make the ranks wait on each other's calls)"
            )
    return {"synced_gpus": False}
