"""Rules as code: the checked-in file, the sync plan, and the sync against a server speaking X's rules API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.ingest import rules
from services.ingest.live import stream_client
from services.ingest.settings import IngestSettings
from services.ingest.xapi import XStreamingClient
from tests.fakes.x_api import FakeXApi

SEED_HASHTAGS = {
    "butterfly", "cats", "cow", "dogs", "elephants", "hen",
    "horse", "monkey", "panda", "sheep", "spider", "squirrel",
}  # fmt: skip
TOKEN = "test-bearer-token-for-rules-0123456789"


def test_the_checked_in_file_targets_the_seed_hashtags_plus_an_image_sample() -> None:
    rule_set = rules.load_rules()
    by_tag = {r.tag: r for r in rule_set.rules}
    assert {t.split(":", 1)[1] for t in by_tag if t.startswith("targeted:")} == SEED_HASHTAGS
    for name in SEED_HASHTAGS:
        rule = by_tag[f"targeted:{name}"]
        assert f"#{name}" in rule.value
        assert "has:images" in rule.value
    assert "has:images" in by_tag["sample"].value
    targeted = {r.priority for r in rule_set.rules if r.tag.startswith("targeted:")}
    assert len(targeted) == 1
    assert min(targeted) > by_tag["sample"].priority


def test_the_file_feeds_the_priorities_and_an_explicit_setting_overrides_it() -> None:
    rule_set = rules.parse_rules(
        """
        [[rules]]
        tag = "targeted:cats"
        value = "#cats has:images"
        priority = 7
        [[rules]]
        tag = "sample"
        value = "photo has:images"
        priority = 3
        """
    )
    defaults = {"targeted": 2, "sample": 1}
    implicit = rule_set.priorities(defaults, configured_explicitly=False)
    assert implicit["targeted:cats"] == 7
    assert implicit["sample"] == 3
    assert implicit["targeted"] == 2  # still maps targeted tags the file does not list
    explicit = rule_set.priorities({"targeted": 5}, configured_explicitly=True)
    assert explicit.get("targeted:cats") is None  # the class mapping decides
    assert explicit["targeted"] == 5
    assert explicit["sample"] == 3


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no rules"),
        ('[[rules]]\ntag = "a"\npriority = 1', "no value"),
        ('[[rules]]\nvalue = "#a"\npriority = 1', "no tag"),
        ('[[rules]]\nvalue = "#a"\ntag = "a"', "integer priority"),
        (
            '[[rules]]\nvalue = "#a"\ntag = "a"\npriority = 1\n[[rules]]\nvalue = "#b"\ntag = "a"\npriority = 1',
            "unique",
        ),
    ],
)
def test_a_broken_rules_file_is_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        rules.parse_rules(text)


def test_the_plan_adds_missing_deletes_stale_and_keeps_matching_rules() -> None:
    desired = [rules.Rule("#cats has:images", "targeted:cats", 2), rules.Rule("#dogs has:images", "targeted:dogs", 2)]
    active = [
        rules.ActiveRule("1", "#cats has:images", "targeted:cats"),  # matches
        rules.ActiveRule("2", "#dogs has:images", "dogs"),  # right value, old tag
        rules.ActiveRule("3", "#ferrets", "targeted:ferrets"),  # no longer wanted
        rules.ActiveRule("4", "#cats has:images", "targeted:cats"),  # a second copy
    ]
    change = rules.plan(desired, active)
    assert [r.id for r in change.keep] == ["1"]
    assert sorted(r.id for r in change.delete) == ["2", "3", "4"]
    assert [r.tag for r in change.add] == ["targeted:dogs"]


def test_nothing_changes_when_the_rules_already_match() -> None:
    desired = [rules.Rule("#cats has:images", "targeted:cats", 2)]
    change = rules.plan(desired, [rules.ActiveRule("9", "#cats has:images", "targeted:cats")])
    assert not change.changes


@pytest.fixture
async def x_api() -> AsyncIterator[FakeXApi]:
    file_rules = rules.load_rules().rules
    fake = FakeXApi(
        TOKEN,
        rules=[
            {"id": "100", "value": file_rules[0].value, "tag": file_rules[0].tag},  # up to date
            {"id": "101", "value": file_rules[1].value, "tag": "old-tag"},  # tag changed
            {"id": "102", "value": "#ferrets has:images", "tag": "targeted:ferrets"},  # stale
        ],
    )
    await fake.start()
    yield fake
    await fake.close()


def client_for(fake: FakeXApi) -> XStreamingClient:
    return stream_client(IngestSettings(X_BEARER_TOKEN=TOKEN, X_API_BASE_URL=fake.base_url))


async def test_dry_run_shows_the_diff_validates_additions_and_changes_nothing(x_api: FakeXApi) -> None:
    before = dict(x_api.rules)
    change = await rules.sync(client_for(x_api), rules.load_rules(), dry_run=True)
    assert x_api.rules == before
    assert [r.id for r in change.keep] == ["100"]
    assert sorted(r.id for r in change.delete) == ["101", "102"]
    assert len(change.add) == len(rules.load_rules().rules) - 1
    assert [p["dry_run"] for p in x_api.rule_posts] == [True]  # the additions were validated only


async def test_sync_makes_the_stream_rules_match_the_file(x_api: FakeXApi) -> None:
    wanted = {(r.value, r.tag) for r in rules.load_rules().rules}
    change = await rules.sync(client_for(x_api), rules.load_rules())
    assert {(r["value"], r.get("tag")) for r in x_api.rules.values()} == wanted
    assert "100" in x_api.rules  # the matching rule kept its id
    assert change.changes
    again = await rules.sync(client_for(x_api), rules.load_rules())
    assert not again.changes
    assert x_api.unauthorized == 0


async def test_a_rule_x_cannot_parse_is_reported(x_api: FakeXApi, tmp_path: Path) -> None:
    bad = tmp_path / "rules.toml"
    bad.write_text('[[rules]]\ntag = "sample"\nvalue = "has:images -is:retweet"\npriority = 1\n')
    with pytest.raises(rules.RulesError, match="has:images"):
        await rules.sync(client_for(x_api), rules.load_rules(bad), dry_run=True)
