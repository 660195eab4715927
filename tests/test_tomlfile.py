"""harness.tomlfile: the one TOML loader (plans, claim specs, the tokenizer list) names the file."""

import pytest

from harness.errors import LoadError
from harness.tomlfile import load_toml
from harness.train.plan import PlanError


def test_errors_name_the_file_and_the_kind_of_file(tmp_path):
    good = tmp_path / "a.toml"
    good.write_text('x = 1\n[t]\ny = "z"\n', encoding="utf-8")
    assert load_toml(good) == {"x": 1, "t": {"y": "z"}}
    with pytest.raises(LoadError, match=r"nope\.toml: no such claim spec"):
        load_toml(tmp_path / "nope.toml", "claim spec")
    bad = tmp_path / "bad.toml"
    bad.write_text("[t\n", encoding="utf-8")
    with pytest.raises(PlanError, match=r"bad\.toml: invalid TOML"):
        load_toml(bad, "plan file", PlanError)
    latin = tmp_path / "latin.toml"
    latin.write_bytes('x = "caf\xe9"\n'.encode("latin-1"))
    with pytest.raises(LoadError, match=r"latin\.toml: not UTF-8"):
        load_toml(latin)
