"""Every campaign in the marketer's guide is a valid campaign: the docs cannot rot."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from worker.core.settings import PROJECT_ROOT, Settings
from worker.decide.rules import load_rules
from worker.email.rendering import Renderer

GUIDE = (PROJECT_ROOT / "docs" / "campaigns.md").read_text(encoding="utf-8")
CAMPAIGNS = [
    block
    for block in re.findall(r"```yaml\n(.*?)```", GUIDE, flags=re.DOTALL)
    if re.search(r"^id: ", block, flags=re.MULTILINE)
]


def test_the_guide_has_an_example_per_strategy() -> None:
    assert len(CAMPAIGNS) >= 7  # the annotated shape and six worked examples


@pytest.mark.parametrize("text", CAMPAIGNS, ids=lambda t: t.split("id: ")[1].split()[0])
def test_guide_example_lints(tmp_path: Path, text: str) -> None:
    (tmp_path / "example.yaml").write_text(text, encoding="utf-8")
    settings = Settings(var_dir=tmp_path / "var", campaigns_dir=tmp_path)
    rules = load_rules(settings, Renderer(settings))
    assert len(rules.campaigns) == 1
    assert [str(warning) for warning in rules.warnings] == []  # the guide teaches no warning
