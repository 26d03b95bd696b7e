from pathlib import Path

import pytest

from orchestra_cli.engine.planner import RuleBasedPlanner
from orchestra_cli.engine.roles import known_capabilities, load_roles
from orchestra_cli.errors import ConfigError
from orchestra_cli.llm.prompts import PromptLibrary
from orchestra_cli.models import Task

CAPS = {"architecture", "design", "code", "infrastructure", "deploy", "review"}


def test_given_capability_is_a_leaf_without_planning() -> None:
    plan = RuleBasedPlanner().plan(Task(title="x", input="x", capability="review"), CAPS)
    assert not plan.decomposed and plan.capability == "review"


def test_one_kind_of_work_is_routed_to_that_capability() -> None:
    plan = RuleBasedPlanner().plan(Task(title="Fix the parser bug", input="fix it"), CAPS)
    assert plan.capability == "code" and not plan.decomposed


def test_unrecognised_work_goes_to_the_default_capability() -> None:
    plan = RuleBasedPlanner("code").plan(Task(title="hello", input="hello"), CAPS)
    assert plan.capability == "code" and "default" in plan.reason


def test_several_kinds_of_work_decompose_design_first_review_last() -> None:
    task = Task(title="Design and implement an API, deploy it", input="see title")
    plan = RuleBasedPlanner().plan(task, CAPS)
    caps = [s.capability for s in plan.subtasks]
    assert caps == ["architecture", "code", "infrastructure", "review"]
    assert plan.subtasks[1].depends_on == [0] and plan.subtasks[2].depends_on == [0]
    assert plan.subtasks[3].depends_on == [0, 1, 2]
    assert plan.alternatives


def test_builtin_roles_cover_the_four_roles_and_their_prompts_exist() -> None:
    roles = load_roles()
    assert {"architect", "coder", "infra", "reviewer"} <= set(roles)
    assert known_capabilities(roles) >= CAPS
    library = PromptLibrary()
    for role in roles.values():
        prefix, step = library.render_parts(
            role.prompt,
            tree_title="g",
            tree_input="gi",
            title="t",
            input="i",
            context="c",
            memory="m",
        )
        assert "{{" not in prefix + step
        # the tree's goal is the stable, cached prefix; the step's own text comes after it
        assert "gi" in prefix and "t" in step and "gi" not in step


def test_missing_prompt_variable_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="needs variable"):
        PromptLibrary().render("execute-coder", title="t")


def test_operator_prompt_directory_overrides_the_shipped_prompt(tmp_path: Path) -> None:
    (tmp_path / "execute-coder.md").write_text("---\nvariables: [title]\n---\nCustom {{title}}")
    assert PromptLibrary(tmp_path).render("execute-coder", title="X") == "Custom X"


def test_undeclared_variable_in_a_template_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "execute-coder.md").write_text("---\nvariables: []\n---\nHi {{name}}")
    with pytest.raises(ConfigError, match="undeclared"):
        PromptLibrary(tmp_path).get("execute-coder")


def test_operator_agent_definition_with_bad_field_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("name: bad\ncapabilities: []\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: capabilities"):
        load_roles(tmp_path)
