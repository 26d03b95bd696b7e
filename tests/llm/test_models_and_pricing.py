"""Model defaults, prices and provider selection."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from orchestra_cli.backends import open_llm, open_secrets
from orchestra_cli.engine.roles import RoleDefinition, load_roles
from orchestra_cli.errors import ConfigError
from orchestra_cli.llm.pricing import PriceTable
from orchestra_cli.models import Usage
from orchestra_cli.settings import LLMSettings, ModelPrice, Settings
from tests.support import clean_env, run_orchestra


def test_default_and_shipped_models_are_not_deprecated_in_the_sdk() -> None:
    from anthropic._data import DEPRECATED_MODELS

    models = {LLMSettings().model, RoleDefinition(name="x", capabilities=["c"]).model}
    models |= {role.model for role in load_roles().values()}
    assert not models & set(DEPRECATED_MODELS)


def test_cost_counts_input_output_and_cache_tokens_at_the_model_price() -> None:
    table = PriceTable({"claude-test": ModelPrice(input=2.0, output=10.0, cache_read=0.5)})
    usage = Usage(
        input_tokens=1_000_000,
        output_tokens=100_000,
        cache_read_tokens=2_000_000,
        cache_write_tokens=1_000_000,
    )
    # 2 + 1 + 1 (cache reads) + 2.5 (cache writes at 1.25 × input)
    assert table.cost("claude-test-1", usage) == pytest.approx(6.5)
    assert table.cost("offline/claude-sonnet-5-5", usage) == 0.0
    assert table.cost("claude-sonnet-5-5", Usage(output_tokens=1_000_000)) == 10.0


def test_unknown_model_is_counted_in_tokens_and_its_cost_reported_unknown() -> None:
    table = PriceTable()
    assert table.cost("mystery-model", Usage(output_tokens=1_000_000)) is None
    charged = table.charge("mystery-model", Usage(calls=2, output_tokens=5))
    assert charged.output_tokens == 5 and charged.unpriced_calls == 2


def test_auto_provider_is_anthropic_when_the_api_key_resolves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = Settings()
    assert open_llm(settings, open_secrets(settings)).name == "offline"
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-000000000")
    assert open_llm(settings, open_secrets(settings)).name == "anthropic"


def test_explicit_anthropic_without_a_key_is_a_config_error_naming_the_secret() -> None:
    settings = Settings(llm=LLMSettings(provider="anthropic"))
    with pytest.raises(ConfigError, match="ANTHROPIC_API_KEY"):
        open_llm(settings, open_secrets(settings))


def test_help_and_submit_do_not_import_anthropic_or_hvac(tmp_path: object) -> None:
    code = (
        "import sys\n"
        "from orchestra_cli.cli.main import run_cli\n"
        "run_cli(['task', 'submit', '-q', 'write a function'])\n"
        "bad = [m for m in ('anthropic', 'hvac') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    import subprocess
    from pathlib import Path

    home = Path(str(tmp_path)) / "h"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=clean_env({"ORCHESTRA_HOME": str(home), "ANTHROPIC_API_KEY": "sk-ant-x-00000000"}),
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    result = run_orchestra(["--help"], clean_env({"ORCHESTRA_HOME": str(home)}), home.parent)
    assert result.code == 0, result


def test_config_show_names_the_price_tables_date(tmp_path: Path) -> None:
    env = clean_env({"ORCHESTRA_HOME": str(tmp_path), "COLUMNS": "200"})
    shown = run_orchestra(["config", "show"], env, tmp_path)
    assert shown.code == 0, shown
    assert "built-in table of 2026-10-24" in shown.out
    data = run_orchestra(["--json", "config", "show"], env, tmp_path)
    table = json.loads(data.out)["price_table"]
    assert table["as_of"] == "2026-10-24"
    assert table["usd_per_million_tokens"]["claude-sonnet-5-5"]["output"] == 10.0
