"""Stream rules as code: the checked-in rules file, and the changes that make X's rules match it."""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from tweepy import StreamRule

MAX_RULE_LENGTH = 1024  # X's limit depends on the access level (512 on the lower ones)


@dataclass(frozen=True)
class Rule:
    """A rule as the file declares it."""

    value: str
    tag: str
    priority: int


@dataclass(frozen=True)
class ActiveRule:
    """A rule as X holds it."""

    id: str
    value: str
    tag: str | None


@dataclass(frozen=True)
class RulePlan:
    add: tuple[Rule, ...] = ()
    delete: tuple[ActiveRule, ...] = ()
    keep: tuple[ActiveRule, ...] = ()

    @property
    def changes(self) -> bool:
        return bool(self.add or self.delete)

    def as_dict(self) -> dict[str, Any]:
        return {
            "add": [{"value": r.value, "tag": r.tag} for r in self.add],
            "delete": [{"id": r.id, "value": r.value, "tag": r.tag} for r in self.delete],
            "keep": [{"id": r.id, "value": r.value, "tag": r.tag} for r in self.keep],
        }


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[Rule, ...] = field(default_factory=tuple)

    def priorities(self, configured: Mapping[str, int], configured_explicitly: bool) -> dict[str, int]:
        """The tag/class → priority mapping posts are ranked with.

        Each rule's tag maps to the file's priority. `configured` (INGEST_RULE_PRIORITIES)
        still maps tags outside the file (rules made elsewhere, backfill); when it was set
        explicitly, the tags and classes it names win over the file.
        """
        mapping = dict(configured)
        for rule in self.rules:
            overridden = rule.tag in configured or rule.tag.split(":", 1)[0] in configured
            if configured_explicitly and overridden:
                continue
            mapping[rule.tag] = rule.priority
        return mapping


def parse_rules(text: str) -> RuleSet:
    raw: dict[str, Any] = tomllib.loads(text)
    rules = tuple(_rule(entry) for entry in raw.get("rules", []))
    if not rules:
        raise ValueError("the rules file lists no rules")
    tags = [r.tag for r in rules]
    duplicated = sorted({t for t in tags if tags.count(t) > 1})
    if duplicated:
        raise ValueError(f"rule tags must be unique; repeated: {duplicated}")
    return RuleSet(rules)


def load_rules(path: Path | None = None) -> RuleSet:
    """The rules file at `path`, or the one shipped with the package."""
    if path is None:
        return parse_rules(resources.files(__package__).joinpath("rules.toml").read_text(encoding="utf-8"))
    return parse_rules(path.read_text(encoding="utf-8"))


def _rule(entry: Any) -> Rule:
    if not isinstance(entry, dict):
        raise ValueError(f"a rule must be a table, not {entry!r}")
    value, tag, priority = entry.get("value"), entry.get("tag"), entry.get("priority")
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"rule {entry!r} has no value")
    if len(value) > MAX_RULE_LENGTH:
        raise ValueError(f"rule {tag!r} is longer than {MAX_RULE_LENGTH} characters")
    if not isinstance(tag, str) or not tag.strip():
        raise ValueError(f"rule {value!r} has no tag")
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise ValueError(f"rule {tag!r} needs an integer priority")
    return Rule(value=value.strip(), tag=tag.strip(), priority=priority)


def plan(desired: Sequence[Rule], active: Iterable[ActiveRule]) -> RulePlan:
    """What to add and delete so the active rules are exactly `desired`.

    A rule matches when value and tag are both equal (X cannot edit a rule: a changed tag
    means delete and add). An active rule listed twice keeps one copy.
    """
    wanted = {(r.value, r.tag) for r in desired}
    keep: list[ActiveRule] = []
    delete: list[ActiveRule] = []
    kept: set[tuple[str, str | None]] = set()
    for rule in sorted(active, key=lambda r: r.id):
        key = (rule.value, rule.tag)
        if key in wanted and key not in kept:
            keep.append(rule)
            kept.add(key)
        else:
            delete.append(rule)
    add = [r for r in desired if (r.value, r.tag) not in kept]
    return RulePlan(add=tuple(add), delete=tuple(delete), keep=tuple(keep))


def active_rules(response: Mapping[str, Any]) -> list[ActiveRule]:
    """The rules in a GET /2/tweets/search/stream/rules answer (`data` is absent when there are none)."""
    return [
        ActiveRule(id=str(item["id"]), value=str(item["value"]), tag=item.get("tag"))
        for item in response.get("data") or []
        if isinstance(item, dict) and "id" in item and "value" in item
    ]


class RulesError(RuntimeError):
    """X refused a rules change (for example a rule it cannot parse)."""


async def sync(client: Any, rules: RuleSet, *, dry_run: bool = False) -> RulePlan:
    """Make the stream's rules match `rules`; with `dry_run`, change nothing and only ask X to
    validate the rules that would be added. `client` is the tweepy streaming client (dict answers)."""
    current = active_rules(await client.get_rules())
    change = plan(rules.rules, current)
    if dry_run:
        if change.add:
            # A value whose tag changes is still active until the real sync deletes it first.
            replaced = {r.id for r in change.delete}
            _check(await client.add_rules(_stream_rules(change.add), dry_run=True), replaced)
        return change
    # Deletions first: the rule count is capped, and a changed tag reuses the same value.
    if change.delete:
        _check(await client.delete_rules([r.id for r in change.delete]))
    if change.add:
        _check(await client.add_rules(_stream_rules(change.add)))
    return change


def _stream_rules(rules: Iterable[Rule]) -> list[Any]:
    return [StreamRule(value=r.value, tag=r.tag) for r in rules]


def _check(response: Mapping[str, Any], replaced: frozenset[str] | set[str] = frozenset()) -> None:
    errors = [
        e
        for e in response.get("errors") or []
        if not (isinstance(e, dict) and e.get("title") == "DuplicateRule" and str(e.get("id")) in replaced)
    ]
    if errors:
        raise RulesError("; ".join(_describe(e) for e in errors))


def _describe(error: Any) -> str:
    if not isinstance(error, dict):
        return str(error)
    parts = [str(error.get("title") or "error")]
    if error.get("value"):
        parts.append(f"rule {error['value']!r}")
    details = error.get("details") or ([error["detail"]] if error.get("detail") else [])
    parts.extend(str(d) for d in details)
    return ": ".join(parts)
