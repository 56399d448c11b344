"""The GPU path: device maps, bf16 with fp32 statistics, the batch plan from CUDA free memory.
CUDA tests skip cleanly without a GPU; the device-map path is also checked on the CPU."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from probes import make_probes
from workbench.errors import InputError
from workbench.memory import MAX_AUTO_BATCH, plan_batch
from workbench.models import load_model
from workbench.prompts import load_prompt_set
from workbench.run import RunOptions, execute_run

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
KEYS = ["metric", "layer", "head", "prompt_id", "query_pos", "key_pos", "segment"]


def entropy_table(model, prompts, tmp_path, run_id) -> pd.DataFrame:
    run = execute_run(model, load_prompt_set(prompts),
                      make_probes(["attention_entropy"],
                                  {"attention_entropy": {"segment": "names"}}),
                      RunOptions(runs_dir=tmp_path, run_id=run_id, batch_size=2, progress=False))
    table = run.read_table("attention_entropy").to_pandas().drop(columns="run_id")
    return table.sort_values(KEYS, na_position="first").reset_index(drop=True)


def test_device_map_needs_a_checkpoint_and_no_device():
    with pytest.raises(InputError, match="built in memory"):
        load_model("tiny-llama", device_map="auto")
    with pytest.raises(InputError, match="contradict"):
        load_model("tiny-llama", device="cpu", device_map="auto")


@pytest.mark.real_model
def test_device_map_load_gives_the_same_records(smollm2, small_prompts, tmp_path):
    mapped = load_model("smollm2-135m", device_map="cpu")  # accelerate's placement, on the CPU
    assert mapped.info.parity.ok and mapped.info.device == "cpu"
    assert mapped.info.details["device_map"]["requested"] == "cpu"
    assert set(mapped.info.details["device_map"]["placement"].values()) <= {"cpu"}
    pd.testing.assert_frame_equal(entropy_table(mapped, small_prompts, tmp_path, "mapped"),
                                  entropy_table(smollm2, small_prompts, tmp_path, "plain"))


@CUDA
def test_cuda_bf16_entropy_matches_cpu_fp32(tiny_llama, small_prompts, tmp_path):
    gpu = load_model("tiny-llama")  # auto: cuda, bfloat16
    assert gpu.info.dtype == "bfloat16"
    got = entropy_table(gpu, small_prompts, tmp_path, "gpu")
    want = entropy_table(tiny_llama, small_prompts, tmp_path, "cpu")
    assert got[KEYS].equals(want[KEYS])
    assert (got.value - want.value).abs().max() < 0.05  # nats; bf16 pattern, fp32 statistics


@CUDA
def test_cuda_batch_plan_reads_free_memory(small_prompts, tmp_path):
    gpu = load_model("tiny-llama")
    free, _ = torch.cuda.mem_get_info(gpu.device)
    plan = plan_batch(gpu, 2048, eager=True, needs_logits=False)
    assert plan.device_type == "cuda" and plan.source == "auto"
    assert 0 < plan.free_bytes <= free * 1.05 and 1 <= plan.batch_size <= MAX_AUTO_BATCH
    assert plan.batch_size & (plan.batch_size - 1) == 0  # a power of two
    run = execute_run(gpu, load_prompt_set(small_prompts), make_probes(["massive_activations"]),
                      RunOptions(runs_dir=tmp_path, progress=False))
    manifest = run.read_manifest()
    assert manifest["batching"]["plan"]["device_type"] == "cuda"
    assert manifest["attention"]["implementation"] == "sdpa"  # bf16 check tolerance 2e-2


@CUDA
@pytest.mark.real_model
def test_cuda_device_map_auto(small_prompts, tmp_path, smollm2):
    mapped = load_model("smollm2-135m", device_map="auto")
    assert mapped.info.device.startswith("cuda") and mapped.info.parity.ok
    assert mapped.info.details["device_map"]["placement"]  # accelerate placed the modules
    got = entropy_table(mapped, small_prompts, tmp_path, "auto")
    want = entropy_table(smollm2, small_prompts, tmp_path, "cpu")
    assert (got.value - want.value).abs().max() < 0.05
