"""Every daemon setting is documented where the keys are listed, and the backlog is checked."""
from __future__ import annotations

from pathlib import Path

import pytest

from ksi_daemon.config import ConfigError, DaemonSettings, load_config

ROOT = Path(__file__).resolve().parent.parent


def test_every_daemon_setting_is_in_the_configuration_table():
    table = (ROOT / "docs" / "PROTOCOL.md").read_text().split("## Configuration", 1)[1]
    missing = [name for name in DaemonSettings.model_fields if f"`daemon.{name}`" not in table]
    assert not missing, f"document these in docs/PROTOCOL.md#configuration: {missing}"


def test_the_listen_backlog_holds_a_burst_of_a_thousand_by_default(tmp_path):
    config, _ = load_config(str(_empty_config(tmp_path)), environ={})
    assert config["daemon"]["listen_backlog"] >= 1000


@pytest.mark.parametrize("value", ["0", "70000", "many"])
def test_a_listen_backlog_out_of_range_names_the_key_and_its_source(tmp_path, value):
    with pytest.raises(ConfigError, match="daemon.listen_backlog.*KSI_LISTEN_BACKLOG"):
        load_config(str(_empty_config(tmp_path)), environ={"KSI_LISTEN_BACKLOG": value})


def _empty_config(tmp_path: Path) -> Path:
    path = tmp_path / "daemon.json"
    path.write_text("{}")
    return path
