"""launch.py's flags and its help, importable in a few milliseconds: absl flags and ml_collections only, no jax.

`python launch.py --help` prints the usage, these flags and the config groups, and exits 0 before any heavy import;
`--help=GROUP` (`--help=train`, `--help=model.unet`, `--help=all`) lists a group's config keys with their defaults
and comments, read from configs/base.py (and, with `--config FILE`, that file's values where they differ).
"""

import sys
import textwrap

from absl import flags
from ml_collections import config_flags

from md4_jax.run import config_keys

# Names the heavy modules own (modes.MODES, conditioning.*), repeated here so that --help imports none of them;
# tests/run/test_command_line_help.py checks they agree.
MODES = ("train", "eval", "sample", "prepare", "params", "export")
EXPORT_FORMATS = ("safetensors", "hf")  # interop/export.py's FORMATS
GAP_CHAR = "_"
COMPLETION_REGIONS = ("top", "left", "center")

USAGE = """Train, evaluate and sample masked discrete diffusion models (MD4, GenMD4, BD3) and their AR baseline.

  python launch.py --config configs/X.py --workdir DIR [--mode train|eval|sample|prepare|params|export]
                   [--config.a.b=v ... (or --a.b=v)]

Examples:
  python launch.py --config configs/quickstart.py --workdir runs/quickstart           # train (or resume)
  python launch.py --config configs/quickstart.py --workdir runs/quickstart --mode eval
  python launch.py --config configs/quickstart.py --workdir runs/quickstart --mode sample --prompt "the cat"
  python launch.py --config configs/quickstart.py --train.num_steps=200 --sampler.name=exact --workdir DIR
"""

CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).")
WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: config.json, checkpoints/, metrics.jsonl, samples/ "
                              "(all modes but prepare and params).")
MODE = flags.DEFINE_string("mode", "train", "train (resumes if DIR has checkpoints), eval, sample, prepare "
                           "(download and preprocess data.source into data.dir), params (print the parameter count), export "
                           "(write the params for other code: --format), "
                           "or a module path outside md4_jax whose run(config, workdir) is the mode.")
STEP = flags.DEFINE_integer("step", None, "Checkpoint step for eval/sample/export (default: the latest).")
FORMAT = flags.DEFINE_enum("format", None, list(EXPORT_FORMATS), "--mode export: 'safetensors' (our names, with the "
                           "run's config.json; the default) or 'hf' (a Hugging Face Llama / Qwen causal LM "
                           "directory, for objective='ar'); written to WORKDIR/export/step_N_FORMAT.")
NUM_SAMPLES = flags.DEFINE_integer("num_samples", None, "Samples to write in --mode sample (default: "
                                   "config.sampler.num_samples), drawn sampler.batch_size at a time.")
PROMPT = flags.DEFINE_string("prompt", None, "--mode sample: text every sample starts with.")
INFILL = flags.DEFINE_string("infill", None, "--mode sample: a template in which each '_' (or --gap_char) is one "
                             "token to generate, e.g. 'the ____ sat on the ___'; the rest is kept.")
GAP_CHAR_FLAG = flags.DEFINE_string("gap_char", GAP_CHAR, "With --infill: the character that marks a token to "
                                    "generate, for an alphabet that holds '_' or a template that needs a literal '_'.")
LENGTH = flags.DEFINE_integer("length", None, "--mode sample: tokens per sample (default: data.seq_len). Block "
                              "diffusion (objective='bd3', sampler.kv_cache='exact') draws longer ones, written "
                              "block by block.")
STOP = flags.DEFINE_multi_string("stop", None, "--mode sample, text runs: end each sample at the first occurrence "
                                 "of this string (repeatable); samples also end at the tokenizer's end-of-text. The "
                                 ".jsonl records why each stopped and its length.")
SEED = flags.DEFINE_integer("seed", None, "--mode sample: random seed of the draws (default: config.seed).")
CLASS_LABEL = flags.DEFINE_string("class_label", None, "--mode sample, class-conditional image runs: the class of "
                                  "every sample, or a list (e.g. 1,4,7) given to the samples in turn.")
COMPLETE = flags.DEFINE_enum("complete", None, list(COMPLETION_REGIONS), "--mode sample, image runs: keep that part "
                             "of held-out images (top or left half, the center) and sample the rest.")
SWEEP = flags.DEFINE_bool("sweep", False, "Run every variant of the config's sweep(add), each in WORKDIR/<name>.")
SWEEP_INDEX = flags.DEFINE_integer("sweep_index", None, "Run only variant I (0-based) of the config's sweep.")
DRY_RUN = flags.DEFINE_bool("dry_run", False, "With --sweep: list the variants (index, name, overrides) and stop.")
COORDINATOR = flags.DEFINE_string("coordinator_address", None, "Multi-host: HOST:PORT of process 0 (not needed on "
                                  "TPU pods or under SLURM, where JAX finds it).")
NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-host: the number of processes.")
PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-host: this process's index, 0..num_processes-1.")
flags.mark_flags_as_required(["config"])

HELP_FLAGS = ("--help", "-help", "-h", "--helpshort", "--helpfull", "-?")


def help_topic(argv: list[str]) -> str | None:
  """"" for a plain --help, "GROUP" for --help=GROUP (or `--help GROUP`), None when no help is asked for."""
  for i, arg in enumerate(argv):
    name, equals, value = arg.partition("=")
    if name in HELP_FLAGS:
      if equals:
        return value
      following = argv[i + 1] if i + 1 < len(argv) else ""
      return following if following and not following.startswith("-") else ""
  return None


def _flag_lines() -> list[str]:
  lines = []
  for flag in flags.FLAGS.get_flags_for_module(sys.modules[__name__]):
    default = "" if flag.default is None or flag.name == "config" else f" (default: {flag.default_as_str})"
    lines.append(textwrap.fill(f"--{flag.name}: {flag.help}{default}", 110, initial_indent="  ",
                               subsequent_indent="      "))
  return lines


def print_help(topic: str, base_path: str, config_file: str | None, config=None) -> int:
  """--help (topic ""): usage, flags and the config groups; --help=GROUP: that group's keys (see config_keys).
  Returns the exit status: 0, or 2 (one `error:` line) for a topic that names nothing."""
  if topic:
    try:
      print(config_keys.describe(topic, base_path, config, config_file))
    except ValueError as error:
      print(f"error: {error}", file=sys.stderr)
      return 2
    return 0
  print(USAGE)
  print("Flags:")
  print("\n".join(_flag_lines()))
  print("\nConfig keys (override any with --config.GROUP.KEY=VALUE, or --GROUP.KEY=VALUE):")
  print(config_keys.groups_summary(base_path))
  print("\n  python launch.py --help=GROUP (e.g. --help=train, --help=model.unet) lists a group's keys with their\n"
        "  defaults and comments; --help=all lists every key; add --config FILE to see that file's values.")
  return 0


def config_argument(argv: list[str]) -> str | None:
  """The --config value in argv (with a `:ARGS` suffix for get_config), or None."""
  for i, arg in enumerate(argv):
    name, equals, value = arg.partition("=")
    if name in ("--config", "-config"):
      return (value if equals else (argv[i + 1] if i + 1 < len(argv) else "")) or None
  return None
