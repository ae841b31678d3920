"""One model for what every checking command finds: doctor, verify, drill and tunnel lint.

A `Check` is one named verdict (ok, warn or fail) with a one-line message, where it applies and, when
there is something to do, the one-line fix. A `Checks` list answers "did it pass?" the same way
for every command: any `fail` fails it; a `warn` never does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Iterable, Iterator


class Level(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


@dataclass
class Check:
    name: str  # stable, for --json: "integrity", "env_file", "access_missing", ...
    level: Level
    message: str = ""
    where: str = ""  # what it applies to: a database, a key path like ingress[0].service; empty for all
    fix: str = ""  # one line; empty when there is nothing to do

    @property
    def ok(self) -> bool:
        return self.level is not Level.FAIL

    def as_json(self) -> dict[str, str]:
        return {"name": self.name, "level": str(self.level), "message": self.message, "where": self.where,
                "fix": self.fix}


@dataclass
class Checks:
    """An ordered list of checks; it passes when none failed."""

    items: list[Check] = field(default_factory=list)

    def add(self, name: str, level: Level | str, message: str = "", *, where: str = "", fix: str = "") -> Check:
        check = Check(name, Level(level), message, where, fix)
        self.items.append(check)
        return check

    def passed(self, name: str, message: str = "", *, where: str = "") -> Check:
        return self.add(name, Level.OK, message, where=where)

    def failed(self, name: str, message: str, *, where: str = "", fix: str = "") -> Check:
        return self.add(name, Level.FAIL, message, where=where, fix=fix)

    def extend(self, checks: Iterable[Check]) -> None:
        self.items.extend(checks)

    def __iter__(self) -> Iterator[Check]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.items)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.items if c.level is Level.FAIL]

    @property
    def warnings(self) -> list[Check]:
        return [c for c in self.items if c.level is Level.WARN]

    def as_json(self) -> list[dict[str, str]]:
        return [c.as_json() for c in self.items]
