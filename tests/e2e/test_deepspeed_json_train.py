"""A ZeRO stage given only in the DeepSpeed JSON, fp32 (issue 14, finding 9): it used to crash at step 1 with an
IndexError inside DeepSpeed's clipping, because the trainer decided who clips and built the model before reading
the JSON. Merged at parse time, the run is ZeRO-2 from the start and clips at the JSON's gradient_clipping."""

import json

import pytest

from ._cmd import TINY, run, train_losses

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


def test_zero_stage_and_clipping_only_in_the_json_train(tmp_path):
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": 2}, "gradient_clipping": 0.5}))
    save = str(tmp_path / "ckpt")
    proc = run(TINY + ["--train-iters", "2", "--deepspeed_config", str(ds), "--save", save])
    assert "| ZeRO 2 |" in proc.stdout, proc.stdout[-2000:]
    assert "clip-grad = 0.5 from --deepspeed_config" in proc.stderr
    assert sorted(train_losses(save)) == [1, 2]
    saved = (tmp_path / "ckpt" / "iter_0000002" / "config.yaml").read_text()
    assert "clip_grad: 0.5" in saved and "zero_stage: 2" in saved
