"""Parts from outside the package: a toy backbone, objective, sampler and data source, each a module this test
writes into a temporary directory (never into md4_jax), each with its own keys, defaults and a value check, are
chosen by config and run a whole tiny run: train, resume, evaluate, sample (md4_jax/parts.py)."""

import hashlib
import json
import shutil
import sys
import textwrap

import pytest

from configs import base
from md4_jax import samplers
from md4_jax.errors import UserError
from md4_jax.run import modes
from tests.conftest import ROOT, launch, make_config, override

TOYS = {
    "toy_net": '''
        """A backbone: per-position embeddings beside the sequence's mean embedding, through one dense layer."""
        import dataclasses
        import functools

        import jax.numpy as jnp
        import ml_collections
        from flax import nnx

        from md4_jax.models.backbone import Backbone

        KIND = "backbone"


        def config_group():
          group = ml_collections.ConfigDict()
          group.hidden = 16  # embedding width
          return group


        @dataclasses.dataclass(frozen=True)
        class ToyConfig:
          vocab_size: int
          hidden: int
          time_conditioning: bool = False
          num_classes: int = 0

          def __post_init__(self):
            if self.hidden <= 0 or self.hidden % 2:
              raise ValueError(f"model.toy_net.hidden={self.hidden} must be positive and even")

          def summary(self):
            return f"toy net, hidden {self.hidden}"


        class ToyNet(nnx.Module):
          splits_head = False

          def __init__(self, cfg, rngs):
            self.embed = nnx.Embed(cfg.vocab_size + 1, cfg.hidden, rngs=rngs)
            self.out = nnx.Linear(2 * cfg.hidden, cfg.vocab_size, rngs=rngs)

          def __call__(self, z_BxL, t_B, label_B=None, *, dropout_key=None):
            h_BxLxD = self.embed(z_BxL)
            context_BxLxD = jnp.broadcast_to(h_BxLxD.mean(axis=1, keepdims=True), h_BxLxD.shape)
            return self.out(jnp.concatenate([h_BxLxD, context_BxLxD], axis=-1)).astype(jnp.float32)


        def build(config, modality, requirements):
          if requirements.get("causal") or requirements.get("block_masks"):
            raise ValueError("the toy net has no attention masks")
          cfg = ToyConfig(modality.vocab_size, config.model.toy_net.hidden)
          return Backbone(cfg, functools.partial(ToyNet, cfg))
        ''',
    "scaled_md4": '''
        """An objective: MD4 with its diffusion term weighted (weight 1 is MD4's bound)."""
        import ml_collections

        from md4_jax.objectives.base import refuse
        from md4_jax.objectives.md4 import MD4

        KIND = "objective"


        def config_group():
          group = ml_collections.ConfigDict()
          group.weight = 1.0  # multiplies the diffusion term
          return group


        class ScaledMD4(MD4):
          name = "md4_toys.scaled_md4"

          @classmethod
          def check_config(cls, config):
            if config.diffusion.scaled_md4.weight <= 0:
              refuse(f"diffusion.scaled_md4.weight={config.diffusion.scaled_md4.weight} must be > 0")

          def terms(self, net, x0_BxL, key, **kwargs):
            terms = super().terms(net, x0_BxL, key, **kwargs)
            weight = self.config.diffusion.scaled_md4.weight
            terms["loss"] = terms["loss"] + (weight - 1.0) * terms["diffusion"]
            return terms


        OBJECTIVE = ScaledMD4
        ''',
    "oneshot": '''
        """A sampler: one network call fills every masked position, logits sharpened first."""
        import jax
        import jax.numpy as jnp
        import ml_collections

        KIND = "sampler"


        def config_group():
          group = ml_collections.ConfigDict()
          group.sharpness = 1.0  # logits are multiplied by it before the draw
          return group


        def check_config(config, length):
          if config.sampler.oneshot.sharpness <= 0:
            raise ValueError(f"sampler.oneshot.sharpness={config.sampler.oneshot.sharpness} must be > 0")


        def _run(denoise, key, schedule, z_BxL, active_BxL, settings, vocab_size, time_dependent, order_BxL):
          logits_BxLxV = denoise(z_BxL, jnp.ones(z_BxL.shape[:1])) * settings.option("sharpness")
          drawn_BxL = jax.random.categorical(key, logits_BxLxV)
          fill_BxL = active_BxL & (z_BxL == vocab_size)
          return (jnp.where(fill_BxL, drawn_BxL, z_BxL), jnp.ones((), jnp.int32),
                  jnp.where(fill_BxL, jnp.max(order_BxL) + 1, order_BxL))


        SAMPLERS = {"oneshot": _run}
        ''',
    "repeat_text": '''
        """A text source: a phrase repeated, characters as tokens, the last tenth held out."""
        import ml_collections

        from md4_jax.data import tokenizers
        from md4_jax.data.modality import Text
        from md4_jax.data.rows import Data, StreamRows

        KIND = "source"
        MODALITY = "text"


        def config_group():
          group = ml_collections.ConfigDict()
          group.phrase = "a cat sat on a mat. "  # the text repeated
          group.repeats = 60  # how many times
          return group


        def check_config(config):
          if config.data.repeat_text.repeats < 20:
            raise ValueError(f"data.repeat_text.repeats={config.data.repeat_text.repeats} must be >= 20")


        def _tokenizer(data_config, saved):
          return saved.tokenizer if saved else tokenizers.CharTokenizer.from_text(data_config.repeat_text.phrase)


        def load(data_config, split, saved):
          tokens = _tokenizer(data_config, saved).encode(data_config.repeat_text.phrase * data_config.repeat_text.repeats)
          cut = len(tokens) * 9 // 10
          return Data(modality(data_config, saved), StreamRows(tokens[:cut], data_config.seq_len),
                      StreamRows(tokens[cut:], data_config.seq_len, pad_last=True))


        def modality(data_config, saved=None):
          return Text.of(_tokenizer(data_config, saved), data_config.seq_len)
        ''',
}
PLUGINS = ",".join(f"md4_toys.{name}" for name in TOYS)


def package_digest() -> str:
  """A hash of every file of md4_jax and configs/: the test must change none of them."""
  digest = hashlib.sha256()
  for path in sorted([*(ROOT / "md4_jax").rglob("*.py"), *(ROOT / "configs").glob("*.py")]):
    digest.update(path.read_bytes())
  return digest.hexdigest()


@pytest.fixture(scope="module")
def toys(tmp_path_factory):
  """The md4_toys package on sys.path (and on PYTHONPATH for launch.py), and a config file choosing its parts."""
  folder = tmp_path_factory.mktemp("outside")
  (folder / "md4_toys").mkdir()
  (folder / "md4_toys" / "__init__.py").write_text("")
  for name, source in TOYS.items():
    (folder / "md4_toys" / f"{name}.py").write_text(textwrap.dedent(source))
  (folder / "toy_config.py").write_text(textwrap.dedent(f'''
      from configs import base


      def get_config():
        config = base.get_config(plugins="{PLUGINS}")
        config.data.source = "md4_toys.repeat_text"
        config.data.seq_len = 16
        config.model.backbone = "md4_toys.toy_net"
        config.model.toy_net.hidden = 24
        config.objective = "md4_toys.scaled_md4"
        config.diffusion.scaled_md4.weight = 1.5
        config.sampler.name = "md4_toys.oneshot"
        config.sampler.oneshot.sharpness = 2.0
        config.data.repeat_text.repeats = 80
        config.train.update(num_steps=8, batch_size=8, learning_rate=1e-2, warmup_steps=2, log_every=2,
                            eval_every=4, checkpoint_every=4)
        config.eval.update(batch_size=8, max_sequences=8)
        config.sampler.num_samples = 2
        return config
      '''))
  sys.path.insert(0, str(folder))
  yield folder
  sys.path.remove(str(folder))


def toy_config(folder, **changes):
  sys.path.insert(0, str(folder))
  import toy_config  # noqa: PLC0415 (written by the fixture)

  return override(toy_config.get_config(), **changes)


def test_outside_parts_train_resume_evaluate_and_sample(toys, tmp_path):
  before = package_digest()
  workdir = tmp_path / "run"
  modes.main(toy_config(toys, train__num_steps=4), workdir, "train", reference=base.get_config())
  trained = modes.main(toy_config(toys), workdir, "train", reference=base.get_config())  # resumes at step 4
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  losses = [row["train/loss"] for row in rows if "train/loss" in row]
  assert [row["step"] for row in rows if "train/loss" in row] == [2, 4, 6, 8] and losses[-1] < losses[0]
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["model"]["toy_net"] == {"hidden": 24} and saved["sampler"]["oneshot"] == {"sharpness": 2.0}
  evaluated = modes.main(toy_config(toys), workdir, "eval", reference=base.get_config())
  assert evaluated["eval/bpt"] == trained["eval/bpt"]  # the same EMA params at step 8
  sampled = modes.main(toy_config(toys), workdir, "sample", reference=base.get_config(), num_samples=3)
  assert len(sampled["samples"]) == 3 and set("".join(sampled["samples"])) <= set("a cat sat on a mat. ")
  (jsonl,) = (workdir / "samples").glob("step_8_*.jsonl")
  assert [json.loads(line)["nfe"] for line in jsonl.read_text().splitlines()] == [1, 1, 1]  # one call: oneshot's
  assert package_digest() == before


@pytest.mark.parametrize("changes, message", [
    ({"model__toy_net__hidden": 7}, "model.toy_net.hidden=7 must be positive and even"),
    ({"diffusion__scaled_md4__weight": 0.0}, r"diffusion.scaled_md4.weight=0.0 must be > 0"),
    ({"sampler__oneshot__sharpness": -1.0}, r"sampler.oneshot.sharpness=-1.0 must be > 0"),
    ({"data__repeat_text__repeats": 3}, "data.repeat_text.repeats=3 must be >= 20"),
    ({"model__backbone": "transformer"}, r"model.toy_net.hidden=24 has no effect.*model.backbone='md4_toys.toy_net'"),
    ({"objective": "md4"}, r"diffusion.scaled_md4.weight=1.5 has no effect.*objective='md4_toys.scaled_md4'"),
    ({"sampler__name": "ancestral"}, r"sampler.oneshot.sharpness=2.0 has no effect.*'md4_toys.oneshot'"),
    ({"data__source": "embedded"}, r"data.repeat_text.repeats=80 has no effect.*'md4_toys.repeat_text'"),
    ({"model__backbone": "md4_toys.missing"}, r"model.backbone='md4_toys.missing': cannot import the module"),
    ({"plugins": PLUGINS + ",json"}, r"plugins: module 'json' must set KIND to one of"),
    ({"sampler__name": "json.decoder"}, r"sampler.name='json.decoder': the module must define SAMPLERS"),
    ({"model__backbone": "json.decoder"}, r"model.backbone='json.decoder': the module lacks build; it must define"),
    ({"objective": "json.decoder"}, r"objective='json.decoder': the module lacks OBJECTIVE; it must define"),
    ({"eval__suite": "json.decoder"}, r"eval.suite='json.decoder': the module lacks load, run; it must define"),
])
def test_outside_parts_bad_values_and_keys_under_other_parts(toys, tmp_path, changes, message):
  with pytest.raises(UserError, match=message):
    modes.main(toy_config(toys, **changes), tmp_path / "run", "params", reference=base.get_config())


def test_an_outside_sampler_inside_semi_ar_reads_its_own_keys(toys):
  config = toy_config(toys, sampler__name="semi_ar", sampler__semi_ar__inner="md4_toys.oneshot",
                      sampler__block_length=8, sampler__steps=2)
  modes.main(config, None, "params", reference=base.get_config())  # its keys apply under semi_ar too
  settings = samplers.settings(config.sampler)
  assert settings.name == "semi_ar" and settings.option("sharpness") == 2.0
  blocks = samplers.semi_ar.blocks(settings, 16)
  assert [inner.name for inner, _ in blocks] == ["md4_toys.oneshot"] * 2 and blocks[0][0].option("sharpness") == 2.0


def test_outside_part_on_the_command_line_one_line_error(toys, tmp_path):
  result = launch("--config", toys / "toy_config.py", "--workdir", tmp_path / "run", "--mode", "params",
                  "--model.toy_net.hidden=5", extra_env={"PYTHONPATH": str(toys)})
  assert result.returncode == 2 and result.stderr.strip().count("\n") == 0, result.stderr
  assert "model.toy_net.hidden=5 must be positive and even" in result.stderr
  result = launch("--config", toys / "toy_config.py", "--mode", "params", extra_env={"PYTHONPATH": str(toys)})
  assert result.returncode == 0 and "toy net, hidden 24" in result.stdout, result.stderr
  # Chosen on the command line alone, on a config that does not list it: its group is added at its defaults.
  result = launch("--config", ROOT / "configs/base.py", "--mode", "params", "--model.backbone=md4_toys.toy_net",
                  extra_env={"PYTHONPATH": str(toys)})
  assert result.returncode == 0 and "toy net, hidden 16" in result.stdout, result.stderr


def test_a_workdir_saved_before_the_renames_resumes_and_evaluates(corpus_file, tmp_path):
  """tests/fixtures/workdir_before_parts: the tiny config trained 2 steps by md4-jax before parts owned their keys
  (commit b521f1b: model.width, model.num_layers, ... in config.json)."""
  workdir = tmp_path / "old"
  shutil.copytree(ROOT / "tests/fixtures/workdir_before_parts", workdir)
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["model"]["width"] == 32 and "transformer" not in saved["model"]  # the old names
  result = modes.main(make_config(corpus_file, train__num_steps=4), workdir, "train", reference=base.get_config())
  steps = [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert steps[0] == 2 and steps[-1] == 4 and "eval/bpt" in result  # resumed at step 2, not restarted
  assert json.loads((workdir / "config.json").read_text())["model"]["transformer"]["width"] == 32
  evaluated = modes.main(make_config(corpus_file, train__num_steps=4), workdir, "eval", reference=base.get_config())
  assert evaluated["eval/bpt"] == result["eval/bpt"]
