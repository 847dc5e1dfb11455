"""The /v1/usage aggregation over usage records."""

from __future__ import annotations

from quartproxy.accounting import aggregate

RECORDS = [
    {"ts": "2026-11-24T05:10:00.000Z", "prompt_tokens": 10, "completion_tokens": 2,
     "total_tokens": 12},
    {"ts": "2026-11-24T05:50:00.000Z", "prompt_tokens": 5, "completion_tokens": 5,
     "total_tokens": 10},
    {"ts": "2026-11-24T07:00:00.000Z", "prompt_tokens": 1, "completion_tokens": 1,
     "total_tokens": 2},
    {"ts": "2026-11-25T01:00:00.000Z", "prompt_tokens": None, "completion_tokens": 3,
     "total_tokens": 3},
]


def test_group_by_hour_and_day() -> None:
    hours = aggregate(RECORDS, group="hour", start=None, end=None)
    assert [(h["period"], h["requests"], h["total_tokens"]) for h in hours] == [
        ("2026-11-24T05", 2, 22), ("2026-11-24T07", 1, 2), ("2026-11-25T01", 1, 3),
    ]
    days = aggregate(RECORDS, group="day", start=None, end=None)
    assert [(d["period"], d["requests"], d["prompt_tokens"]) for d in days] == [
        ("2026-11-24", 3, 16), ("2026-11-25", 1, 0),
    ]


def test_start_inclusive_end_exclusive() -> None:
    window = aggregate(RECORDS, group="day", start="2026-11-24T05:50",
                       end="2026-11-24T07:00:00.000Z")
    assert [(d["period"], d["requests"]) for d in window] == [("2026-11-24", 1)]
