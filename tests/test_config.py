"""Finding and reading the configuration."""

from __future__ import annotations

import pytest

import stagerd_client
from stagerd.core import config
from stagerd.core.errors import ConfigError


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    monkeypatch.delenv("STAGERD_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def test_search_order(clean_env, monkeypatch, tmp_path):
    user = tmp_path / "xdg" / "stagerd" / "stagerd.toml"
    assert config.search_paths()[0] == user
    assert config.search_paths()[-1].as_posix() == "/etc/stagerd/stagerd.toml"
    monkeypatch.setenv("STAGERD_CONFIG", str(tmp_path / "env.toml"))
    assert config.search_paths() == [tmp_path / "env.toml"]
    assert config.search_paths(tmp_path / "flag.toml") == [tmp_path / "flag.toml"]


def test_user_file_overrides_defaults(clean_env, tmp_path):
    user = tmp_path / "xdg" / "stagerd" / "stagerd.toml"
    user.parent.mkdir(parents=True)
    user.write_text('[stores.raw]\nurl = "file:///data/raw"\n'
                    '[stores.raw.options]\nauto_mkdir = false\n')
    cfg = config.load()
    assert cfg.source == user
    assert cfg.store("raw").options == {"auto_mkdir": False}
    assert cfg.store("default").url.startswith("file://")  # default kept
    assert cfg.database_url.startswith("sqlite:///")


def test_explicit_file_must_exist(clean_env, tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        config.load(tmp_path / "missing.toml")


def test_bad_toml_names_the_file(clean_env, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[daemon\n")
    with pytest.raises(ConfigError, match="bad.toml"):
        config.load(bad)


def test_default_may_name_another_store(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[stores]\ndefault = "raw"\n[stores.raw]\nurl = "file:///r"\n')
    store = config.load(path).store("default")
    assert (store.name, store.url) == ("raw", "file:///r")


def test_alias_loop_and_unknown_store(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[stores]\ndefault = "a"\na = "default"\n')
    cfg = config.load(path)
    with pytest.raises(ConfigError, match="loop"):
        cfg.store("default")
    with pytest.raises(ConfigError, match=r"store 'nope' is not configured.*c\.toml"):
        cfg.store("nope")


def test_store_without_url(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[stores.raw]\noptions = {}\n")
    with pytest.raises(ConfigError, match="needs a string 'url'"):
        config.load(path).store("raw")


def test_client_overrides_in_code(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[database]\nurl = "sqlite:////a.db"\n')
    cfg = stagerd_client.config
    try:
        cfg.load(path)
        cfg["database.url"] = "sqlite:////b.db"
        cfg["stores.raw"] = {"url": "file:///raw"}
        assert cfg.database_url == "sqlite:////b.db"
        assert cfg.store("raw").url == "file:///raw"
        cfg.load(path)  # reloading drops the overrides
        assert cfg.database_url == "sqlite:////a.db"
    finally:
        cfg.load()
