"""Lint findings: one problem in a rule file, printed ``file:line:col``, and the error
that carries every finding of a rule set that cannot be used."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Level = Literal["error", "warning"]


@dataclass(frozen=True, slots=True)
class LintIssue:
    """One finding, printed ``file:line:col: error[code] path: message``.

    An ``error`` makes the rule set unusable; a ``warning`` (an email that works but reads
    badly for some customers) is reported and the rule set is used all the same.
    """

    file: str
    line: int
    col: int
    code: str
    path: str
    message: str
    level: Level = "error"

    def __str__(self) -> str:
        where = f" {self.path}:" if self.path else ""
        return (
            f"{self.file}:{self.line}:{self.col}: {self.level}[{self.code}]{where} {self.message}"
        )


class RuleSetError(Exception):
    """A rule set that cannot be used; carries every issue found (errors and warnings),
    in file order, each distinct one (file, line, column, code, path, message) once."""

    def __init__(self, issues: Sequence[LintIssue]) -> None:
        distinct = tuple(dict.fromkeys(issues))
        super().__init__("\n".join(str(issue) for issue in distinct))
        self.issues = distinct

    @property
    def errors(self) -> tuple[LintIssue, ...]:
        return tuple(issue for issue in self.issues if issue.level == "error")
