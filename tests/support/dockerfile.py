"""A small reader of Dockerfiles: stages and their instructions, for the tests that check ours."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Instruction:
    keyword: str
    """Upper case: FROM, RUN, COPY..."""
    arguments: str
    line: int

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form ENTRYPOINT, CMD or HEALTHCHECK ... CMD; else None."""
        text = self.arguments
        if self.keyword == "HEALTHCHECK":
            text = text.split(" CMD ", 1)[1] if " CMD " in text else ""
        try:
            parsed = json.loads(text.strip())
        except ValueError:
            return None
        return parsed if isinstance(parsed, list) else None


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def of(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


@dataclass
class Dockerfile:
    args: dict[str, str]
    """ARGs before the first FROM, with their defaults."""
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        (found,) = [s for s in self.stages if s.name == name]
        return found

    def lineage(self, name: str) -> list[Stage]:
        """The stage and those it is built FROM, nearest first (not the COPY --from ones)."""
        chain = [self.stage(name)]
        names = {s.name for s in self.stages}
        while chain[-1].base in names:
            chain.append(self.stage(chain[-1].base))
        return chain

    def image_of(self, name: str) -> list[Instruction]:
        """Every instruction that went into the image of stage ``name``, oldest first."""
        return [i for stage in reversed(self.lineage(name)) for i in stage.instructions]


_FROM = re.compile(r"^(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?$", re.IGNORECASE)
_ARG = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?:=(.*))?$")


def logical_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, text) of each instruction, continuations joined, comments dropped."""
    lines: list[tuple[int, str]] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        lines.append((start, " ".join(p for p in pending if p)))
        pending = []
    if pending:
        raise ValueError(f"line {start}: the file ends inside a continued instruction")
    return lines


def parse(path: Path) -> Dockerfile:
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for number, text in logical_lines(path.read_text()):
        keyword, _, arguments = text.partition(" ")
        instruction = Instruction(keyword.upper(), arguments.strip(), number)
        if instruction.keyword == "FROM":
            match = _FROM.match(instruction.arguments)
            if match is None:
                raise ValueError(f"line {number}: cannot read FROM {instruction.arguments}")
            stages.append(Stage(match.group(1), match.group(2)))
        elif not stages:
            match = _ARG.match(instruction.arguments)
            if instruction.keyword != "ARG" or match is None:
                raise ValueError(f"line {number}: only ARG may come before the first FROM")
            args[match.group(1)] = (match.group(2) or "").strip('"')
        else:
            stages[-1].instructions.append(instruction)
    return Dockerfile(args, stages)
