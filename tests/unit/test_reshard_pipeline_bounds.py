"""Resharding a ZeRO-0 pipeline checkpoint reads its stage boundaries from the layout the checkpoint records
('pipeline_parts'), so a PaLM-540B layout (118 blocks, PP16: C(120, 15) ~ 1e19 candidate splits for a search) is
read in one pass. The checkpoint is written in DeepSpeed's on-disk layout with meta tensors (shapes, no weights):
per pipeline layer a `layer_XX-model_00-model_states.pt`, per stage an `mp_rank_XX_model_states.pt` holding the
torch AdamW state keyed by position. Checkpoints saved before the boundaries were recorded derive them from the
stages' optimizer sizes (one pass), checked against every saved shape."""

import os

import pytest
import torch

from megatron_code.config.cli import parse_args
from megatron_code.model import GPT
from megatron_code.parallel.pipeline import gpt_keys_of_layer
from megatron_code.parallel.reshard import ReshardError, read_full_state

PP = 16


def _stage_order(layer_names: dict[int, list[str]], shapes, first: int, stop: int, tied: bool, last: bool):
    """The test's own statement of a stage's optimizer order: DeepSpeed's PipelineModule registers tied modules
    first, then its layers; training.optimizer puts matrices (weight decay) before vectors and biases."""
    names = list(layer_names[0]) if tied and (first == 0 or last) else []
    names += [n for i in range(first, stop) if not (tied and i == 0) for n in layer_names.get(i, [])]
    vec = [n for n in names if len(shapes[n]) < 2 or n.endswith(".bias")]
    return [n for n in names if n not in set(vec)] + vec


def _write_checkpoint(tag_dir: str, job, record_bounds: bool):
    cfg = job.model
    with torch.device("meta"):
        params = dict(GPT(cfg).named_parameters())
    shapes = {n: p.shape for n, p in params.items()}
    L, tied = cfg.num_layers, cfg.tie_embeddings
    n_layers = L + 3
    layer_names = {}
    for i in range(n_layers):
        key = gpt_keys_of_layer(L, i, tied)
        if key is not None:
            layer_names[i] = [n for n in shapes if n == key or n.startswith(key + ".")]
            torch.save({n: params[n].detach() for n in layer_names[i]},
                       os.path.join(tag_dir, f"layer_{i:02d}-model_00-model_states.pt"))
    # an uneven split, as DeepSpeed's parameter balancing makes (the embedding stage holds fewer blocks)
    bounds = [0] + [2 + round(s * (n_layers - 2) / PP) for s in range(1, PP)] + [n_layers]
    orders = []
    for s in range(PP):
        order = _stage_order(layer_names, shapes, bounds[s], bounds[s + 1], tied, s == PP - 1)
        state = {k: {"exp_avg": torch.empty(shapes[n], device="meta"),
                     "exp_avg_sq": torch.empty(shapes[n], device="meta"), "step": 3} for k, n in enumerate(order)}
        layout = {"tp": 1, "pp": PP, "dp": 1, "zero": 0}
        if record_bounds:
            layout["pipeline_parts"] = bounds
        torch.save({"module": None, "optimizer": {"state": state, "param_groups": [{"params": list(state)}]},
                    "iteration": 3, "layout": layout},
                   os.path.join(tag_dir, f"mp_rank_{s:02d}_model_states.pt"))
        orders.append(order)
    return shapes, orders


def _job():
    # fp32 at ZeRO-0: the pipeline checkpoint layout this test reads (one file per layer, no ZeRO partitions)
    return parse_args(["--preset", "palm-540b", "--training.precision", "fp32", "--pipeline-model-parallel-size",
                       str(PP), "--zero-stage", "0", "--model.vocab_size", "256000"]).job


@pytest.mark.parametrize("record_bounds", [True, False], ids=["recorded", "saved-before-recording"])
def test_palm540b_pp16_zero0_pipeline_checkpoint_reads_in_one_pass(tmp_path, record_bounds):
    job = _job()
    assert job.model.num_layers == 118
    shapes, orders = _write_checkpoint(str(tmp_path), job, record_bounds)
    state = read_full_state(str(tmp_path), job)
    assert set(state.module) == set(shapes) and set(state.exp_avg) == set(shapes)
    for name, shape in shapes.items():
        assert state.exp_avg[name].shape == shape and state.exp_avg_sq[name].shape == shape, name
    assert state.step == 3 and state.client_state["iteration"] == 3


def test_boundaries_that_do_not_fit_the_saved_state_are_a_clear_error(tmp_path):
    job = _job()
    _write_checkpoint(str(tmp_path), job, record_bounds=True)
    first = os.path.join(str(tmp_path), "mp_rank_00_model_states.pt")
    sd0 = torch.load(first, weights_only=False)
    bounds = sd0["layout"]["pipeline_parts"]
    sd0["layout"]["pipeline_parts"] = [0, bounds[1] + 1] + bounds[2:]  # stage 0 one block longer
    torch.save(sd0, first)
    with pytest.raises(ReshardError, match="does not match pipeline layers"):
        read_full_state(str(tmp_path), job)
    sd0["layout"]["pipeline_parts"] = bounds[:-1]  # one boundary short
    torch.save(sd0, first)
    with pytest.raises(ReshardError, match="not for 16 stages"):
        read_full_state(str(tmp_path), job)
