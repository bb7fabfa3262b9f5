"""The accelerate configs: every file parses as accelerate's own config class and builds its plugin.

The GPU configs cannot run here (no GPU), so this checks what can be checked without one. The 2-process
CPU launches are really run in test_sft.py (DDP) and test_cluster.py (DeepSpeed ZeRO-3, search shards).
"""

from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType

CONFIGS = Path(__file__).resolve().parents[1] / "accelerate_configs"


@pytest.mark.parametrize(
    "name, kind", [("ddp", "MULTI_GPU"), ("zero2", "DEEPSPEED"), ("zero3", "DEEPSPEED"), ("fsdp", "FSDP")]
)
def test_gpu_configs_parse_with_bf16_and_8_processes(name, kind):
    config = load_config_from_file(str(CONFIGS / f"{name}.yaml"))
    assert config.distributed_type == DistributedType[kind]
    assert config.num_processes == 8 and str(config.mixed_precision) in ("bf16", "PrecisionType.BF16")


@pytest.mark.parametrize("name, stage", [("zero2", 2), ("zero3", 3)])
def test_deepspeed_configs_build_a_deepspeed_plugin(name, stage):
    from accelerate.utils import DeepSpeedPlugin

    ds = load_config_from_file(str(CONFIGS / f"{name}.yaml")).deepspeed_config
    plugin = DeepSpeedPlugin(
        zero_stage=ds["zero_stage"],
        offload_optimizer_device=ds["offload_optimizer_device"],
        offload_param_device=ds["offload_param_device"],
        zero3_init_flag=ds["zero3_init_flag"],
    )
    assert plugin.deepspeed_config["zero_optimization"]["stage"] == stage


def test_fsdp_config_builds_an_fsdp_plugin():
    from accelerate.utils import FullyShardedDataParallelPlugin

    fsdp = load_config_from_file(str(CONFIGS / "fsdp.yaml")).fsdp_config
    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=fsdp["fsdp_version"],
        auto_wrap_policy=fsdp["fsdp_auto_wrap_policy"],
        reshard_after_forward=fsdp["fsdp_reshard_after_forward"],
        state_dict_type=fsdp["fsdp_state_dict_type"],
    )
    assert plugin.fsdp_version == 2


def test_cpu_config_launches_two_processes():
    config = load_config_from_file(str(CONFIGS / "cpu_2proc.yaml"))
    assert config.num_processes == 2
    assert str(config.mixed_precision) in ("no", "PrecisionType.NO")
