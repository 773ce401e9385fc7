"""launch.py's own mistakes and text-conditioning input, each one `error:` line and exit status 2 (no traceback,
no --help dump): a config file that fails to load, a stray word, characters outside the alphabet in --prompt /
--infill, and the infill gap character (--gap_char)."""

import json

import pytest

from tests.conftest import ROOT, assert_clear_error, launch, launch_tiny

pytestmark = pytest.mark.slow  # whole runs: the full suite only (README)

# The corpus holds '_', so the default infill gap is ambiguous for a character-level run on it.
UNDERSCORE_CORPUS = "the quick brown fox jumps over the lazy dog. a snake_case cat sat on the mat. " * 60
SHORT_RUN = ("--config.train.num_steps=2", "--config.train.checkpoint_every=2")


def assert_one_error_line(result, *fragments):
  """Exit status 2 and exactly one `error:` line on stderr, holding every fragment."""
  assert_clear_error(result, *fragments)
  assert result.returncode == 2, result.stderr[-3000:]
  lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(lines) == 1 and all(fragment in lines[0] for fragment in fragments), result.stderr[-3000:]


@pytest.mark.parametrize("source, line, exception", [
    ("from tests import tiny_config\n\n\ndef get_config(:\n  return tiny_config.get_config()\n", 4,
     "SyntaxError: invalid syntax"),
    ("from tests import tiny_config\nsteps = undefined_steps\n\n\ndef get_config():\n"
     "  return tiny_config.get_config()\n", 2, "NameError: name 'undefined_steps' is not defined"),
    ("from tests import tiny_config\n\n\ndef get_config():\n  config = tiny_config.get_config()\n"
     "  config.train.num_steps = undefined_steps\n  return config\n", 6,
     "NameError: name 'undefined_steps' is not defined"),
], ids=["syntax_error", "name_error_at_module_level", "name_error_in_get_config"])
def test_a_config_file_that_fails_names_the_file_and_the_line(tmp_path, corpus_file, source, line, exception):
  config_file = tmp_path / "my_config.py"
  config_file.write_text(source)
  result = launch("--config", config_file, "--workdir", tmp_path / "run", f"--config.data.path={corpus_file}")
  assert_one_error_line(result, f"error in the config file {config_file}, line {line}: {exception}")
  assert not (tmp_path / "run").exists()


def test_a_stray_argument_is_one_line_not_the_help(tmp_path, corpus_file):
  result = launch_tiny(corpus_file, tmp_path / "run", "oops")
  assert result.stderr.strip() == ("error: unexpected argument 'oops'; flags look like --config.train.num_steps=100 "
                                   "(usage: --help)")
  assert result.returncode == 2
  assert not (tmp_path / "run").exists()


def test_length_reaches_the_sampler_and_is_checked_before_any_work(tmp_path, corpus_file):
  result = launch_tiny(corpus_file, tmp_path / "run", "--mode", "sample", "--length", "40")
  assert_clear_error(result, "--length=40: objective='md4' generates the trained length only")
  result = launch_tiny(corpus_file, tmp_path / "run", "--mode", "sample", "--length", "40", "--config.objective=bd3",
                       "--config.diffusion.bd3.block_size=4")
  assert_clear_error(result, "add --config.sampler.kv_cache=exact")
  result = launch_tiny(corpus_file, tmp_path / "run", "--length", "40")
  assert_clear_error(result, "--length only apply to --mode sample")
  assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def underscore_run(tmp_path_factory):
  """(sample(*args) -> finished launch.py --mode sample, workdir, alphabet) of one short run on UNDERSCORE_CORPUS."""
  folder = tmp_path_factory.mktemp("underscore_run")
  corpus, workdir = folder / "corpus.txt", folder / "run"
  corpus.write_text(UNDERSCORE_CORPUS, encoding="utf-8")
  trained = launch_tiny(corpus, workdir, *SHORT_RUN)
  assert trained.returncode == 0, trained.stderr[-3000:]
  alphabet = json.loads((workdir / "tokenizer.json").read_text())["alphabet"]
  assert "_" in alphabet and "#" not in alphabet and "Q" not in alphabet
  return (lambda *args: launch_tiny(corpus, workdir, *SHORT_RUN, "--mode", "sample", *args)), workdir, alphabet


def test_characters_outside_the_alphabet_name_the_flag_and_the_alphabet(underscore_run):
  sample, _, alphabet = underscore_run
  assert_one_error_line(sample("--prompt", "the QZ"), "--prompt has characters ['Q', 'Z']", repr(alphabet))
  assert_one_error_line(sample("--infill", "the ## Q", "--gap_char", "#"), "--infill has characters ['Q']",
                        repr(alphabet))


def test_an_alphabet_holding_the_gap_character_asks_for_another(underscore_run):
  sample, _, _ = underscore_run
  assert_one_error_line(sample("--infill", "the ___ sat"), "contains the gap character '_'", "--gap_char='#'")
  assert_one_error_line(sample("--infill", "the aaa sat", "--gap_char", "a"), "contains the gap character 'a'",
                        "--gap_char='#'")


def test_gap_char_marks_the_gaps_and_keeps_literal_underscores(underscore_run):
  sample, workdir, _ = underscore_run
  template = "snake_#### sat"
  result = sample("--infill", template, "--gap_char", "#")
  assert result.returncode == 0, result.stderr[-3000:]
  [samples] = (workdir / "samples").glob("step_2_*.jsonl")
  texts = [json.loads(line)["text"] for line in samples.read_text().splitlines()]
  assert texts and all(len(text) == 16 and "#" not in text for text in texts)
  assert all(a == b for text in texts for a, b in zip(text, template) if b != "#")  # the literal '_' is kept


def test_gap_char_applies_only_to_infill_in_sample_mode(underscore_run, tmp_path, corpus_file):
  sample, _, _ = underscore_run
  assert_one_error_line(sample("--prompt", "the", "--gap_char", "#"), "--gap_char='#' marks the gaps of an --infill",
                        "give --infill too")
  assert_one_error_line(sample("--infill", "the ## sat", "--gap_char", "##"), "--gap_char='##' must be one character")
  assert_one_error_line(launch_tiny(corpus_file, tmp_path / "run", "--gap_char", "#"),
                        "--gap_char only apply to --mode sample")
  assert not (tmp_path / "run").exists()


def test_ci_runs_the_readme_test_command_verbatim():
  readme = (ROOT / "README.md").read_text()
  after = readme[readme.index("Run the test suite:"):]
  command = after[after.index("```bash\n") + len("```bash\n"):].splitlines()[0]
  assert command in (ROOT / ".ci/run").read_text().splitlines()
