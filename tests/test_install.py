"""Installing: pyproject.toml's ranges against constraints.txt's pins, the accelerator extras, the jax/flax pairing
check and the start-up line about devices (md4_jax/run/platform_check.py)."""

import importlib.metadata
import json
import os
import subprocess
import sys
import tomllib
import zipfile

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from md4_jax.run import platform_check
from tests.conftest import ROOT, launch

pytestmark = pytest.mark.slow  # whole runs: the full suite only (README)

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def pins() -> dict[str, Version]:
  lines = (ROOT / "constraints.txt").read_text().splitlines()
  pairs = [line.split("==") for line in lines if line.strip() and not line.startswith("#")]
  return {canonicalize_name(name): Version(version) for name, version in pairs}


def requirements(group: str | None = None) -> list[Requirement]:
  return [Requirement(text) for text in (PYPROJECT["dependencies"] if group is None
                                         else PYPROJECT["optional-dependencies"][group])]


@pytest.mark.parametrize("group", [None, "test"])
def test_every_requirement_is_pinned_inside_its_range(group):
  pinned = pins()
  for requirement in requirements(group):
    name = canonicalize_name(requirement.name)
    assert name in pinned, f"constraints.txt has no pin for {name}"
    assert requirement.specifier.contains(pinned[name]), f"{name}=={pinned[name]} is outside {requirement}"


def test_jax_and_flax_are_pinned_at_the_bottom_of_their_ranges():
  """CI installs constraints.txt, so the suite runs on the lowest jax and flax the ranges admit."""
  pinned = pins()
  for requirement in requirements():
    if requirement.name in ("jax", "flax"):
      lowest = min(Version(spec.version) for spec in requirement.specifier if spec.operator == ">=")
      assert pinned[requirement.name] == lowest, requirement
  jax_range = next(r for r in requirements() if r.name == "jax").specifier
  low, high = platform_check.JAX_RANGE
  assert {str(spec) for spec in jax_range} == {f">={'.'.join(map(str, low))}", f"<{'.'.join(map(str, high))}"}
  assert (0, 10) in platform_check.FIRST_FLAX_FOR_JAX and str(pinned["flax"]) == "0.12.8"


def test_the_accelerator_extras_ask_for_jax_in_the_same_range():
  jax_range = next(r for r in requirements() if r.name == "jax").specifier
  for extra in ("cuda12", "cuda13", "tpu"):
    (requirement,) = requirements(extra)
    assert requirement.name == "jax" and requirement.extras == {extra} and requirement.specifier == jax_range


def _index_reachable() -> bool:
  probe = subprocess.run([sys.executable, "-m", "pip", "index", "versions", "jax", "--retries", "0", "--timeout",
                          "10"], capture_output=True, text=True, timeout=60)
  return probe.returncode == 0 and "jax" in probe.stdout


@pytest.mark.parametrize("extra", ["cuda12", "cuda13", "tpu"])
def test_the_accelerator_extras_resolve(extra, tmp_path):
  """pip resolves each extra against the pinned CPU set (a dry run: nothing is installed)."""
  if not _index_reachable():
    pytest.skip("the package index cannot be reached from here: the extras' resolution is not checked")
  (requirement,) = requirements(extra)
  report = tmp_path / "report.json"
  result = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                           "--report", str(report), "-c", str(ROOT / "constraints.txt"), str(requirement)],
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  chosen = {item["metadata"]["name"]: item["metadata"]["version"] for item in json.loads(report.read_text())["install"]}
  assert chosen["jax"] == str(pins()["jax"]) and chosen["jaxlib"] == str(pins()["jaxlib"])
  plugin = {"cuda12": "jax-cuda12-plugin", "cuda13": "jax-cuda13-plugin", "tpu": "libtpu"}[extra]
  assert plugin in chosen, sorted(chosen)


def test_the_wheel_ships_the_data_files_and_the_licences(tmp_path):
  """A non-editable install gets what the package reads at run time (md4_jax/data/assets) and the licences."""
  if not _index_reachable():
    pytest.skip("the package index cannot be reached from here: the build's setuptools cannot be fetched")
  built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(ROOT)],
                         capture_output=True, text=True, timeout=600)
  assert built.returncode == 0, built.stderr[-3000:]
  (wheel,) = tmp_path.glob("md4_jax-*.whl")
  names = set(zipfile.ZipFile(wheel).namelist())
  for asset in ("gpt2.tiktoken", "digits.csv.gz", "enwiki_excerpt.xml.bz2", "LICENSE.gpt2", "LICENSE.digits",
                "LICENSE.enwiki", "README.md"):
    assert f"md4_jax/data/assets/{asset}" in names, asset
  licences = {name.rsplit("/licenses/", 1)[-1] for name in names if "/licenses/" in name}
  assert {"LICENSE", "NOTICE", "md4_jax/data/assets/LICENSE.gpt2"} <= licences, licences


def test_a_fresh_venv_with_the_plain_install_runs_gpt2(tmp_path, corpus_file):
  """The README's plain install, alone in a new venv (no test extra, no mlx-whisper): pip finds nothing broken,
  none of the packages the data files used to come from is there, and a GPT-2-tokenized run trains and samples
  (its BPE file ships with the package)."""
  if not _index_reachable():
    pytest.skip("the package index cannot be reached from here: a fresh install is not possible")
  venv = tmp_path / "venv"
  subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
  python = str(venv / "bin" / "python")
  install = subprocess.run([python, "-m", "pip", "install", "-q", "-e", str(ROOT), "-c", str(ROOT / "constraints.txt")],
                           capture_output=True, text=True, timeout=1200)
  assert install.returncode == 0, install.stderr[-3000:]
  check = subprocess.run([python, "-m", "pip", "check"], capture_output=True, text=True, timeout=300)
  assert check.returncode == 0, check.stdout + check.stderr
  listed = subprocess.run([python, "-m", "pip", "list", "--format=json"], capture_output=True, text=True, timeout=300)
  installed = {canonicalize_name(item["name"]) for item in json.loads(listed.stdout)}
  assert not installed & {"mlx-whisper", "gensim", "scikit-learn", "clu", "wandb", "pytest"}, installed
  run = [python, str(ROOT / "launch.py"), "--config", str(ROOT / "tests/tiny_config.py"), "--workdir",
         str(tmp_path / "run"), f"--config.data.path={corpus_file}", "--config.data.tokenizer=gpt2",
         "--config.train.num_steps=2", "--config.train.eval_every=2", "--config.train.checkpoint_every=2"]
  trained = subprocess.run(run, cwd=tmp_path, capture_output=True, text=True, timeout=600)
  assert trained.returncode == 0, trained.stderr[-3000:]
  sampled = subprocess.run([*run, "--mode=sample", "--prompt=The cat"], cwd=tmp_path, capture_output=True, text=True,
                           timeout=600)
  assert sampled.returncode == 0, sampled.stderr[-3000:]
  tokenizer = json.loads((tmp_path / "run" / "tokenizer.json").read_text())
  assert tokenizer["kind"] == "gpt2" and tokenizer["bpe_path"].endswith("md4_jax/data/assets/gpt2.tiktoken")
  assert "=== sample 0 ===\nThe cat" in sampled.stdout


@pytest.mark.parametrize("jax_version, flax_version, problem", [
    ("0.10.2", "0.12.8", None),
    ("0.11.2", "0.12.10", None),
    ("0.11.2", "0.12.8", "flax 0.12.8 does not work with jax 0.11.2"),
    ("0.11.0", "0.12.9", "pip install 'flax>=0.12.10,<0.13'"),
])
def test_a_flax_that_does_not_match_jax_is_named(monkeypatch, jax_version, flax_version, problem):
  versions = {"jax": jax_version, "flax": flax_version}
  monkeypatch.setattr(importlib.metadata, "version", lambda name: versions[name])
  message = platform_check.version_problem()
  assert message is None if problem is None else problem in message


@pytest.mark.parametrize("jax_version, warned", [("0.10.2", False), ("0.11.9", False), ("0.12.0", True),
                                                 ("0.9.2", True)])
def test_a_jax_outside_the_range_is_warned_about(monkeypatch, jax_version, warned):
  monkeypatch.setattr(importlib.metadata, "version", lambda name: jax_version)
  assert (platform_check.untested_jax() is not None) == warned


def fake_nvidia_smi(directory, listed: bool):
  """An nvidia-smi that lists one H200 (or fails, as it does where the driver cannot talk to a GPU)."""
  directory.mkdir()
  script = directory / "nvidia-smi"
  script.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H200 (UUID: GPU-0)'\n" if listed else
                    "#!/bin/sh\necho 'NVIDIA-SMI has failed'\nexit 9\n")
  script.chmod(0o755)
  return {**os.environ, "PATH": f"{directory}{os.pathsep}{os.environ['PATH']}"}


@pytest.mark.parametrize("listed", [True, False])
def test_a_visible_gpu_with_a_cpu_only_jax_is_one_warning(tmp_path, listed):
  env = fake_nvidia_smi(tmp_path / "bin", listed)
  result = subprocess.run([sys.executable, str(ROOT / "launch.py"), "--config", str(ROOT / "configs/quickstart.py"),
                           "--mode=params"], cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.startswith("jax ") and " on cpu: " in result.stdout.splitlines()[0]
  warning = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
  if listed:
    assert len(warning) == 1 and "has a GPU, but JAX runs on the CPU" in warning[0]
    assert 'pip install -e ".[cuda12]"' in warning[0]
  else:
    assert not warning, result.stderr


def test_start_up_names_the_backend_and_devices():
  result = launch("--config", ROOT / "configs/quickstart.py", "--mode=params")
  first = result.stdout.splitlines()[0]
  assert first.startswith(f"jax {importlib.metadata.version('jax')} on cpu: 1 device (cpu)"), first
