"""The /v1/usage aggregation over usage records: sums, windows, time parsing, the payload."""

from __future__ import annotations

import pytest

from quartproxy.accounting import aggregate, iso_ms, iso_of, parse_time, record_fields

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
EVERYTHING = {"start": 0, "end": 1 << 62}


def test_group_by_hour_and_day() -> None:
    hours = aggregate(RECORDS, group="hour", **EVERYTHING).payload(**EVERYTHING)["data"]
    assert [(h["period"], h["requests"], h["total_tokens"]) for h in hours] == [
        ("2026-11-24T05", 2, 22), ("2026-11-24T07", 1, 2), ("2026-11-25T01", 1, 3),
    ]
    days = aggregate(RECORDS, group="day", **EVERYTHING).payload(**EVERYTHING)["data"]
    assert [(d["period"], d["requests"], d["prompt_tokens"]) for d in days] == [
        ("2026-11-24", 3, 16), ("2026-11-25", 1, 0),
    ]


def test_start_inclusive_end_exclusive() -> None:
    start = parse_time("2026-11-24T05:50")
    end = parse_time("2026-11-24T07:00:00.000Z")
    window = aggregate(RECORDS, group="day", start=start, end=end).payload(start=start, end=end)
    assert [(d["period"], d["requests"]) for d in window["data"]] == [("2026-11-24", 1)]
    assert window["total_requests"] == 1 and window["total_tokens"] == 10


def test_payload_has_both_shapes() -> None:
    payload = aggregate(RECORDS, group="hour", **EVERYTHING).payload(start=5, end=6)
    assert payload["object"] == "list" and payload["group"] == "hour"
    assert (payload["start"], payload["end"]) == (5, 6)
    assert payload["total_requests"] == 4
    assert (payload["prompt_tokens"], payload["completion_tokens"], payload["total_tokens"]) == (
        16, 11, 27)
    assert (payload["prompt_tokens_est"], payload["completion_tokens_est"],
            payload["total_tokens_est"]) == (16, 11, 27)
    assert payload["buckets"][0] == {
        "ts": "2026-11-24T05:00:00.000Z", "requests": 2,
        "prompt_tokens": 15, "completion_tokens": 7, "total_tokens": 22,
        "prompt_tokens_est": 15, "completion_tokens_est": 7, "total_tokens_est": 22,
    }
    assert [b["ts"] for b in payload["buckets"]] == [
        "2026-11-24T05:00:00.000Z", "2026-11-24T07:00:00.000Z", "2026-11-25T01:00:00.000Z"]


def test_parse_time_takes_epoch_ms_and_iso() -> None:
    ms = 1795497000000  # 2026-11-24T05:10:00Z
    assert parse_time(str(ms)) == ms
    assert parse_time("0") == 0
    assert parse_time("2026-11-24T05:10:00.000Z") == ms
    assert parse_time("2026-11-24T05:10:00Z") == ms
    assert parse_time("2026-11-24T06:10:00+01:00") == ms
    assert parse_time("2026-11-24T05:10") == ms  # no offset: UTC
    assert parse_time(" 2026-11-24 ") == ms - (5 * 60 + 10) * 60_000
    for bad in ("yesterday", "-5", "1e9", "2026-13-01", ""):
        with pytest.raises(ValueError):
            parse_time(bad)


def test_record_times_round_trip() -> None:
    for ms in (0, 1795497000000, 1795497000123, 4102444799999):
        assert iso_ms(iso_of(ms)) == ms
    assert iso_ms("2026-11-24T05:10:00+00:00") == 1795497000000  # any ISO form is read


def test_records_of_the_old_product_are_read() -> None:
    """Numeric ``ts`` (epoch ms) and the ``*_est`` token fields, as the old product wrote."""
    old = {"ts": 1795497000000, "prompt_tokens_est": 7, "completion_tokens_est": 3,
           "total_tokens_est": 10}
    assert record_fields(old) == (1795497000000, 7, 3, 10)
    assert record_fields({"ts": "2026-11-24T05:10:00.000Z", "prompt_tokens": 2,
                          "completion_tokens": 3}) == (1795497000000, 2, 3, 5)
    for junk in ({"ts": None}, {"ts": "soon"}, {"prompt_tokens": 1}, [1], "x", {"ts": True}):
        assert record_fields(junk) is None
