"""The bounds validation checks, one pydantic model (so Prefect's run form shows each with its
help, and `encore validate --set NAME=VALUE` names a wrong one)."""

from __future__ import annotations

from datetime import datetime, timedelta

from pydantic import BaseModel, ConfigDict, Field


class ValidationThresholds(BaseModel):
    """Bounds the suites check. A pydantic model, so Prefect's run form shows each with its help."""

    model_config = ConfigDict(frozen=True)

    min_users: int = Field(10, ge=0, description="Fewest distinct users the dataset may have.")
    min_items: int = Field(10, ge=0, description="Fewest distinct items the dataset may have.")
    min_interactions: int = Field(
        100, ge=0, description="Fewest interactions the dataset may have."
    )
    max_quarantine_fraction: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Largest share of tonight's rows that may be quarantined; more means the "
        "delivery itself is broken and the snapshot fails.",
    )
    max_reject_fraction: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Largest share of tonight's rows that may be malformed (rejected): 200 good "
        "lines in 10,000 broken ones are a broken delivery, not 200 rows of data.",
    )
    max_file_reject_fraction: float = Field(
        0.2,
        ge=0,
        le=1,
        description="Largest share of any one file's rows that may be malformed.",
    )
    max_growth: float = Field(
        2.0,
        ge=1,
        description="Largest ratio of rows after / before one snapshot: a night that more than "
        "doubles the history is more likely a replayed export than real traffic.",
    )
    max_volume_ratio: float = Field(
        10.0,
        ge=1,
        description="Tonight's rows may be at most this many times the median of the last "
        "snapshots' (and at least 1/this): a day 10x larger or 90 % smaller is a broken "
        "export. Checked once the dataset has 3 passed snapshots.",
    )
    max_new_id_share: float = Field(
        0.9,
        ge=0,
        le=1,
        description="Largest share of tonight's rows whose user (or item) was never seen "
        "before, counted only when the ids seen before went silent (under 2 % of tonight's ids "
        "were seen before): mostly-new ids with the old ones gone mean the ids were remapped "
        "upstream; a sign-up wave brings returning users too. Checked once the dataset has 3 "
        "passed snapshots.",
    )
    max_single_user_share: float = Field(
        0.2,
        ge=0,
        le=1,
        description="Largest share of tonight's rows one user may have (a bot or a replay "
        "loop). Checked when tonight has at least 100 users.",
    )
    max_single_item_share: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Largest share of tonight's rows one item may have. Checked when tonight "
        "has at least 100 items.",
    )
    max_backdated_share: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Largest share of tonight's rows older than the newest event already "
        "loaded: a day mostly older than yesterday is a replayed or re-dated export (events "
        "from offline devices arrive late, but few). Raise it for a deliberate backfill.",
    )
    max_mean_rating_shift: float = Field(
        0.15,
        ge=0,
        description="Largest |tonight's mean rating - the history's|, as a share of the scale.",
    )
    oldest_timestamp: datetime = Field(
        datetime(1995, 1, 1), description="Events before this are absurdly old."
    )
    future_tolerance: timedelta = Field(
        timedelta(hours=24), description="How far past 'now' an event time may be (clock skew)."
    )
    id_pattern: str = Field(
        r"^[^\s\x00-\x1f]{1,128}$",
        description="Regex every user and item id must match (default: 1-128 characters, no "
        "whitespace or control characters).",
    )
