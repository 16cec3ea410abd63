"""resolve_checkpoint: what --load / tools' --load accept (SAVE or SAVE/iter_XXXXXXX) and the one-line errors for
everything else, each naming the fix."""

import pytest

from megatron_code.training.checkpoint import CheckpointError, resolve_checkpoint


def _save_dir(tmp_path):
    save = tmp_path / "ck"
    (save / "iter_0000005").mkdir(parents=True)
    (save / "iter_0000005" / "config.yaml").write_text("model: {}\n")
    (save / "iter_0000005" / "meta.json").write_text("{}")
    (save / "latest").write_text("iter_0000005\n")
    return save


def test_save_dir_and_tag_dir_resolve_to_the_same_checkpoint(tmp_path):
    save = _save_dir(tmp_path)
    assert resolve_checkpoint(str(save)) == (str(save), "iter_0000005")
    assert resolve_checkpoint(str(save / "iter_0000005")) == (str(save), "iter_0000005")


@pytest.mark.parametrize("target,words", [
    ("latest", ["is a file", "directory given to --save"]),  # --load ck/latest
    ("missing", ["does not exist", "--load"]),
    ("empty", ["no 'latest' file"]),
])
def test_wrong_load_paths_name_the_fix(tmp_path, target, words):
    save = _save_dir(tmp_path)
    (tmp_path / "empty").mkdir()
    path = {"latest": save / "latest", "missing": tmp_path / "nope", "empty": tmp_path / "empty"}[target]
    with pytest.raises(CheckpointError) as err:
        resolve_checkpoint(str(path))
    assert all(w in str(err.value) for w in words), str(err.value)


def _job(position_embedding: str, max_positions: int):
    from megatron_code.config.job import JobConfig

    job = JobConfig()
    job.model.position_embedding = position_embedding
    job.model.max_position_embeddings = max_positions
    return job


@pytest.mark.parametrize("kind", ["rope", "none"])
def test_max_positions_may_grow_on_resume_when_no_tensor_depends_on_it(kind):
    """RoPE (or no positions): --max-position-embeddings sizes no tensor, so a resume may raise it (context
    extension); with learned positions it is the embedding's shape and a change is refused."""
    from megatron_code.training.checkpoint import check_compatible

    check_compatible(_job(kind, 2048), _job(kind, 8192))
    with pytest.raises(CheckpointError, match="max_position_embeddings: checkpoint 2048 vs now 8192"):
        check_compatible(_job("learned", 2048), _job("learned", 8192))
    with pytest.raises(CheckpointError, match="position_embedding"):
        check_compatible(_job("learned", 2048), _job(kind, 2048))
