"""A saved config.json against this run's config: another model is refused, a renamed key (model.kind) migrates
(engine/saved_config.py, run/workdir.py)."""

import json

import pytest

from md4_jax.errors import UserError
from md4_jax.run import modes
from tests.conftest import assert_clear_error, launch_tiny, make_config, reference


def test_incompatible_workdir_is_refused(tmp_path, corpus_file):
  workdir = tmp_path / "run"
  workdir.mkdir()
  saved = make_config(corpus_file).to_dict()
  saved["model"]["transformer"]["width"] = 64
  (workdir / "config.json").write_text(json.dumps(saved))
  (workdir / "checkpoints" / "4").mkdir(parents=True)  # a checkpoint binds the workdir to its config
  result = launch_tiny(corpus_file, workdir)
  assert_clear_error(result, "model.transformer.width: 64 in the workdir, 32 now", "new --workdir")
  assert json.loads((workdir / "config.json").read_text()) == saved  # nothing overwritten


@pytest.mark.slow
def test_a_workdir_saved_with_model_kind_still_resumes(tmp_path, corpus_file):
  """Runs from before the objective key hold model.kind in config.json: read as `objective`."""
  workdir = tmp_path / "run"
  modes.main(make_config(corpus_file, objective="ar", train__num_steps=4), workdir, "train", reference=reference())
  saved = json.loads((workdir / "config.json").read_text())
  saved["model"]["kind"] = saved.pop("objective")
  (workdir / "config.json").write_text(json.dumps(saved))
  (workdir / "modality.json").unlink()  # nor did they write modality.json: tokenizer.json says what a token is
  evaluated = modes.main(make_config(corpus_file, objective="ar", train__num_steps=4), workdir, "eval",
                       reference=reference())
  assert evaluated["eval/bpt"] > 0
  result = modes.main(make_config(corpus_file, objective="ar", train__num_steps=6), workdir, "train",
                    reference=reference())
  assert "eval/bpt" in result
  with pytest.raises(UserError, match="objective: 'ar' in the workdir, 'md4' now"):
    modes.main(make_config(corpus_file, train__num_steps=8), workdir, "train", reference=reference())
