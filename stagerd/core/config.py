"""Configuration shared by the daemon and the client.

A TOML file is looked for, in order, at ``--config`` (passed in as
``path``), ``$STAGERD_CONFIG``, the per-user config dir
(``~/.config/stagerd/stagerd.toml``) and ``/etc/stagerd/stagerd.toml``. With
no file at all the embedded default applies: a SQLite database and a local
object directory under the state dir, and a socket in the runtime dir. Root
uses the system locations (``/run/stagerd``, ``/var/lib/stagerd``) so that a
systemd service and its users agree without any file.

Values are kept as nested dicts, addressed with dotted keys::

    cfg["database.url"]          -> "sqlite:////var/lib/stagerd/lab.db"
    cfg["stores.raw.url"]        -> "file:///data/raw"
"""

from __future__ import annotations

import copy
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import platformdirs

from stagerd.core.errors import ConfigError

__all__ = ["Config", "StoreConfig", "load", "search_paths", "default_values"]

APP = "stagerd"
ENV_VAR = "STAGERD_CONFIG"
LOG_LEVELS = ("debug", "info", "warning", "error")


def _is_root() -> bool:
    return os.geteuid() == 0


def default_values() -> dict[str, Any]:
    """The embedded default: works with no file and no setup."""
    if _is_root():
        runtime = Path("/run/stagerd")
        state = Path("/var/lib/stagerd")
    else:
        runtime = Path(platformdirs.user_runtime_dir(APP))
        state = Path(platformdirs.user_state_dir(APP))
        if not runtime.parent.is_dir():
            # No per-user runtime dir (no XDG_RUNTIME_DIR, no logind session):
            # keep the socket beside the state, where the user may write.
            runtime = state / "run"
    return {
        "daemon": {
            "socket": str(runtime / "stagerd.sock"),
            "state_dir": str(state),
            "socket_group": "stagerd",
            "log_level": "info",
            "history_days": 30,
        },
        "database": {"url": f"sqlite:///{state / 'lab.db'}"},
        "stores": {"default": {"url": f"file://{state / 'objects'}"}},
    }


def search_paths(path: str | os.PathLike | None = None) -> list[Path]:
    """Where a config file is looked for, first match wins."""
    if path is not None:
        return [Path(path)]
    if os.environ.get(ENV_VAR):
        return [Path(os.environ[ENV_VAR])]
    return [
        Path(platformdirs.user_config_dir(APP)) / "stagerd.toml",
        Path("/etc/stagerd/stagerd.toml"),
    ]


@dataclass(frozen=True)
class StoreConfig:
    """One named object store: an fsspec URL and its filesystem options."""

    name: str
    url: str
    options: dict[str, Any]


class Config:
    """Merged configuration: the embedded default overlaid with a file.

    ``source`` names the file that was read, or is None when only the
    default applies; ``searched`` lists every place that was looked at, so
    an error can say where a missing setting was expected.
    """

    def __init__(
        self,
        values: dict[str, Any],
        source: Path | None = None,
        searched: list[Path] | None = None,
    ) -> None:
        self.values = values
        self.source = source
        self.searched = list(searched or [])

    # Dotted-key access, like ``dj.config["stores.default"]``.

    def __getitem__(self, key: str) -> Any:
        node: Any = self.values
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                raise KeyError(key)
            node = node[part]
        return node

    def __setitem__(self, key: str, value: Any) -> None:
        parts = key.split(".")
        node = self.values
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(
                    f"config key {key!r}: {part!r} holds {child!r}, not a table"
                )
            node = child
        node[parts[-1]] = value

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def copy(self) -> Config:
        return Config(copy.deepcopy(self.values), self.source, self.searched)

    @property
    def where(self) -> str:
        """Where this configuration came from, for error messages."""
        if self.source is not None:
            return f"config file {self.source}"
        places = ", ".join(str(p) for p in self.searched) or "nowhere"
        return f"the embedded default (no config file found; looked at {places})"

    # Typed views of the sections.

    @property
    def socket_path(self) -> Path:
        return Path(self["daemon.socket"])

    @property
    def state_dir(self) -> Path:
        return Path(self["daemon.state_dir"])

    @property
    def socket_group(self) -> str:
        """The group that may connect to a socket the daemon binds itself."""
        group = self["daemon.socket_group"]
        if not isinstance(group, str) or not group:
            raise ConfigError(
                f"daemon.socket_group in {self.where} must be a group name, "
                f"found {group!r}"
            )
        return group

    @property
    def log_level(self) -> str:
        level = self["daemon.log_level"]
        if not isinstance(level, str) or level.lower() not in LOG_LEVELS:
            raise ConfigError(
                f"daemon.log_level in {self.where} must be one of "
                f"{', '.join(LOG_LEVELS)}, found {level!r}"
            )
        return level.lower()

    @property
    def history_days(self) -> float:
        """How long decided intents stay in the log before they are pruned."""
        days = self["daemon.history_days"]
        if isinstance(days, bool) or not isinstance(days, (int, float)) or days <= 0:
            raise ConfigError(
                f"daemon.history_days in {self.where} must be a positive number "
                f"of days, found {days!r}"
            )
        return float(days)

    @property
    def database_url(self) -> str:
        return str(self["database.url"])

    @property
    def database_password_file(self) -> str | None:
        return self.get("database.password_file")

    def store(self, name: str) -> StoreConfig:
        """The store called ``name``, following ``default = "other"`` aliases."""
        stores = self.get("stores", {})
        seen = [name]
        entry = stores.get(name)
        while isinstance(entry, str):
            if entry in seen:
                raise ConfigError(
                    f"stores.{name}: aliases form a loop ({' -> '.join(seen)}) "
                    f"in {self.where}"
                )
            seen.append(entry)
            entry = stores.get(entry)
        if entry is None:
            raise ConfigError(
                f"store {seen[-1]!r} is not configured: add a [stores.{seen[-1]}] "
                f"table with a url to {self.where}"
            )
        if not isinstance(entry, dict) or not isinstance(entry.get("url"), str):
            raise ConfigError(
                f"stores.{seen[-1]} in {self.where} needs a string 'url', "
                f"found {entry!r}"
            )
        options = entry.get("options", {})
        if not isinstance(options, dict):
            raise ConfigError(
                f"stores.{seen[-1]}.options in {self.where} must be a table, "
                f"found {options!r}"
            )
        return StoreConfig(seen[-1], entry["url"], dict(options))


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def load(path: str | os.PathLike | None = None) -> Config:
    """Read the configuration, falling back to the embedded default.

    An explicitly named file (``path`` or ``$STAGERD_CONFIG``) must exist;
    the usual locations are optional.
    """
    explicit = path is not None or bool(os.environ.get(ENV_VAR))
    candidates = search_paths(path)
    values = default_values()

    for candidate in candidates:
        if not candidate.exists():
            continue
        try:
            with open(candidate, "rb") as f:
                data = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {candidate}: {e}") from e
        except OSError as e:
            raise ConfigError(f"config file {candidate}: cannot read: {e}") from e
        return Config(_merge(values, data), candidate, candidates)

    if explicit:
        raise ConfigError(f"config file {candidates[0]} does not exist")
    return Config(values, None, candidates)
