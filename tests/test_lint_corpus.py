"""A corpus of broken campaign files, each with exactly one mistake a marketer could make.

Every file under ``tests/corpus/broken/`` states on its first line the one error lint must
report for it, as ``# expect: LINE:COL CODE [part of the message]`` (line and column of the
file as written, that comment included). An error located in another file (a template)
names it relative to the campaign file: ``# expect: ../templates/x/body.html:3:1 CODE``;
a file that must lint clean on its own says ``# expect: none``.

Campaigns are linted one at a time through the code path of ``crosssell lint``
(``worker.decide.rules.load_rules`` with the real renderer), against ``tests/corpus/templates/``
(the shipped templates plus one broken template) and the shipped segments and attributes.
``tests/corpus/definitions/`` does the same for broken ``segments.yaml`` and
``attributes.yaml`` files through ``triggers.definitions.load_definitions``.
"""

from __future__ import annotations

import atexit
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from triggers.lint_issues import LintIssue, RuleSetError
from worker.commands.cli import main
from worker.core.settings import PROJECT_ROOT, Settings, get_settings
from worker.decide.rule_files import load_definitions
from worker.decide.rules import load_rules
from worker.email.rendering import Renderer

CORPUS = Path(__file__).resolve().parent / "corpus"
BROKEN = CORPUS / "broken"
BROKEN_TEMPLATES = CORPUS / "templates"  # only the broken template lives in the corpus
DEFINITIONS = CORPUS / "definitions"
DUPLICATE_ID_PAIR = BROKEN / "duplicate-id"
BROKEN_TEMPLATE = "spring_accessories"

SHIPPED_CAMPAIGNS = PROJECT_ROOT / "config" / "campaigns"
SHIPPED_TEMPLATES = PROJECT_ROOT / "templates"
SHIPPED_SEGMENTS = PROJECT_ROOT / "config" / "segments.yaml"
SHIPPED_ATTRIBUTES = PROJECT_ROOT / "config" / "attributes.yaml"


def _lint_templates() -> Path:
    """The shipped templates plus the corpus's broken one, assembled once per run."""
    directory = Path(tempfile.mkdtemp(prefix="crosssell-corpus-templates-"))
    atexit.register(shutil.rmtree, directory, True)
    shutil.copytree(SHIPPED_TEMPLATES, directory, dirs_exist_ok=True)
    shutil.copytree(BROKEN_TEMPLATES, directory, dirs_exist_ok=True)
    return directory


TEMPLATES = _lint_templates()
CAMPAIGNS = sorted(BROKEN.glob("*.yaml"))
DEFINITION_FILES = sorted(DEFINITIONS.glob("*.yaml"))

EXPECT = re.compile(
    r"^# expect: (?:(?P<file>\S+):)?(?P<line>\d+):(?P<col>\d+) (?P<code>[a-z][a-z-]*)"
    r"(?: (?P<message>.+))?$"
)
EXPECT_NONE = "# expect: none"
TEXT_LINE = re.compile(
    r"^(?P<file>.+?):(?P<line>\d+):(?P<col>\d+): error\[(?P<code>[a-z-]+)\]"
    r"(?: (?P<path>\S+):)? (?P<message>.+)$"
)
GITHUB_LINE = re.compile(
    r"^::error file=(?P<file>[^,]+),line=(?P<line>\d+),col=(?P<col>\d+),"
    r"title=(?P<code>[a-z-]+)::(?P<message>.+)$"
)
PATH_STEP = re.compile(r"([^.\[\]]+)|\[(\d+)\]")
SUGGESTION = re.compile(r"'(?P<written>[^']+)'.*; did you mean '(?P<suggested>[^']+)'\?")


@dataclass(frozen=True)
class Expected:
    """The one error a corpus file documents in its first line."""

    file: Path
    line: int
    col: int
    code: str
    message: str | None

    def where(self) -> str:
        return f"{_short(self.file)}:{self.line}:{self.col} {self.code}"


def _short(path: Path | str) -> str:
    resolved = Path(path).resolve()
    if resolved.is_relative_to(TEMPLATES.resolve()):  # reported from the assembled copy
        resolved = BROKEN_TEMPLATES.resolve() / resolved.relative_to(TEMPLATES.resolve())
    return str(resolved.relative_to(CORPUS)) if resolved.is_relative_to(CORPUS) else str(path)


def expectation(path: Path) -> Expected | None:
    """Parse the ``# expect:`` first line of a corpus file (None for ``# expect: none``)."""
    first = path.read_text(encoding="utf-8").splitlines()[0]
    if first == EXPECT_NONE:
        return None
    match = EXPECT.match(first)
    assert match is not None, (
        f"{path}: the first line must be '# expect: [FILE:]LINE:COL CODE [message part]' "
        f"or '{EXPECT_NONE}', not {first!r}"
    )
    target = (path.parent / match["file"]).resolve() if match["file"] else path.resolve()
    return Expected(target, int(match["line"]), int(match["col"]), match["code"], match["message"])


def _settings() -> Settings:
    return Settings(
        campaigns_dir=BROKEN,
        templates_dir=TEMPLATES,
        segments_file=SHIPPED_SEGMENTS,
        attributes_file=SHIPPED_ATTRIBUTES,
    )


def lint(paths: list[Path]) -> list[LintIssue]:
    """What ``crosssell lint PATHS`` finds, as issues (empty when the files are good)."""
    settings = _settings()
    try:
        load_rules(settings, Renderer(settings), paths)
    except RuleSetError as exc:
        return list(exc.issues)
    return []


def _load_yaml(path: Path) -> Any:
    reader = YAML(typ="rt")
    reader.version = (1, 2)
    reader.allow_duplicate_keys = True
    return reader.load(path.read_text(encoding="utf-8"))


def _path_problem(issue: LintIssue) -> str | None:
    """Every step of an issue's dotted path must be in the file (a missing key: but the last).

    The path is what a marketer searches for; a step that is no key of the file (such as
    a model's union tag) sends them looking for something they never wrote.
    """
    if not issue.path or Path(issue.file).suffix not in (".yaml", ".yml"):
        return None
    node = _load_yaml(Path(issue.file))
    steps: list[str | int] = [
        int(index) if index else key for key, index in PATH_STEP.findall(issue.path)
    ]
    present = steps[:-1] if issue.code == "missing-key" else steps
    for step in present:
        in_map = isinstance(node, CommentedMap) and step in node
        in_seq = isinstance(node, CommentedSeq) and isinstance(step, int) and step < len(node)
        if not (in_map or in_seq):
            return f"path {issue.path!r}: step {step!r} is not in the file"
        node = node[step]
    return None


def assert_reports(issues: list[LintIssue], expected: list[Expected]) -> None:
    """Exactly the expected errors, at the expected places, with the expected wording."""
    reported = [f"{_short(issue.file)}:{issue.line}:{issue.col} {issue.code}" for issue in issues]
    wanted = [item.where() for item in expected]
    assert reported == wanted, (
        "expected:\n  "
        + "\n  ".join(wanted)
        + "\nlint reported:\n  "
        + "\n  ".join(str(issue) for issue in issues)
    )
    for issue, item in zip(issues, expected, strict=True):
        if item.message is not None:
            assert item.message in issue.message, (
                f"{item.where()}: the message should say {item.message!r}; it is {issue.message!r}"
            )
        suggestion = SUGGESTION.search(issue.message)
        if suggestion is not None:
            assert suggestion["written"] != suggestion["suggested"], (
                f"{item.where()}: 'did you mean' suggests what was written: {issue.message!r}"
            )
        problem = _path_problem(issue)
        assert problem is None, f"{item.where()}: {problem} ({issue})"


# --- the corpus itself ---------------------------------------------------------------------


def test_corpus_is_large_and_every_file_documents_its_error() -> None:
    assert len(CAMPAIGNS) >= 30
    documented = [expectation(path) for path in CAMPAIGNS + DEFINITION_FILES]
    assert all(item is not None for item in documented)
    pair = [expectation(path) for path in sorted(DUPLICATE_ID_PAIR.glob("*.yaml"))]
    assert len(pair) == 2 and sum(item is not None for item in pair) == 1


def test_corpus_covers_every_kind_of_campaign_error() -> None:
    codes = {item.code for path in CAMPAIGNS if (item := expectation(path)) is not None}
    codes |= {
        item.code
        for path in DUPLICATE_ID_PAIR.glob("*.yaml")
        if (item := expectation(path)) is not None
    }
    assert codes >= {
        "unknown-key",
        "missing-key",
        "unknown-field",
        "wrong-operator",
        "unknown-operator",
        "bad-value",
        "bad-duration",
        "bad-time",
        "unknown-segment",
        "unknown-template",
        "unknown-variable",
        "duplicate-key",
        "duplicate-id",
        "yaml-syntax",
        "not-a-mapping",
        "yaml-aliases",
        "yaml-too-deep",
    }


def test_the_corpus_holds_only_its_broken_template() -> None:
    """Shipped templates are linted from templates/ itself, never from a stale copy."""
    assert [p.name for p in BROKEN_TEMPLATES.iterdir()] == [BROKEN_TEMPLATE]
    assert sorted(p.name for p in (BROKEN_TEMPLATES / BROKEN_TEMPLATE).iterdir()) == [
        "body.html",
        "body.txt",
        "subject.txt",
    ]


# --- each broken campaign, linted on its own -------------------------------------------------


@pytest.mark.parametrize("path", CAMPAIGNS, ids=lambda path: path.stem)
def test_broken_campaign_reports_its_one_error(path: Path) -> None:
    expected = expectation(path)
    assert expected is not None, f"{path.name} must document the error it holds"
    assert_reports(lint([path]), [expected])


def test_duplicate_campaign_id_across_two_files() -> None:
    files = sorted(DUPLICATE_ID_PAIR.glob("*.yaml"))
    for path in files:  # each file of the pair is a good campaign on its own
        assert lint([path]) == [], path.name
    expected = [item for path in files if (item := expectation(path)) is not None]
    assert_reports(lint([DUPLICATE_ID_PAIR]), expected)


# --- broken segments.yaml and attributes.yaml ------------------------------------------------


@pytest.mark.parametrize("path", DEFINITION_FILES, ids=lambda path: path.stem)
def test_broken_definitions_report_their_one_error(path: Path) -> None:
    expected = expectation(path)
    assert expected is not None
    if path.name.startswith("attributes-"):
        attributes, segments = path, None
    else:
        assert path.name.startswith("segments-"), path.name
        attributes, segments = SHIPPED_ATTRIBUTES, path
    try:
        load_definitions(attributes, segments)
    except RuleSetError as exc:
        issues = list(exc.issues)
    else:
        issues = []
    assert_reports(issues, [expected])


# --- the real command line -------------------------------------------------------------------


Configure = Callable[[Path, Path], None]


@pytest.fixture
def configure(monkeypatch: pytest.MonkeyPatch) -> Iterator[Configure]:
    """Point ``crosssell`` at campaigns and templates through the environment, as a user does.

    Starts on the corpus; call it to switch. ``get_settings`` caches, so it is cleared.
    """

    def point_at(campaigns: Path, templates: Path) -> None:
        monkeypatch.setenv("CROSSSELL_CAMPAIGNS_DIR", str(campaigns))
        monkeypatch.setenv("CROSSSELL_TEMPLATES_DIR", str(templates))
        monkeypatch.setenv("CROSSSELL_SEGMENTS_FILE", str(SHIPPED_SEGMENTS))
        monkeypatch.setenv("CROSSSELL_ATTRIBUTES_FILE", str(SHIPPED_ATTRIBUTES))
        get_settings.cache_clear()

    point_at(BROKEN, TEMPLATES)
    yield point_at
    get_settings.cache_clear()


CLI_FILES = [BROKEN / "unknown-field.yaml", BROKEN / "top-level-key-misspelt.yaml"]


def _expected_for_cli() -> list[Expected]:
    found = [expectation(path) for path in CLI_FILES]
    return [item for item in found if item is not None]


def test_cli_lint_prints_file_line_col_code_path_message(configure: Configure) -> None:
    result = CliRunner().invoke(main, ["lint", *map(str, CLI_FILES)])
    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    parsed = [TEXT_LINE.match(line) for line in lines]
    assert all(parsed), lines
    got = [
        (Path(m["file"]).resolve(), int(m["line"]), int(m["col"]), m["code"])
        for m in parsed
        if m is not None
    ]
    want = [(e.file, e.line, e.col, e.code) for e in _expected_for_cli()]
    assert sorted(got) == sorted(want)
    assert (
        f"{CLI_FILES[0]}:12:17: error[unknown-field] trigger.where.all[1].field: "
        "unknown field 'event.totl'; did you mean 'event.total'?"
    ) in lines
    assert f"{CLI_FILES[1]}:19:1: error[unknown-key] shedule: unknown key 'shedule'" in "\n".join(
        lines
    )
    assert result.stderr.strip() == "2 error(s)"


def test_cli_lint_github_format(configure: Configure) -> None:
    result = CliRunner().invoke(main, ["lint", "--format", "github", *map(str, CLI_FILES)])
    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    parsed = [GITHUB_LINE.match(line) for line in lines]
    assert all(parsed), lines
    got = [
        (Path(m["file"]).resolve(), int(m["line"]), int(m["col"]), m["code"])
        for m in parsed
        if m is not None
    ]
    want = [(e.file, e.line, e.col, e.code) for e in _expected_for_cli()]
    assert sorted(got) == sorted(want)
    assert (
        f"::error file={CLI_FILES[0]},line=12,col=17,title=unknown-field::"
        "trigger.where.all[1].field: unknown field 'event.totl'; did you mean 'event.total'?"
    ) in lines


def test_cli_lint_reports_an_error_inside_a_template(configure: Configure) -> None:
    path = BROKEN / "template-misspelt-variable.yaml"
    result = CliRunner().invoke(main, ["lint", str(path)])
    assert result.exit_code == 1, result.output
    template = TEMPLATES / BROKEN_TEMPLATE / "body.html"
    assert result.stdout.startswith(f"{template}:3:"), result.stdout


def test_shipped_campaigns_lint_clean(configure: Configure) -> None:
    configure(SHIPPED_CAMPAIGNS, SHIPPED_TEMPLATES)
    result = CliRunner().invoke(main, ["lint"])
    assert result.exit_code == 0, result.output
    count = len(list(SHIPPED_CAMPAIGNS.glob("*.yaml")))
    assert result.stdout.strip() == f"{count} campaign(s) OK"
    explicit = CliRunner().invoke(main, ["lint", str(SHIPPED_CAMPAIGNS)])
    assert explicit.exit_code == 0, explicit.output


def test_parallel_parsing_reports_exactly_what_sequential_parsing_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import worker.decide.rule_files as rule_files

    files = sorted((CORPUS / "broken").glob("*.yaml"))
    sequential = rule_files.parse_files(files, {}, {}, parallel=False)
    monkeypatch.setattr(rule_files, "PARALLEL_FROM", 2)
    parallel = rule_files.parse_files(files, {}, {}, parallel=True)
    assert parallel == sequential


def test_a_broken_complement_map_is_a_lint_error(tmp_path: Path) -> None:
    complements = tmp_path / "complements.yaml"
    complements.write_text("laptops: mice\n")  # a text where a list of categories belongs
    settings = Settings(
        campaigns_dir=SHIPPED_CAMPAIGNS,
        templates_dir=SHIPPED_TEMPLATES,
        complements_file=complements,
    )
    with pytest.raises(RuleSetError) as caught:
        load_rules(settings, Renderer(settings))
    (issue,) = caught.value.issues
    assert (issue.file, issue.code) == (str(complements), "bad-complements")
