"""Campaign files on disk: directories listed, files read within the size limit, the path
as the name of every ``file:line:col`` message (``worker.decide.rule_files``). What the text says
is checked in ``tests/triggers/test_campaign_text.py``."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.triggers.test_campaign_text import (
    GOOD,
    TEMPLATES,
    Spot,
    assert_issue,
    edit,
    map_bomb,
    measured,
    spot,
)
from triggers.lint_issues import LintIssue, RuleSetError
from triggers.rule_set import RuleSet
from triggers.yaml_source import MAX_YAML_BYTES
from worker.decide.rule_files import campaign_files, load_definitions, load_rule_set

REPO = Path(__file__).resolve().parents[3]


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def only_issue(tmp_path: Path, text: str, name: str = "campaign.yaml") -> LintIssue:
    path = write(tmp_path, name, text)
    with pytest.raises(RuleSetError) as caught:
        load_rule_set([path], template_names=TEMPLATES)
    assert len(caught.value.issues) == 1, caught.value
    issue = caught.value.issues[0]
    assert issue.file == str(path)
    return issue


def test_demo_campaigns_load_cleanly_with_the_real_templates() -> None:
    templates_dir = REPO / "templates"
    names = {
        path.name
        for path in templates_dir.iterdir()
        if path.is_dir() and not path.name.startswith("_") and (path / "subject.txt").exists()
    }
    campaigns_dir = REPO / "config" / "campaigns"
    files = sorted(campaigns_dir.glob("*.yaml"))
    assert files, "the demo campaigns must exist"

    rules = load_rule_set([campaigns_dir], template_names=names)

    assert sorted(c.source for c in rules.campaigns) == [str(f) for f in files]
    assert len({c.id for c in rules.campaigns}) == len(files)


def test_campaign_files_takes_yaml_and_yml_sorted(tmp_path: Path) -> None:
    for name in ("b.yaml", "a.yml", "c.txt", "README.md", "d.YAML.bak"):
        write(tmp_path, name, "")
    assert [p.name for p in campaign_files([tmp_path])] == ["a.yml", "b.yaml"]


# --- broken files: exact file:line:col and code --------------------------------------------


def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: Promoție\n".encode("utf-16"))
    with pytest.raises(RuleSetError) as caught:
        load_rule_set([path])
    assert [i.code for i in caught.value.issues] == ["unreadable"]


def test_issue_text_format(tmp_path: Path) -> None:
    text = edit("priority: 80", "priorty: 80")
    issue = only_issue(tmp_path, text)
    at = spot(text, "priorty")
    assert str(issue) == (
        f"{tmp_path / 'campaign.yaml'}:{at.line}:{at.col}: error[unknown-key] priorty: "
        "unknown key 'priorty'; did you mean 'priority'?"
    )


def test_one_bad_file_fails_the_whole_rule_set(tmp_path: Path) -> None:
    write(tmp_path, "a-good.yaml", GOOD)
    write(
        tmp_path,
        "b-bad.yaml",
        edit(
            "id: laptop-accessories",
            "id: second",
            edit("field: event.total,", "field: event.totl,"),
        ),
    )
    write(tmp_path, "c-good.yaml", edit("id: laptop-accessories", "id: third"))

    with pytest.raises(RuleSetError) as caught:
        load_rule_set([tmp_path], template_names=TEMPLATES)

    assert [(Path(i.file).name, i.code) for i in caught.value.issues] == [
        ("b-bad.yaml", "unknown-field")
    ]


def test_issues_from_several_files_come_in_file_order(tmp_path: Path) -> None:
    write(tmp_path, "b.yaml", edit("priority: 80", "priorty: 80"))
    write(tmp_path, "a.yaml", edit("kind: cross_sell", "kind: nope"))
    with pytest.raises(RuleSetError) as caught:
        load_rule_set([tmp_path])
    assert [Path(i.file).name for i in caught.value.issues] == ["a.yaml", "b.yaml"]


def test_an_empty_directory_is_an_empty_rule_set(tmp_path: Path) -> None:
    assert load_rule_set([tmp_path]) == RuleSet(())


# --- YAML 1.2, not 1.1 ------------------------------------------------------------------------


def test_a_file_over_the_size_limit_is_an_issue_before_it_is_parsed(tmp_path: Path) -> None:
    padding = "lines: [of, values, nobody, wants, to, parse]\n" * 100_000  # 4.5 MB
    path = write(tmp_path, "big.yaml", GOOD + padding)
    assert path.stat().st_size > MAX_YAML_BYTES
    issues, seconds, peak = measured(lambda: only_issue_of(path))
    assert isinstance(issues, list)
    (issue,) = issues
    assert seconds < 2 and peak < 2 * MAX_YAML_BYTES + 2**20  # only the limit's worth read
    assert_issue(issue, "yaml-too-large", Spot(1, 1))
    assert f"{path.stat().st_size:,}" in issue.message


def test_a_file_of_exactly_the_size_limit_loads(tmp_path: Path) -> None:
    filler = MAX_YAML_BYTES - len(GOOD.encode())
    path = write(tmp_path, "full.yaml", GOOD + "#" * (filler - 1) + "\n")
    assert path.stat().st_size == MAX_YAML_BYTES
    assert load_rule_set([path], template_names=TEMPLATES).campaigns


def only_issue_of(path: Path) -> list[LintIssue]:
    with pytest.raises(RuleSetError) as caught:
        load_rule_set([path], template_names=TEMPLATES)
    return list(caught.value.issues)


def test_segments_and_attributes_files_have_the_same_limits(tmp_path: Path) -> None:
    text, _total, _nodes = map_bomb(9, 10)
    segments = write(tmp_path, "segments.yaml", text)
    attributes = write(tmp_path, "attributes.yaml", "a: number\n" + "#" * MAX_YAML_BYTES)
    with pytest.raises(RuleSetError) as caught:
        load_definitions(attributes, segments)
    assert sorted((i.file, i.code) for i in caught.value.issues) == [
        (str(attributes), "yaml-too-large"),
        (str(segments), "yaml-aliases"),
    ]
