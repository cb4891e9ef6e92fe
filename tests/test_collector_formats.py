"""The collector's pure transformations: known input, exact output."""

from __future__ import annotations

import pytest

from bpfscope.collector.formats import flame_rows, flame_tree, overview_streams, series_name, timeline_rows

MS = 1_000_000
S = 1_000_000_000
T0 = 1_700_000_040 * S

# -- flame graphs -----------------------------------------------------------------------------

STACKS = [
    (["main", "work", "compute"], 5),
    (["main", "work", "io"], 2),
    (["main", "work"], 1),          # work's own time
    (["main", "idle"], 3),
    (["main", "work", "compute"], 4),  # merged with the first
    (["_start"], 1.0),              # a whole float counts as an int
]


def test_flame_tree_merges_and_sorts_siblings_by_name():
    tree = flame_tree(STACKS)
    assert tree == {
        "name": "total", "value": 16, "self": 0, "children": [
            {"name": "_start", "value": 1, "self": 1, "children": []},
            {"name": "main", "value": 15, "self": 0, "children": [
                {"name": "idle", "value": 3, "self": 3, "children": []},
                {"name": "work", "value": 12, "self": 1, "children": [
                    {"name": "compute", "value": 9, "self": 9, "children": []},
                    {"name": "io", "value": 2, "self": 2, "children": []},
                ]},
            ]},
        ]}
    assert isinstance(tree["value"], int) and isinstance(tree["children"][0]["value"], int)


def test_flame_rows_are_grafanas_nested_set_in_depth_first_order():
    assert flame_rows(flame_tree(STACKS)) == [
        {"level": 0, "value": 16, "self": 0, "label": "total"},
        {"level": 1, "value": 1, "self": 1, "label": "_start"},
        {"level": 1, "value": 15, "self": 0, "label": "main"},
        {"level": 2, "value": 3, "self": 3, "label": "idle"},
        {"level": 2, "value": 12, "self": 1, "label": "work"},
        {"level": 3, "value": 9, "self": 9, "label": "compute"},
        {"level": 3, "value": 2, "self": 2, "label": "io"},
    ]


def test_flame_same_name_at_different_depths_stays_apart():
    rows = flame_rows(flame_tree([(["a", "a", "a"], 1), (["a"], 2), (["b", "a"], 4)]))
    assert [(r["level"], r["label"], r["value"], r["self"]) for r in rows] == [
        (0, "total", 7, 0), (1, "a", 3, 2), (2, "a", 1, 0), (3, "a", 1, 1), (1, "b", 4, 0), (2, "a", 4, 4)]


def test_flame_skips_values_that_are_not_positive_numbers():
    tree = flame_tree([(["a"], 0), (["b"], -3), (["c"], "7"), (["d"], None), (["e"], True),
                       (["f"], float("nan")), (["g"], 2.5), ([], 1)])
    assert flame_rows(tree) == [{"level": 0, "value": 3.5, "self": 1, "label": "total"},
                                {"level": 1, "value": 2.5, "self": 2.5, "label": "g"}]


def test_flame_empty_is_a_lone_root():
    assert flame_tree([]) == {"name": "total", "value": 0, "self": 0, "children": []}
    assert flame_rows(flame_tree([])) == [{"level": 0, "value": 0, "self": 0, "label": "total"}]


def test_flame_deep_stacks_need_no_recursion():
    frames = [f"f{i}" for i in range(5000)]
    rows = flame_rows(flame_tree([(frames, 1)]))
    assert len(rows) == 5001 and rows[-1] == {"level": 5000, "value": 1, "self": 1, "label": "f4999"}


def test_flame_nested_set_invariants_hold():
    rows = flame_rows(flame_tree(STACKS))
    # Every row's value = its self + the values of its direct children (the next rows one level down).
    for i, row in enumerate(rows):
        children = 0
        for later in rows[i + 1:]:
            if later["level"] <= row["level"]:
                break
            if later["level"] == row["level"] + 1:
                children += later["value"]
        assert row["value"] == row["self"] + children, row


# -- state timelines ----------------------------------------------------------------------------


def state(ts, tid, value, comm="app", duration=None, **labels):
    r = {"ts": ts, "host": "h", "domain": "proc", "kind": "thread_state", "pid": 10, "tid": tid, "comm": comm,
         "labels": {"state": value, **labels}, "values": {}}
    if duration is not None:
        r["values"]["duration_ns"] = duration
    return r


def test_timeline_rows_forward_fill_every_series():
    records = [
        state(T0, 11, "running"),
        state(T0 + 100 * MS, 12, "sleeping"),
        state(T0 + 200 * MS, 11, "blocked"),
        state(T0 + 300 * MS, 12, "running"),
    ]
    t = T0 // MS
    assert timeline_rows(records) == [
        {"time": t, "app:11": "running", "app:12": None},
        {"time": t + 100, "app:11": "running", "app:12": "sleeping"},
        {"time": t + 200, "app:11": "blocked", "app:12": "sleeping"},
        {"time": t + 300, "app:11": "blocked", "app:12": "running"},
    ]


def test_timeline_duration_ends_a_state_unless_the_next_one_began():
    records = [
        state(T0, 11, "running", duration=50 * MS),                # gap: ends at +50 ms, next at +100
        state(T0 + 100 * MS, 11, "sleeping", duration=200 * MS),   # overlapped by the next one at +150
        state(T0 + 150 * MS, 11, "running", duration=50 * MS),     # ends exactly when the next begins
        state(T0 + 200 * MS, 11, "blocked", duration=10 * MS),     # the last one ends too
    ]
    t = T0 // MS
    assert timeline_rows(records) == [
        {"time": t, "app:11": "running"},
        {"time": t + 50, "app:11": None},
        {"time": t + 100, "app:11": "sleeping"},
        {"time": t + 150, "app:11": "running"},
        {"time": t + 200, "app:11": "blocked"},
        {"time": t + 210, "app:11": None},
    ]


def test_timeline_unsorted_input_same_millisecond_and_missing_state():
    records = [
        state(T0 + 5 * MS + 900, 11, "sleeping"),  # same ms as the next: the later ns wins
        state(T0 + 5 * MS + 100, 11, "running"),
        state(T0, 11, "runnable"),
        {**state(T0 + 7 * MS, 11, "x"), "labels": {}},  # no state: skipped
    ]
    t = T0 // MS
    assert timeline_rows(records) == [{"time": t, "app:11": "runnable"}, {"time": t + 5, "app:11": "sleeping"}]


def test_timeline_series_spec_state_key_and_natural_order():
    records = [state(T0, 10, "up", cpu="10"), state(T0, 2, "down", cpu="2"), state(T0 + MS, 9, "up")]
    assert list(timeline_rows(records)[0]) == ["time", "app:2", "app:9", "app:10"]
    assert list(timeline_rows(records, series="cpu")[0]) == ["time", "2", "10", "?"]  # numbers first
    assert timeline_rows(records, series="host:pid") == [{"time": T0 // MS, "h:10": "down"},
                                                         {"time": T0 // MS + 1, "h:10": "up"}]
    rec = {**state(T0, 1, "ignored"), "labels": {}, "values": {"phase": "init"}}
    assert timeline_rows([rec], state="phase") == [{"time": T0 // MS, "app:1": "init"}]
    assert series_name(rec, "comm:kind:nope") == "app:thread_state:?"


def test_timeline_max_series_keeps_the_busiest():
    records = [state(T0 + i * MS, tid, "s") for i, tid in enumerate([1, 2, 2, 3, 3, 3])]
    rows = timeline_rows(records, max_series=2)
    assert list(rows[0]) == ["time", "app:2", "app:3"]
    assert rows[0]["time"] == T0 // MS + 1  # series 1 is gone, and with it its row
    assert timeline_rows([]) == []


# -- overview ---------------------------------------------------------------------------------------


def test_overview_streams_rates_and_ages():
    now = T0 + 300 * S
    groups = [("b", "system", "syscall", 600, now - 2 * S), ("a", "stack", "cpu_stack", 30, now - 90 * S)]
    assert overview_streams(groups, now - 300 * S, now, now) == [
        {"host": "a", "exporter": "stack", "domain": "stack", "kind": "cpu_stack", "records": 30,
         "rate_per_s": 0.1, "last_seen": (now - 90 * S) // MS, "age_s": 90.0},
        {"host": "b", "exporter": "sys", "domain": "system", "kind": "syscall", "records": 600,
         "rate_per_s": 2.0, "last_seen": (now - 2 * S) // MS, "age_s": 2.0},
    ]


@pytest.mark.parametrize("since, until", [(T0, T0), (T0 + S, T0)])
def test_overview_streams_empty_window_does_not_divide_by_zero(since, until):
    assert overview_streams([("h", "net", "x", 1, T0)], since, until, T0)[0]["rate_per_s"] > 0
