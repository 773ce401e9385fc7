"""Bad config keys, types and values, and bad flags, end in one clear message (exit status 2 or a flags error)
before any work, never a traceback (run/config_check.py, run/config_scope.py, launch.py)."""

import functools

import ml_collections
import pytest

from md4_jax.errors import UserError
from md4_jax.run import config_check, modes
from tests import tiny_image_config
from tests.conftest import assert_clear_error, launch, launch_tiny, make_config, override, reference


@pytest.mark.slow
def test_unknown_key_on_the_command_line(tmp_path, corpus_file):
  assert_clear_error(launch_tiny(corpus_file, tmp_path, "--config.model.widht=64"), "unknown config key", "widht")


@pytest.mark.slow
def test_wrong_type_on_the_command_line(tmp_path, corpus_file):
  assert_clear_error(launch_tiny(corpus_file, tmp_path, "--config.train.num_steps=lots"), "num_steps")


@pytest.mark.slow
def test_bad_schedule_name(tmp_path, corpus_file):
  result = launch_tiny(corpus_file, tmp_path, "--config.diffusion.schedule=quadratic")
  assert_clear_error(result, "unknown masking schedule 'quadratic'", "poly2")
  assert result.returncode == 2


@pytest.mark.slow
@pytest.mark.parametrize("content, message", [(None, "does not exist"), ("", "is empty")])
def test_missing_or_empty_text_file(tmp_path, content, message):
  path = tmp_path / "corpus.txt"
  if content is not None:
    path.write_text(content)
  assert_clear_error(launch_tiny(path, tmp_path / "run"), message)


def test_unknown_key_or_wrong_type_in_a_config_file(corpus_file, tmp_path):
  config = make_config(corpus_file)
  config.model.dropout = 0.1
  with pytest.raises(UserError, match=r"unknown config key 'model.dropout'.*model.transformer.\*"):
    modes.main(config, tmp_path, reference=reference())
  values = make_config(corpus_file).to_dict()
  values["train"]["num_steps"] = 10.5  # a config built without configs/base.py's typed defaults
  config = ml_collections.ConfigDict(values)
  with pytest.raises(UserError, match="'train.num_steps' = 10.5 is a float; it must be a int"):
    modes.main(config, tmp_path, reference=reference())


def test_type_error_inside_a_config_file(tmp_path, corpus_file):
  config_file = tmp_path / "my_config.py"
  config_file.write_text("from tests import tiny_config\n\n\ndef get_config():\n"
                         "  config = tiny_config.get_config()\n  config.train.num_steps = 10.5\n  return config\n")
  result = launch("--config", config_file, "--workdir", tmp_path / "run", f"--config.data.path={corpus_file}")
  assert_clear_error(result, "error in the config file", "num_steps")
  assert result.returncode == 2


@pytest.mark.parametrize("key, value, message", [
    ("train__batch_size", 0, "must be positive"),
    ("diffusion__timesteps", -1, "diffusion.timesteps"),
    ("model__transformer__num_heads", 5, "num_heads"),
    ("sampler__grid", "log", "unknown time grid"),
    ("sampler__name", "gibbs", "sampler.name.*choose one of"),
    ("sampler__semi_ar__inner", "semi_ar", "sampler.semi_ar.inner.*choose one of"),
    ("sampler__top_p", 0.0, "top_p"),
    ("sampler__temperature", -1.0, "temperature"),
    ("sampler__exact__tokens_per_call", 0, "tokens_per_call"),
    ("sampler__params", "best", "sampler.params"),
    ("train__ema_decay", 1.0, "ema_decay"),
    ("train__learning_rate", -1e-3, "learning_rate=-0.001 must be > 0"),
    ("train__warmup_steps", -1, "warmup_steps=-1 must be >= 0"),
    ("train__weight_decay", -0.1, "weight_decay"),
    ("train__b1", 1.0, "b1=1.0 must be in"),
    ("train__b2", -0.1, "b2=-0.1 must be in"),
    ("train__grad_clip", -1.0, "grad_clip=-1.0 must be >= 0.*0 = no clipping"),
])
def test_bad_values_fail_before_any_work(corpus_file, tmp_path, key, value, message):
  with pytest.raises(UserError, match=message):
    modes.main(make_config(corpus_file, **{key: value}), tmp_path / "run", reference=reference())
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("key, value, message", [
    ("diffusion__genmd4__network_draws", 3, "network_draws=3: choose 1 or 2"),
    ("diffusion__genmd4__t_min", 1.0, "t_min=1.0 must be in"),
    ("diffusion__genmd4__initial_power", 0.0, "initial_power=0.0 must be > 0"),
    ("diffusion__genmd4__learning_rate", -0.5, "genmd4.learning_rate=-0.5: use -1"),
])
def test_genmd4_checks_its_own_keys(corpus_file, tmp_path, key, value, message):
  """objectives/genmd4.py checks these (GenMD4.check_config), and only when the run is GenMD4."""
  with pytest.raises(UserError, match=message):
    modes.main(make_config(corpus_file, objective="genmd4", **{key: value}), tmp_path / "run", reference=reference())
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("overrides, message", [
    (dict(sampler__name="semi_ar", sampler__block_length=5), "block_length=5 must divide the sequence length 16"),
    (dict(sampler__name="semi_ar", sampler__block_length=4, sampler__steps=6), "multiple of the 4 semi_ar blocks"),
])
def test_bad_semi_ar_blocks(corpus_file, tmp_path, overrides, message):
  with pytest.raises(UserError, match=message):
    modes.main(make_config(corpus_file, **overrides), tmp_path / "run", reference=reference())


@pytest.mark.parametrize("overrides, message", [
    (dict(sampler__kv_cache="exact"), "'exact' is block diffusion's \\(objective='bd3'\\)"),
    (dict(sampler__kv_cache="prefix"), "caches block by block for sampler.name='parallel' \\(this config: 'ancestral'"),
    (dict(sampler__name="parallel", sampler__kv_cache="exact"), "'exact' is block diffusion's.*'prefix' or 'dual'"),
    (dict(sampler__name="parallel", sampler__kv_cache="full"), "sampler.kv_cache.*choose one of"),
    (dict(objective="bd3", diffusion__bd3__block_size=4, sampler__kv_cache="dual"), "use sampler.kv_cache='exact'"),
    (dict(objective="bd3", diffusion__bd3__block_size=4, sampler__name="parallel", sampler__block_length=3),
     "block_length=3 must divide 4 \\(diffusion.bd3.block_size\\)"),
    (dict(sampler__name="parallel", sampler__parallel__threshold=0.0), "threshold=0.0 must be in \\(0, 1\\]"),
    (dict(sampler__name="parallel", sampler__parallel__rows="each"), "sampler.parallel.rows='each'; choose one of"),
    (dict(sampler__name="parallel", sampler__block_length=5), "block_length=5 must divide 16 \\(data.seq_len\\)"),
    (dict(sampler__name="parallel", sampler__kv_cache="dual", sampler__parallel__cache_refresh=-1), "cache_refresh=-1"),
    (dict(sampler__parallel__threshold=0.5), "sampler.parallel.threshold=0.5 has no effect.*sampler.name='parallel'"),
    (dict(sampler__parallel__cache_refresh=2), "sampler.parallel.cache_refresh=2 has no effect.*sampler.name='parallel'"),
    (dict(sampler__name="parallel", sampler__parallel__cache_refresh=2),
     "sampler.parallel.cache_refresh=2 has no effect.*'prefix' or 'dual'"),
    (dict(eval__suite="samples", eval__samplers="parallel:0.9:full"),
     "eval.samplers item parallel:0.9:full: config key 'sampler.kv_cache' = 'full'; choose one of"),
    (dict(eval__suite="samples", eval__samplers="gibbs:8"),
     "eval.samplers item gibbs:8: sampler.name='gibbs' is not known; choose one of"),
])
def test_cache_and_threshold_mistakes(corpus_file, tmp_path, overrides, message):
  with pytest.raises(UserError, match=message):
    modes.main(make_config(corpus_file, **overrides), tmp_path / "run", reference=reference())
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("overrides, message", [
    (dict(model__transformer__scan_unroll=0), r"model.transformer.scan_unroll=0 has no effect on this run: it applies to model.transformer.scan_layers=True"),
    (dict(model__transformer__scan_layers=True, model__transformer__scan_unroll=-1), r"model.transformer.scan_unroll=-1 must be >= 0"),
])
def test_scan_unroll_mistakes(corpus_file, tmp_path, overrides, message):
  with pytest.raises(UserError, match=message):
    modes.main(make_config(corpus_file, **overrides), tmp_path / "run", reference=reference())
  assert not (tmp_path / "run").exists()


def test_an_approximate_cache_needs_a_transformer(tmp_path):
  config = override(tiny_image_config.get_config("unet"), sampler__name="parallel", sampler__kv_cache="dual")
  with pytest.raises(UserError, match="sampler.kv_cache='dual' needs model.backbone='transformer'"):
    modes.main(config, tmp_path / "run", reference=reference())


def test_shorthand_config_flags(tmp_path, corpus_file):
  result = launch_tiny(corpus_file, tmp_path / "run", "--sampler.nme=exact")
  assert_clear_error(result, "unknown config key 'sampler.nme'", "sampler.name")


@pytest.mark.slow
def test_the_renamed_model_kind_key_is_refused_with_its_replacement(tmp_path, corpus_file):
  result = launch_tiny(corpus_file, tmp_path / "run", "--model.kind=ar")
  assert_clear_error(result, "'model.kind' was replaced by 'objective'", "--config.objective=ar")
  assert result.returncode == 2
  result = launch_tiny(corpus_file, tmp_path / "run", "--model.width=64")  # moved into the transformer's group
  assert_clear_error(result, "'model.width' was replaced by 'model.transformer.width'", "its own group")
  config = make_config(corpus_file).to_dict()
  config["model"]["kind"] = "ar"  # a config file that still sets it
  with pytest.raises(UserError, match="'model.kind' was replaced by 'objective'"):
    modes.main(ml_collections.ConfigDict(config), tmp_path / "run2", "train", reference=reference())


@pytest.mark.parametrize("old_key, new_key", [
    ("model.width", "model.transformer.width"), ("diffusion.block_size", "diffusion.bd3.block_size"),
    ("sampler.threshold", "sampler.parallel.threshold"), ("sampler.inner", "sampler.semi_ar.inner"),
    ("sampler.tokens_per_call", "sampler.exact.tokens_per_call"), ("data.vocab_size", "data.tokens.vocab_size")])
def test_keys_moved_into_their_parts_group_are_refused_with_the_new_name_and_migrated(old_key, new_key, tmp_path,
                                                                                    corpus_file):
  config = make_config(corpus_file).to_dict()
  group, name = old_key.split(".")
  config[group][name] = 1  # a config file that still sets it
  with pytest.raises(UserError, match=f"config key '{old_key}' was replaced by '{new_key}': the .*'s keys are its own"):
    modes.main(ml_collections.ConfigDict(config), tmp_path / "run", "params", reference=reference())
  saved = make_config(corpus_file).to_dict()  # a config.json written before the move
  *new_group, new_name = new_key.split(".")
  value = functools.reduce(dict.get, new_group, saved).pop(new_name)
  saved[group][name] = value
  assert config_check.migrate(saved) == make_config(corpus_file).to_dict()


@pytest.mark.slow
def test_partial_multihost_flags(tmp_path, corpus_file):
  assert_clear_error(launch_tiny(corpus_file, tmp_path, "--num_processes=2"), "multi-host needs all of",
                     "--coordinator_address=HOST:PORT")
  assert_clear_error(launch_tiny(corpus_file, tmp_path, "--coordinator_address=localhost:1", "--num_processes=2",
                                 "--process_id=2"), "--process_id=2 must be in [0, 2)")


@pytest.mark.slow
def test_optimizer_mistakes_and_a_step_in_train_mode_are_one_line_through_the_command(tmp_path, corpus_file):
  result = launch_tiny(corpus_file, tmp_path / "run", "--config.train.learning_rate=-0.01")
  assert_clear_error(result, "train.learning_rate=-0.01 must be > 0")
  assert not (tmp_path / "run").exists()
  result = launch_tiny(corpus_file, tmp_path / "run", "--step=4")
  assert_clear_error(result, "--step=4 applies to --mode eval and --mode sample", "move the later")
  assert not (tmp_path / "run").exists()


def test_data_subset_moved_into_its_sources_group(tmp_path, corpus_file):
  """data.subset became fineweb_edu's and imagenet64's own key: a saved config's value goes to the group of the
  source it was saved with, and an empty one (every other source) is dropped."""
  saved = make_config(corpus_file, data__source="fineweb_edu", data__fineweb_edu__subset="sample-100BT").to_dict()
  saved["data"]["subset"] = saved["data"].pop("fineweb_edu").pop("subset")
  assert config_check.migrate(saved)["data"]["fineweb_edu"] == {"subset": "sample-100BT"}
  saved = make_config(corpus_file).to_dict()
  del saved["data"]["fineweb_edu"], saved["data"]["imagenet64"]
  saved["data"]["subset"] = ""
  migrated = config_check.migrate(saved)
  assert "subset" not in migrated["data"] and "embedded" not in migrated["data"]
  config = make_config(corpus_file).to_dict()
  config["data"]["subset"] = "labeled"
  with pytest.raises(UserError, match="'data.subset' was replaced by 'data.<source>.subset'.*data.imagenet64.subset"):
    modes.main(ml_collections.ConfigDict(config), tmp_path / "run", "params", reference=reference())
