"""The data files that ship with the package, their licences, and the package's own licence."""

import hashlib
import importlib.metadata
import re
import tomllib

import pytest

from md4_jax.data import corpora, shipped
from md4_jax.errors import UserError
from tests.conftest import ROOT


@pytest.mark.parametrize("name", sorted(shipped.SHA256))
def test_each_shipped_file_is_there_whole_with_its_licence_and_listed(name):
  assert hashlib.sha256(shipped.path(name).read_bytes()).hexdigest() == shipped.SHA256[name]
  licence = {"gpt2.tiktoken": "LICENSE.gpt2", "digits.csv.gz": "LICENSE.digits",
             "enwiki_excerpt.xml.bz2": "LICENSE.enwiki"}[name]
  assert name in (shipped.ASSETS / licence).read_text()
  row = next(line for line in (shipped.ASSETS / "README.md").read_text().splitlines() if f"`{name}`" in line)
  assert shipped.SHA256[name] in row and licence in row
  assert name in (ROOT / "NOTICE").read_text()


def test_a_damaged_embedded_corpus_is_named_not_read(tmp_path, monkeypatch):
  damaged = tmp_path / "enwiki_excerpt.xml.bz2"
  damaged.write_bytes(shipped.path("enwiki_excerpt.xml.bz2").read_bytes()[:1000])
  monkeypatch.setattr(shipped, "ASSETS", tmp_path)
  shipped.read_bytes.cache_clear()
  corpora.embedded_wikipedia.cache_clear()
  try:
    with pytest.raises(UserError, match=f"{re.escape(str(damaged))}, which ships with md4-jax, is damaged"):
      corpora.embedded_wikipedia()
  finally:
    shipped.read_bytes.cache_clear()
    corpora.embedded_wikipedia.cache_clear()


def test_the_package_is_apache_2_and_says_so_in_its_metadata():
  assert "Apache License" in (ROOT / "LICENSE").read_text() and "Version 2.0" in (ROOT / "LICENSE").read_text()
  project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
  assert project["license"] == "Apache-2.0"
  metadata = importlib.metadata.metadata("md4-jax")  # what pip installed from pyproject.toml
  assert metadata["License-Expression"] == "Apache-2.0"
  assert {"LICENSE", "NOTICE", "md4_jax/data/assets/LICENSE.gpt2"} <= set(metadata.get_all("License-File"))


def test_no_install_dependency_is_there_only_for_a_data_file():
  """gensim, scikit-learn and mlx-whisper were installed for one file each; clu was imported by nothing."""
  project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
  names = {re.split(r"[\[<>=!~ ]", requirement, maxsplit=1)[0].lower() for requirement in project["dependencies"]}
  assert not names & {"gensim", "scikit-learn", "mlx-whisper", "clu"}
