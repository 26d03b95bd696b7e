"""Prompt templates: ``templates/prompts/<name>.md`` with declared variables.

A template starts with a front-matter block naming its variables::

    ---
    variables: [title, input]
    ---
    Do {{title}} with {{input}}.

A line ``<!-- cache -->`` splits a template into its stable prefix (the same
for every step of a task tree: sent first and cached) and the step's own part
(``render_parts``). A file of the same name in the configured ``prompts_dir``
overrides the shipped one, so operators can tune prompts without touching the
package.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from orchestra_cli.errors import ConfigError
from orchestra_cli.templates import templates_dir

_VAR = re.compile(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}")
CACHE_MARKER = "<!-- cache -->"


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    path: Path
    variables: tuple[str, ...]
    body: str

    def render(self, **values: object) -> str:
        missing = [v for v in self.variables if v not in values]
        if missing:
            raise ConfigError(
                f"prompt {self.name} ({self.path}) needs variable(s) {', '.join(missing)}",
                "pass them or remove them from the template's variables",
            )
        return _VAR.sub(lambda m: str(values.get(m.group(1), m.group(0))), self.body)

    def render_parts(self, **values: object) -> tuple[str, str]:
        """(the stable prefix, the rest): split at the ``<!-- cache -->`` line, if any."""
        text = self.render(**values)
        head, marker, tail = text.partition(f"\n{CACHE_MARKER}\n")
        return (head, tail) if marker else ("", text)


def _parse(name: str, path: Path) -> PromptTemplate:
    import yaml

    text = path.read_text(encoding="utf-8")
    variables: tuple[str, ...] = ()
    if text.startswith("---"):
        _, front, body = text.split("---", 2)
        meta = yaml.safe_load(front) or {}
        variables = tuple(meta.get("variables") or ())
        text = body.lstrip("\n")
    used = set(_VAR.findall(text))
    undeclared = used - set(variables)
    if undeclared:
        raise ConfigError(
            f"prompt {name} ({path}) uses undeclared variable(s) {', '.join(sorted(undeclared))}",
            "declare them in the template's front matter",
        )
    return PromptTemplate(name=name, path=path, variables=variables, body=text)


class PromptLibrary:
    """Finds templates in the override dir first, then in the shipped templates."""

    def __init__(self, override_dir: Path | None = None) -> None:
        if override_dir is not None and not override_dir.is_dir():
            raise ConfigError(
                f"prompts_dir {override_dir} is not a directory",
                "create it or fix prompts_dir (ORCHESTRA_PROMPTS_DIR)",
            )
        self.dirs = [d for d in (override_dir, templates_dir() / "prompts") if d is not None]
        self._cache: dict[str, PromptTemplate] = {}

    def get(self, name: str) -> PromptTemplate:
        if name not in self._cache:
            for d in self.dirs:
                path = d / f"{name}.md"
                if path.is_file():
                    self._cache[name] = _parse(name, path)
                    break
            else:
                raise ConfigError(
                    f"prompt template {name!r} not found in {', '.join(map(str, self.dirs))}",
                    f"create {name}.md in templates/prompts or your prompts_dir",
                )
        return self._cache[name]

    def render(self, name: str, **values: object) -> str:
        return self.get(name).render(**values)

    def render_parts(self, name: str, **values: object) -> tuple[str, str]:
        return self.get(name).render_parts(**values)
