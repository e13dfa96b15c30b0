"""YAML limits in the running worker: a bomb or an oversized file is a reported error,
the rules in force stay, and the complements file is read within the same limits."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from ruamel.yaml.nodes import MappingNode, ScalarNode, SequenceNode

from triggers.lint_issues import RuleSetError
from triggers.yaml_source import MAX_YAML_BYTES, MAX_YAML_NODES, graph_issue
from worker.core.settings import PROJECT_ROOT, Settings
from worker.decide.rules import RuleStore, load_complements

BOMB = 'l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n' + "".join(
    f"l{n}: &l{n} [{', '.join([f'*l{n - 1}'] * 9)}]\n" for n in range(1, 10)
)


def _settings(campaigns: Path, complements: Path | None = None) -> Settings:
    extra = {"complements_file": complements} if complements else {}
    return Settings(
        campaigns_dir=campaigns,
        templates_dir=PROJECT_ROOT / "templates",
        segments_file=PROJECT_ROOT / "config" / "segments.yaml",
        attributes_file=PROJECT_ROOT / "config" / "attributes.yaml",
        **extra,
    )


@pytest.mark.parametrize(
    ("broken", "code"),
    [(BOMB, "yaml-aliases"), ("# padding\n" * (MAX_YAML_BYTES // 10 + 1), "yaml-too-large")],
    ids=["alias-bomb", "too-large"],
)
def test_a_reload_onto_a_bomb_keeps_the_last_good_rules(
    tmp_path: Path, broken: str, code: str
) -> None:
    campaigns = tmp_path / "campaigns"
    campaigns.mkdir()
    good = campaigns / "laptop-accessories.yaml"
    shutil.copy(PROJECT_ROOT / "config" / "campaigns" / "laptop-accessories.yaml", good)
    store = RuleStore(_settings(campaigns), check_every=3600)
    rules = store.current()
    assert [c.id for c in rules.campaigns] == ["laptop-accessories"]

    good.write_text(broken, encoding="utf-8")
    store.request_reload()
    assert store.current() is rules  # the last good rules keep running
    assert store.reload_failures == 1
    assert store.last_error is not None and f"error[{code}]" in store.last_error


def test_the_complements_file_has_the_yaml_limits(tmp_path: Path) -> None:
    complements = tmp_path / "complements.yaml"
    complements.write_text(BOMB, encoding="utf-8")
    with pytest.raises(RuleSetError) as caught:
        load_complements(complements)
    assert [(i.file, i.code) for i in caught.value.issues] == [(str(complements), "yaml-aliases")]

    complements.write_text("laptops: [mice]\n" + "#" * MAX_YAML_BYTES, encoding="utf-8")
    with pytest.raises(RuleSetError) as caught:
        load_complements(complements)
    assert [i.code for i in caught.value.issues] == ["yaml-too-large"]

    complements.write_text("laptops: [mice, laptop-bags]\n", encoding="utf-8")
    assert load_complements(complements) == {"laptops": ["mice", "laptop-bags"]}


def _scalar(text: str) -> ScalarNode:
    return ScalarNode("tag:yaml.org,2002:str", text)


def test_a_document_that_large_without_aliases_is_too_large_not_an_alias_problem() -> None:
    """Built by hand: composing ~100,000 values from text takes ruamel seconds."""
    items = [_scalar(str(n)) for n in range(MAX_YAML_NODES)]
    listing = SequenceNode("tag:yaml.org,2002:seq", items)  # 1 + MAX_YAML_NODES values
    root = MappingNode("tag:yaml.org,2002:map", [(_scalar("a"), listing)])
    issue = graph_issue(root, "big.yaml")
    assert issue is not None and issue.code == "yaml-too-large"

    shared = _scalar("x")  # the same node listed many times: what an alias composes to
    aliased = SequenceNode("tag:yaml.org,2002:seq", [shared] * MAX_YAML_NODES)
    issue = graph_issue(MappingNode("tag:yaml.org,2002:map", [(_scalar("a"), aliased)]), "f")
    assert issue is not None and issue.code == "yaml-aliases"

    just_fits = SequenceNode("tag:yaml.org,2002:seq", items[:-1])  # exactly MAX_YAML_NODES
    assert graph_issue(just_fits, "f") is None


@pytest.mark.parametrize(
    ("text", "line", "col", "code_point"),
    [
        ("name: Rel\x1b[31m\x07ation\n", 1, 10, 0x1B),
        ("id: a\nname: Rel\x00x\n", 2, 10, 0x00),
        ("id: a\nname: \x7f\n", 2, 7, 0x7F),
        ("id: a\nname: x\ufffe\n", 2, 8, 0xFFFE),
    ],
)
def test_a_character_yaml_forbids_is_a_lint_issue_at_its_position(
    text: str, line: int, col: int, code_point: int
) -> None:
    """Control characters (ESC, BEL, NUL, DEL) and U+FFFE are not YAML: the file's lint
    issue says where and which, instead of ruamel's ReaderError escaping as a traceback."""
    from triggers.yaml_source import read_yaml

    document, issues = read_yaml(text, "c.yaml", "a campaign")
    assert document is None
    assert [(i.file, i.line, i.col, i.code) for i in issues] == [
        ("c.yaml", line, col, "yaml-syntax")
    ]
    assert f"U+{code_point:04X}" in issues[0].message
