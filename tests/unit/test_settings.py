from pathlib import Path

import pytest

from orchestra_cli.errors import ConfigError
from orchestra_cli.settings import load_settings, mask_url, read_dotenv, settings_rows


def test_defaults_are_embedded_sqlite_under_home(tmp_path: Path) -> None:
    loaded = load_settings(env={"ORCHESTRA_HOME": str(tmp_path)}, cwd=tmp_path)
    s = loaded.settings
    assert s.effective_state_url == f"sqlite:///{tmp_path}/orchestra.db"
    assert s.effective_broker_url == s.effective_state_url
    assert s.secrets_url == "env" and s.environment == "development"
    assert loaded.sources["home"] == "ORCHESTRA_HOME"


def test_environment_overrides_file_and_dotenv_with_nested_keys(tmp_path: Path) -> None:
    (tmp_path / "orchestra.yaml").write_text("llm:\n  offline:\n    latency_ms: 5\n")
    (tmp_path / ".env").write_text("ORCHESTRA_LLM__MODEL=from-dotenv\n")
    env = {"ORCHESTRA_LLM__OFFLINE__LATENCY_MS": "250"}
    loaded = load_settings(env=env, cwd=tmp_path)
    assert loaded.settings.llm.offline.latency_ms == 250
    assert loaded.settings.llm.model == "from-dotenv"
    assert loaded.sources["llm.offline.latency_ms"] == "ORCHESTRA_LLM__OFFLINE__LATENCY_MS"
    assert loaded.sources["llm.model"].startswith(".env")
    assert loaded.config_file == tmp_path / "orchestra.yaml"


def test_unknown_key_names_the_file_and_the_key(tmp_path: Path) -> None:
    (tmp_path / "orchestra.yaml").write_text("llm:\n  modle: x\n")
    with pytest.raises(ConfigError, match=r"orchestra.yaml: unknown key 'llm.modle'"):
        load_settings(env={}, cwd=tmp_path)


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    (tmp_path / "orchestra.yaml").write_text("llm:\n  model: [unclosed\n")
    with pytest.raises(ConfigError, match=r"orchestra.yaml:\d+"):
        load_settings(env={}, cwd=tmp_path)


def test_invalid_yaml_in_an_agent_definition_names_the_line(tmp_path: Path) -> None:
    from orchestra_cli.engine.roles import load_roles

    (tmp_path / "x.yaml").write_text("name: x\n  bad: [\n")
    with pytest.raises(ConfigError, match=r"x.yaml:2: "):
        load_roles(tmp_path)


def test_invalid_value_names_the_field_and_its_source(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"ORCHESTRA_AGENTS__CONCURRENCY: agents\.concurrency"):
        load_settings(env={"ORCHESTRA_AGENTS__CONCURRENCY": "lots"}, cwd=tmp_path)


def test_explicit_config_path_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(config=str(tmp_path / "missing.yaml"), env={}, cwd=tmp_path)


def test_orchestra_env_selects_the_environment(tmp_path: Path) -> None:
    loaded = load_settings(env={"ORCHESTRA_ENV": "production"}, cwd=tmp_path)
    assert loaded.settings.environment == "production"


def test_secret_like_env_vars_are_not_mistaken_for_settings(tmp_path: Path) -> None:
    loaded = load_settings(env={"ORCHESTRA_API_TOKEN": "x" * 20}, cwd=tmp_path)
    assert "api_token" not in loaded.sources


def test_urls_are_shown_with_the_password_masked(tmp_path: Path) -> None:
    assert mask_url("amqp://guest:secret@127.0.0.1:5672/") == "amqp://guest:***@127.0.0.1:5672/"
    assert mask_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    env = {"ORCHESTRA_BROKER_URL": "amqp://u:hunter22@h:5672/"}
    rows = {k: v for k, v, _ in settings_rows(load_settings(env=env, cwd=tmp_path))}
    assert rows["broker_url"] == "amqp://u:***@h:5672/"


def test_dotenv_parser_handles_quotes_comments_and_export(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    path.write_text("# c\nexport A=1\nB='two words'\nC=\"x\" \nD=val # note\n\n")
    assert read_dotenv(path) == {"A": "1", "B": "two words", "C": "x", "D": "val"}
    path.write_text("NOT A LINE\n")
    with pytest.raises(ConfigError, match=r"\.env:1: expected KEY=value"):
        read_dotenv(path)


@pytest.mark.parametrize(
    ("name", "meant"),
    [
        ("ORCHESTRA_STATE_ULR", "ORCHESTRA_STATE_URL"),
        ("ORCHESTRA_BROKER_RUL", "ORCHESTRA_BROKER_URL"),
        ("ORCHESTRA_RABITMQ__QUEUE_PREFIX", "ORCHESTRA_RABBITMQ__QUEUE_PREFIX"),
    ],
)
def test_a_variable_one_typo_from_a_setting_is_refused_with_the_name_it_meant(
    tmp_path: Path, name: str, meant: str
) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(env={name: "redis://127.0.0.1:6379/0"}, cwd=tmp_path)
    assert exc.value.message == f"{name} is not a setting: did you mean {meant}?"


def test_other_orchestra_variables_are_left_alone(tmp_path: Path) -> None:
    env = {"ORCHESTRA_CONFIG_NOTE": "x", "ORCHESTRA_TEST_REDIS_PORT": "1", "ORCHESTRA_X": "y"}
    assert load_settings(env=env, cwd=tmp_path).sources == {}


def test_a_clash_between_two_settings_names_the_variable_that_made_it(tmp_path: Path) -> None:
    env = {"ORCHESTRA_SERVICES__VAULT_PORT": "18300", "ORCHESTRA_SERVICES__REDIS_PORT": "16672"}
    with pytest.raises(ConfigError) as exc:
        load_settings(env=env, cwd=tmp_path)
    assert exc.value.message.startswith("ORCHESTRA_SERVICES__REDIS_PORT: services: redis_port")
