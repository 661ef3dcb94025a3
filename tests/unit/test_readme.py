"""The README's configuration table names every variable the services read."""

from pathlib import Path

import pytest
from pydantic_settings import BaseSettings

from services.common.settings import KafkaSettings, StreamSettings
from tests.stage_settings import settings_classes

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
SHARED = set(StreamSettings.model_fields)  # documented once, as <SERVICE>_NAME


def variables(settings: type[BaseSettings]) -> list[str]:
    prefix = str(settings.model_config.get("env_prefix", ""))
    names = []
    for name, field in settings.model_fields.items():
        if name == "kafka":
            continue
        alias = field.validation_alias
        names.append(alias if isinstance(alias, str) else f"{prefix}{name}".upper())
    return names


@pytest.mark.parametrize("settings", [KafkaSettings, *settings_classes().values()])
def test_every_variable_is_in_the_configuration_table(settings: type[BaseSettings]) -> None:
    prefix = str(settings.model_config.get("env_prefix", ""))
    missing = []
    for name in variables(settings):
        generic = "<SERVICE>_" + name.removeprefix(prefix)
        shared = name.removeprefix(prefix).lower() in SHARED and generic in README
        if f"`{name}`" not in README and name not in README and not shared:
            missing.append(name)
    assert not missing, f"README's configuration table lacks {missing}"
