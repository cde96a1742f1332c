from __future__ import annotations

from pathlib import Path

import pytest

from hangar.config.settings import ServerSettings, load_settings
from hangar.errors import ConfigError


def test_precedence_defaults_file_env_flags(tmp_path: Path) -> None:
    file = tmp_path / "server.toml"
    file.write_text('listen_port = 9000\nlisten_host = "0.0.0.0"\nlog_level = "debug"\n')
    env = {"HANGAR_LISTEN_PORT": "9100", "HANGAR_LOG_LEVEL": "warning"}
    s = load_settings(
        ServerSettings,
        file=file,
        environ=env,
        flags={"data_dir": tmp_path, "listen_port": 9200, "log_level": None},
    )
    assert s.listen_port == 9200  # flag beats env and file
    assert s.log_level == "warning"  # env beats file; an unset flag hides nothing
    assert s.listen_host == "0.0.0.0"  # file beats default
    assert s.audit_checkpoint_every == 100  # default


def test_defaults_derive_from_the_data_dir(tmp_path: Path) -> None:
    s = load_settings(ServerSettings, environ={}, flags={"data_dir": tmp_path})
    assert s.effective_database_url == f"sqlite:///{tmp_path / 'hangar.db'}"
    assert s.effective_kek_file == tmp_path / "kek.key"


def test_unknown_key_in_file_is_named(tmp_path: Path) -> None:
    file = tmp_path / "server.toml"
    file.write_text("listen_prot = 1\n")
    with pytest.raises(ConfigError, match=r"server.toml: unknown setting 'listen_prot'"):
        load_settings(ServerSettings, file=file, environ={}, flags={"data_dir": tmp_path})


def test_bad_env_value_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="HANGAR_LISTEN_PORT"):
        load_settings(
            ServerSettings, environ={"HANGAR_LISTEN_PORT": "http"}, flags={"data_dir": tmp_path}
        )


def test_list_setting_from_env(tmp_path: Path) -> None:
    s = load_settings(
        ServerSettings,
        environ={"HANGAR_TLS_HOSTNAMES": '["api.example.com"]'},
        flags={"data_dir": tmp_path},
    )
    assert s.tls_hostnames == ["api.example.com"]
