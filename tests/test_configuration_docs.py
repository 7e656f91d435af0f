"""Every setting is documented: the configuration reference names each environment variable Settings reads."""

from __future__ import annotations

from comfyq.settings import Settings
from tests.conftest import project_path


def test_every_setting_is_in_the_configuration_reference() -> None:
    text = project_path("docs", "configuration.md").read_text(encoding="utf-8")
    missing = []
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        env = alias.choices[0] if alias is not None else f"COMFYQ_{name.upper()}"  # type: ignore[union-attr]
        if f"`{env}`" not in text:
            missing.append(env)
    assert not missing, f"docs/configuration.md does not describe {missing}"
