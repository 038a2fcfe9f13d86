"""The outcome of each check, and of all of them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

STATUSES = ("pass", "warn", "fail", "info")


@dataclass
class CheckItem:
    name: str
    status: str  # one of STATUSES; only "fail" fails the check
    summary: str
    details: list[str] = field(default_factory=list)

    def line(self) -> str:
        head = f"  [{self.status.upper():>4}] {self.name}: {self.summary}"
        return "\n".join([head, *(f"           {d}" for d in self.details)])


@dataclass
class CheckResult:
    items: list[CheckItem]
    html: Path | None = None

    @property
    def passed(self) -> bool:
        return not any(item.status == "fail" for item in self.items)

    def verdict(self) -> str:
        failed = [item.name for item in self.items if item.status == "fail"]
        warned = sum(item.status == "warn" for item in self.items)
        counted = sum(item.status != "info" for item in self.items)
        warnings = f", {warned} warning(s)" if warned else ""
        if failed:
            return f"check: FAILED: {len(failed)} of {counted} checks failed ({', '.join(failed)}){warnings}"
        return f"check: PASSED: {counted} checks{warnings}"
