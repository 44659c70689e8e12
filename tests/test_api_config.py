"""The [api] section of a station file."""

from __future__ import annotations

from pathlib import Path

import pytest

from base.config import load_station
from base.loading import ConfigError
from base.stationsettings import ApiSettings
from tests.conftest import station_files_on_free_ports


def test_the_api_section_is_checked(tmp_path: Path) -> None:
    """[api] loads into typed settings; bad fields are reported, each with its name."""
    path = station_files_on_free_ports(tmp_path)
    assert load_station(path).api is None
    text = path.read_text()
    path.write_text(
        text + '\n[api]\nport = 8099\ntoken_env = "MY_TOKEN"\nreads_need_token = true\n'
    )
    assert load_station(path).api == ApiSettings(
        port=8099, token_env="MY_TOKEN", reads_need_token=True
    )
    path.write_text(text + '\n[api]\nport = 99999\ntoken_env = "not a name"\ntoken = "x"\n')
    with pytest.raises(ConfigError) as err:
        load_station(path)
    problems = str(err.value)
    assert "api.port" in problems and "api.token_env" in problems and "api.token" in problems
