"""The daily HTML report opened in a real headless Chromium: the charts drew,
the figures are the workload's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CliRunner
from tests.reports.browser import browser
from tests.reports.workload import ERROR, Day, make_day

pytestmark = [pytest.mark.slow, pytest.mark.integration]

CHARTS = [
    "hours",
    "durations",
    "cost-by-agent",
    "tokens-by-agent",
    "cost-by-model",
    "tokens-by-model",
    "failures",
]
GREEN, RED, BLUE = (0x2E, 0x7D, 0x32), (0xC6, 0x28, 0x28), (0x3F, 0x6F, 0xB5)
RECTS_JS = """JSON.stringify([...document.querySelectorAll('figure.chart')].map(f => {
  const r = f.querySelector('svg').getBoundingClientRect();
  return {name: f.dataset.chart, empty: f.querySelector('svg').classList.contains('empty'),
          x: r.left + scrollX, y: r.top + scrollY, w: r.width, h: r.height};
}))"""


def _near(pixel: tuple[int, ...], colour: tuple[int, int, int], tol: int = 40) -> bool:
    return all(abs(a - b) <= tol for a, b in zip(pixel[:3], colour, strict=True))


def _region(image: Any, rect: dict[str, float]) -> list[tuple[int, ...]]:
    box = (int(rect["x"]), int(rect["y"]), int(rect["x"] + rect["w"]), int(rect["y"] + rect["h"]))
    data = image.crop(box).convert("RGB").tobytes()
    return [tuple(data[i : i + 3]) for i in range(0, len(data), 3)]


@pytest.fixture
def day(home: Path) -> Day:
    return make_day()


def test_html_report_draws_every_chart_in_a_real_browser(
    cli: CliRunner, day: Day, tmp_path: Path
) -> None:
    from PIL import Image

    page_path = tmp_path / "report.html"
    cli("report", "daily", "--format", "html", "--output", str(page_path))
    html = page_path.read_text()
    assert "<script" not in html and "http://" not in html.replace("http://www.w3.org", "")

    with browser(tmp_path) as page:
        page.open(page_path.as_uri())
        rects = json.loads(page.evaluate(RECTS_JS))
        shot = page.screenshot(tmp_path / "report.png")
        kpis = page.evaluate(
            "Object.fromEntries([...document.querySelectorAll('.kpi')]"
            ".map(k => [k.querySelector('span').textContent, k.querySelector('b').textContent]))"
        )
        errors = page.evaluate(
            "[...document.querySelectorAll('h2')].find(h => h.textContent === 'Top errors')"
            ".nextElementSibling.innerText"
        )
        pdf = page.pdf()

    assert [r["name"] for r in rects] == CHARTS
    image = Image.open(shot)
    for rect in rects:
        assert not rect["empty"], rect["name"]
        assert rect["w"] > 200 and rect["h"] > 40, rect
        pixels = _region(image, rect)
        inked = sum(1 for p in pixels if sum(p[:3]) < 3 * 235)
        assert inked / len(pixels) > 0.01, f"chart {rect['name']} is blank"
    hours = _region(image, rects[0])
    assert sum(_near(p, GREEN) for p in hours) > 50 and sum(_near(p, RED) for p in hours) > 50
    assert sum(_near(p, RED) for p in _region(image, rects[-1])) > 50  # the failure dots
    assert sum(_near(p, BLUE) for p in _region(image, rects[1])) > 50  # duration bars

    assert kpis["Tasks"] == str(day.total) and kpis["Failed"] == str(len(day.failed))
    assert kpis["Dead letters"] == "1" and kpis["Success rate"] == "66.7%"
    assert ERROR in errors and all(task_id[-8:] in errors for task_id in day.failed)
    assert pdf.startswith(b"%PDF") and len(pdf) > 10_000


def test_html_report_of_an_empty_day_says_no_data_instead_of_drawing(
    cli: CliRunner, home: Path, tmp_path: Path
) -> None:
    page_path = tmp_path / "empty.html"
    cli("report", "daily", "--date", "2001-01-01", "-f", "html", "-o", str(page_path))
    html = page_path.read_text()
    assert html.count("class='empty'") == len(CHARTS) and "None" not in html


def test_a_missing_chromium_skips_on_a_laptop_and_fails_with_ci_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.reports.browser import chromium_path

    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        chromium_path()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="apt-get install chromium"):
        chromium_path()
