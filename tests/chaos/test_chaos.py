"""The fault suite: the consistency checker on hand-made streams, a short seeded chaos run, the long mode.

* checker tests: fast, prove the checker flags each kind of violation (a checker
  that never complains proves nothing);
* ``test_short_chaos_run``: one fixed seed, every fault kind at least once
  (``slow``; ~60 s on 2 cores);
* ``test_long_chaos_run``: ``make chaos`` (``CHAOS_LONG=1``, ``CHAOS_SEEDS``, ``CHAOS_FAULTS``).

See ``docs/fault-suite.md``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

from chaos.canaries import check_canary_ops, membership
from chaos.checker import CallbackCheck, Entry, StreamCheck, Truth, scan_log, selector_matcher, split_incarnations
from chaos.epochs import Epoch, EpochCheck
from chaos.runner import FAULT_KINDS, bug_signature, known_bug, run_chaos, summary
from chaos.sse_records import SSEParser, frame_record, revision_of_id

APP = selector_matcher(["app/"])

# -- hand-made streams ------------------------------------------------------------


def truth(*entries: tuple[str, int, str, str | None], windows: list[tuple[str, int, int]] | None = None) -> Truth:
    """Entries (ns, rev, op, marker); the final state and revision follow from them."""
    items = [Entry(*e) for e in entries]
    final: dict[str, tuple[int, str | None]] = {}
    for e in sorted(items, key=lambda e: e.rev):
        if e.op == "put":
            final[e.ns] = (e.rev, e.m)
        else:
            final.pop(e.ns, None)
    return Truth(items, final, max(e.rev for e in items), windows or [])


def change(ns: str, rev: int, prev: int, m: str | None = None, op: str = "push") -> dict[str, Any]:
    return {"k": "change", "url": "u", "id": f"c0ffee:{rev}", "pos": rev, "ns": ns, "rev": rev, "prev": prev,
            "op": op, "m": m if op != "delete" else None}


def reset(rev: int, **ns: tuple[int, str]) -> dict[str, Any]:
    return {"k": "reset", "url": "u", "id": str(rev), "pos": rev, "rev": rev,
            "ns": {name.replace("_", "/"): list(v) for name, v in ns.items()}}


def progress(rev: int) -> dict[str, Any]:
    return {"k": "progress", "url": "u", "id": str(rev), "pos": rev, "rev": rev}


CONN = {"k": "conn", "url": "u", "since": None}
T = truth(("app/a", 10, "put", "a1"), ("app/b", 11, "put", "b1"), ("app/a", 12, "put", "a2"),
          ("app/b", 12, "put", "b2"), ("other/x", 13, "put", "x1"), ("app/a", 14, "delete", None))


def check(records: list[dict[str, Any]], t: Truth | list[Epoch] = T, final: bool = True) -> list[dict[str, Any]]:
    """The violations of ``records`` against one truth, or against etcd histories (``epochs``)."""
    violations: list[dict[str, Any]] = []
    stream = EpochCheck("c", APP, t, violations) if isinstance(t, list) else StreamCheck("c", APP, t, violations)
    for rec in records:
        stream.feed(rec)
    stream.finish(final=final)
    return violations


def kinds(violations: list[dict[str, Any]]) -> list[str]:
    return sorted(v["kind"] for v in violations)


GOOD = [CONN, reset(9), change("app/a", 10, 0, "a1"), change("app/b", 11, 0, "b1"), change("app/a", 12, 10, "a2"),
        change("app/b", 12, 11, "b2"), change("app/a", 14, 12, op="delete"), progress(14)]


def test_a_correct_stream_passes() -> None:
    assert check(GOOD) == []


def test_a_lost_change_is_found_when_the_stream_passes_it() -> None:
    lost = [r for r in GOOD if r.get("m") != "b1"]
    assert kinds(check(lost)) == ["lost"]
    silently_lost = [*GOOD[:3], progress(11), *GOOD[4:]]  # a progress vouches for 11: still lost
    assert "lost" in kinds(check(silently_lost))


def test_the_second_namespace_of_a_transaction_is_checked_too() -> None:
    records = [r for r in GOOD if not (r.get("ns") == "app/b" and r.get("rev") == 12)]
    violations = check(records)
    assert [v["kind"] for v in violations] == ["lost", "final_state_differs"]
    assert violations[0]["ns"] == "app/b" and violations[0]["rev"] == 12


def no_id(frame: dict[str, Any]) -> dict[str, Any]:
    return {**frame, "id": None, "pos": None}


def test_only_the_last_frame_of_a_transaction_has_an_id_and_a_broken_one_may_repeat() -> None:
    txn = [no_id(GOOD[4]), GOOD[5]]
    assert check([*GOOD[:4], *txn, *GOOD[6:]]) == []
    unclosed = [*GOOD[:4], no_id(GOOD[4]), no_id(GOOD[5]), *GOOD[6:]]
    assert kinds(check(unclosed)) == ["transaction_without_id"]
    # the connection breaks after the first frame: the resume (from 11) repeats it, which is allowed
    resumed = [*GOOD[:4], txn[0], {"k": "conn", "url": "u", "since": "c0ffee:11"}, *txn, *GOOD[6:]]
    assert check(resumed) == []
    assert kinds(check([*GOOD[:4], *txn, *txn, *GOOD[6:]])) == ["duplicate", "duplicate"]


def test_duplicates_reordering_and_wrong_content_are_found() -> None:
    assert kinds(check([*GOOD[:4], GOOD[3], *GOOD[4:]])) == ["duplicate"]
    swapped = [*GOOD[:3], GOOD[4], GOOD[3], *GOOD[5:]]
    assert "reordered" in kinds(check(swapped))
    forged = [*GOOD[:2], change("app/a", 10, 0, "zzz"), *GOOD[3:]]
    assert kinds(check(forged)) == ["wrong_content"]
    broken_chain = [*GOOD[:4], change("app/a", 12, 9, "a2"), *GOOD[5:]]
    assert kinds(check(broken_chain)) == ["prev_revision_chain_broken"]


def test_a_reset_supersedes_what_it_covers_and_must_be_etcds_state() -> None:
    jumped = [CONN, reset(9), change("app/a", 10, 0, "a1"), reset(12, app_a=(12, "a2"), app_b=(12, "b2")),
              change("app/a", 14, 12, op="delete"), progress(14)]
    assert check(jumped) == []
    stale = [CONN, reset(9), change("app/a", 10, 0, "a1"), reset(12, app_a=(10, "a1"), app_b=(11, "b1")),
             change("app/a", 14, 12, op="delete"), progress(14)]
    violations = check(stale)
    assert "reset_is_not_etcd_state_at_its_revision" in kinds(violations)
    assert next(v for v in violations if v["kind"].startswith("reset_is"))["state_of_revision"] == 11


def test_a_stream_must_start_with_a_reset_and_end_caught_up_and_equal() -> None:
    assert "first_frame_not_reset" in kinds(check([CONN, *GOOD[2:]]))
    assert kinds(check(GOOD[:-2])) == ["final_state_differs", "lost", "not_caught_up"]


def test_a_relist_window_excuses_collapsed_releases_and_its_deletions() -> None:
    t = truth(("app/a", 10, "put", "a1"), ("app/a", 11, "put", "a2"), ("app/b", 12, "put", "b1"),
              ("app/b", 13, "delete", None), ("app/a", 14, "put", "a3"), windows=[("u", 10, 20)])
    collapsed = [CONN, reset(10, app_a=(10, "a1")), change("app/a", 14, 10, "a3"), progress(20)]
    assert check(collapsed, t) == []
    without_window = Truth(t.entries, t.final, t.final_rev, [])
    assert kinds(check(collapsed, without_window)).count("lost") == 3
    # a window of another replica excuses nothing on this stream (it came from replica "u")
    other_replica = Truth(t.entries, t.final, t.final_rev, [("other", 10, 20)])
    assert kinds(check(collapsed, other_replica)).count("lost") == 3


def _stream_kind_examples() -> dict[str, list[dict[str, Any]]]:
    """One hand-made stream per kind of stream violation that must produce it (checked against ``T``)."""
    a10, b11, a12, b12 = GOOD[2:6]
    return {
        "duplicate": [CONN, reset(9), a10, a10, *GOOD[3:]],
        "reordered": [CONN, reset(9), b11, a10, *GOOD[4:]],
        "namespace_revision_not_increasing": [CONN, reset(9), a10, b11, a12, change("app/a", 11, 12, "a1")],
        "wrong_content": [CONN, reset(9), change("app/a", 10, 0, "zz"), *GOOD[3:]],
        "phantom_delete": [CONN, reset(9), a10, change("app/b", 11, 0, op="delete"), *GOOD[4:]],
        "prev_revision_chain_broken": [CONN, reset(9), a10, b11, change("app/a", 12, 11, "a2"), *GOOD[5:]],
        "id_revision_mismatch": [CONN, reset(9), {**a10, "pos": 11}, *GOOD[3:]],
        "transaction_without_id": [CONN, reset(9), a10, b11, {**a12, "id": None, "pos": None}, progress(14)],
        "unsubscribed_namespace": [*GOOD, change("other/x", 13, 0, "x1")],
        "unsubscribed_namespace_in_reset": [CONN, reset(13, app_a=(12, "a2"), app_b=(12, "b2"),
                                                          other_x=(13, "x1")), *GOOD[6:]],
        "reset_is_not_etcd_state_at_its_revision": [CONN, reset(10), *GOOD[3:]],
        "reset_id_went_back": [*GOOD, reset(12, app_a=(12, "a2"), app_b=(12, "b2"))],
        "progress_id_went_back": [*GOOD, progress(12)],
        "backwards_reset_without_restore": [CONN, {**reset(9), "reason": "revision_went_back"}, *GOOD[2:]],
        "first_frame_not_reset": [CONN, *GOOD[2:]],
        "lost": [CONN, reset(9), a10, a12, b12, *GOOD[6:]],
        "not_caught_up": GOOD[:-2],
        "final_state_differs": GOOD[:-2],
        "malformed_change": [*GOOD, {"k": "change", "url": "u", "ns": None, "rev": None}],
        "malformed_reset": [*GOOD, {"k": "reset", "url": "u", "pos": None}],
        "malformed_progress": [*GOOD, {"k": "progress", "url": "u", "pos": None}],
        "invalid_frame": [*GOOD, {"k": "invalid", "url": "u", "ns": "app/a"}],
        "malformed_frame": [*GOOD, {"k": "malformed", "url": "u"}],
    }


def test_every_kind_of_stream_violation_fires() -> None:
    """A checker kind that can never fire excuses everything: each one the stream checker can report
    (read from its source) has a stream above that produces it."""
    source = Path(__file__).with_name("checker.py").read_text()
    stream_part = source[source.index("class StreamCheck"):source.index("def _diff(")]
    reported = set(re.findall(r'violation\("([a-z_]+)"', stream_part)) | {"invalid_frame", "malformed_frame"}
    examples = _stream_kind_examples()
    assert reported <= set(examples), f"no self-test for {sorted(reported - set(examples))}"
    for kind, records in examples.items():
        assert kind in kinds(check(records)), (kind, kinds(check(records)))


def test_a_consumer_resuming_from_a_persisted_point_claims_etcds_state_there() -> None:
    resumed = {"k": "conn", "url": "u", "since": "c0ffee:12"}  # an SDK restarted on its disk snapshots
    assert check([resumed, change("app/a", 14, 12, op="delete"), progress(14)]) == []
    assert kinds(check([resumed, change("app/a", 14, 10, op="delete"), progress(14)])) == [
        "prev_revision_chain_broken"]


def test_ids_are_parsed_with_or_without_a_cluster() -> None:
    assert revision_of_id("42") == 42 and revision_of_id("a1b2:42") == 42 and revision_of_id(None) is None
    parser = SSEParser()
    events = parser.feed(b"id: ab:7\nevent: change\ndata: {\"ns\": \"app/a\", \"revision\": 7")
    events += parser.feed(b", \"prev_revision\": 3, \"op\": \"push\", \"doc\": {\"w\": \"w1\"}}\n\n")
    assert [frame_record(*e, "u") for e in events] == [
        {"k": "change", "url": "u", "id": "ab:7", "pos": 7, "ns": "app/a", "rev": 7, "prev": 3, "op": "push",
         "m": "w1"}]


def callbacks(records: list[dict[str, Any]], t: Truth = T, corrupted: tuple[str, ...] = (),
              final: dict[str, list[Any]] | None = None, exited: bool = False) -> list[dict[str, Any]]:
    violations: list[dict[str, Any]] = []
    cb = CallbackCheck("c", APP, t, violations, corrupted)
    for rec in records:
        cb.feed(rec)
    cb.finish(final, exited=exited)
    return violations


def cb(ns: str, rev: int, m: str | None) -> dict[str, Any]:
    return {"k": "cb", "ns": ns, "rev": rev, "m": m}


SDK_GOOD = [CONN, reset(9), GOOD[2], cb("app/a", 10, "a1"), GOOD[3], cb("app/b", 11, "b1"), GOOD[4],
            cb("app/a", 12, "a2"), GOOD[5], cb("app/b", 12, "b2"), GOOD[6], cb("app/a", 14, None), GOOD[7]]


def test_sdk_callbacks_once_per_adopted_revision() -> None:
    assert callbacks(SDK_GOOD, final={"app/b": [12, "b2"]}) == []
    twice = [*SDK_GOOD[:4], cb("app/a", 10, "a1"), *SDK_GOOD[4:]]
    assert kinds(callbacks(twice)) == ["callback_not_increasing", "unexpected_callback"]
    missing_second_of_txn = [r for r in SDK_GOOD if r != cb("app/b", 12, "b2")]
    violations = callbacks(missing_second_of_txn, final={"app/b": [11, "b1"]})
    assert kinds(violations) == ["callback_missing", "callbacks_final_state_differs", "sdk_final_state_differs"]
    assert all(bug_signature(v) == "sdk-same-revision" for v in violations)
    assert all(known_bug(v) is None for v in violations)  # fixed: its symptoms fail a run again


def test_a_callback_cut_by_a_kill_is_owed_by_the_next_incarnation_not_this_one() -> None:
    killed_before_calling_back = SDK_GOOD[:3]  # the change at 10 arrived, SIGKILL before its callback
    assert callbacks(killed_before_calling_back, exited=True) == []
    assert kinds(callbacks(killed_before_calling_back)) == ["callback_missing"]  # the last incarnation owes it
    missed_mid_run = [r for r in SDK_GOOD if r != cb("app/a", 10, "a1")]  # later frames came: not an exit
    assert "callback_missing" in kinds(callbacks(missed_mid_run, exited=True))


def test_sdk_must_not_load_a_corrupted_snapshot() -> None:
    records = [{"k": "start"}, cb("app/b", 11, "b1"), CONN, reset(12, app_a=(12, "a2"), app_b=(12, "b2")),
               cb("app/a", 12, "a2"), cb("app/b", 12, "b2")]
    assert callbacks(records) == []
    assert kinds(callbacks(records, corrupted=("app/b",))) == ["corrupt_snapshot_loaded"]
    assert [len(run) for run in split_incarnations([{"k": "start"}, {"k": "cb"}, {"k": "start"}])] == [2, 1]


# -- across an etcd restore (chaos.epochs) -----------------------------------------------------------
# a backup at 10; the old history went on to 13, the restored one reuses 12 and 13 for other releases
OLD = truth(("app/a", 10, "put", "a1"), ("app/a", 12, "put", "a2"), ("app/b", 13, "put", "b1"))
NEW = truth(("app/a", 10, "put", "a1"), ("app/b", 12, "put", "B1"), ("app/a", 13, "put", "A2"),
            ("app/a", 14, "put", "A3"))
EPOCHS = [Epoch(OLD), Epoch(NEW, began=100.0, backup_revision=10)]


def at(t: float, rec: dict[str, Any]) -> dict[str, Any]:
    return {**rec, "t": t}


def went_back(rev: int, **ns: tuple[int, str]) -> dict[str, Any]:
    return {**reset(rev, **ns), "reason": "revision_went_back"}


BEFORE = [at(1, CONN), at(1, reset(9)), at(2, change("app/a", 10, 0, "a1")), at(3, change("app/a", 12, 10, "a2")),
          at(4, change("app/b", 13, 0, "b1"))]
FOLLOWED = [*BEFORE, at(101, went_back(10, app_a=(10, "a1"))), at(102, change("app/b", 12, 0, "B1")),
            at(103, change("app/a", 13, 10, "A2")), at(104, change("app/a", 14, 13, "A3"))]


def epoch_check(records: list[dict[str, Any]], epochs: list[Epoch] = EPOCHS, final: bool = True,
                ) -> list[dict[str, Any]]:
    return check(records, epochs, final)


def test_a_consumer_follows_a_restore_at_its_backwards_reset() -> None:
    assert epoch_check(FOLLOWED) == []
    assert "backwards_reset_without_restore" in kinds(epoch_check(FOLLOWED, [Epoch(NEW)]))
    assert kinds(epoch_check(BEFORE)) == ["did_not_follow_restore"]


def test_releases_etcd_lost_must_not_come_back_after_the_restore() -> None:
    replayed = [*FOLLOWED[:6], at(102, change("app/a", 12, 10, "a2")), *FOLLOWED[6:]]  # a stale replica's ring
    assert "wrong_content" in kinds(epoch_check(replayed))
    # resumed inside the discarded history once the new one passed it: a replay, where only a reset is right
    resumed_silently = [*BEFORE, at(105, {"k": "conn", "url": "u", "since": "c0ffee:13"}),
                        at(105, change("app/a", 14, 13, "A3"))]
    assert "wrong_content" in kinds(epoch_check(resumed_silently, final=False))


def test_a_resume_in_the_history_both_share_goes_on_in_the_new_one() -> None:
    common = [*BEFORE[:3], at(101, {"k": "conn", "url": "u", "since": "c0ffee:10"}), *FOLLOWED[6:]]
    assert epoch_check(common) == []
    too_early = [*BEFORE[:3], at(99, {"k": "conn", "url": "u", "since": "c0ffee:10"}), *FOLLOWED[6:]]
    assert "wrong_content" in kinds(epoch_check(too_early))  # before the restore began: the old history


def test_callbacks_may_go_back_in_revision_only_after_a_backwards_reset() -> None:
    records = [CONN, reset(9), change("app/a", 10, 0, "a1"), cb("app/a", 10, "a1"), change("app/a", 12, 10, "a2"),
               cb("app/a", 12, "a2"), went_back(10, app_a=(10, "a1")), cb("app/a", 10, "a1"),
               change("app/b", 12, 0, "B1"), cb("app/b", 12, "B1"), change("app/a", 13, 10, "A2"),
               cb("app/a", 13, "A2"), change("app/a", 14, 13, "A3"), cb("app/a", 14, "A3")]
    violations: list[dict[str, Any]] = []
    check_ = CallbackCheck("c", APP, OLD, violations, final_truth=NEW)
    for rec in records:
        check_.feed(rec)
    check_.finish({"app/a": [14, "A3"], "app/b": [12, "B1"]})
    assert violations == []
    no_reset = [r for r in records if r.get("reason") != "revision_went_back"]
    assert "callback_not_increasing" in kinds(callbacks(no_reset, OLD))


# -- canaries: each SDK's effective document follows its membership -------------------------------

CANARY_TARGET = '{"labels": {"zone": "az1"}}'
# app/c: base c1 at 20; a canary for zone az1 (candidate C1) at 21; promoted (C1 for everyone) at 22
CANARY_T = Truth([Entry("app/c", 20, "put", "c1"), Entry("app/c", 21, "put", "c1", "C1", CANARY_TARGET),
                  Entry("app/c", 22, "put", "C1")], {"app/c": (22, "C1")}, 22)
START = change("app/c", 21, 20, "c1", op="canary_start")


def canary_callbacks(records: list[dict[str, Any]], zone: str, final: dict[str, list[Any]] | None,
                     t: Truth = CANARY_T) -> list[dict[str, Any]]:
    violations: list[dict[str, Any]] = []
    check_ = CallbackCheck("c", APP, t, violations, member=membership("sdk", {"zone": zone}))
    for rec in records:
        check_.feed(rec)
    check_.finish(final)
    return violations


def test_canary_rule_fires_when_an_sdk_runs_what_its_membership_does_not_say() -> None:
    promote = change("app/c", 22, 21, "C1", op="promote")
    base = [CONN, reset(20, app_c=(20, "c1")), cb("app/c", 20, "c1"), START]
    member = [*base, cb("app/c", 21, "C1"), promote, cb("app/c", 22, "C1")]
    outsider = [*base, cb("app/c", 21, "c1"), promote, cb("app/c", 22, "C1")]
    assert canary_callbacks(member, "az1", {"app/c": [22, "C1", "base"]}) == []
    assert canary_callbacks(outsider, "az2", {"app/c": [22, "C1", "base"]}) == []
    # an instance outside the canary that ran the candidate, a member that stayed on the base
    assert "unexpected_callback" in kinds(canary_callbacks(member, "az2", None))
    assert "unexpected_callback" in kinds(canary_callbacks(outsider, "az1", None))
    # final state during a canary: the effective document and the track by membership
    during = Truth(CANARY_T.entries[:2], {"app/c": (21, "c1")}, 21)
    held = [*base, cb("app/c", 21, "C1")]
    assert canary_callbacks(held, "az1", {"app/c": [21, "C1", "canary"]}, during) == []
    assert {"sdk_final_state_differs", "sdk_track_differs"} <= set(kinds(
        canary_callbacks(held, "az1", {"app/c": [21, "c1", "base"]}, during)))
    assert "sdk_track_differs" in kinds(canary_callbacks(held, "az1", {"app/c": [21, "C1", "base"]}, during))
    # a disk snapshot loaded on the wrong track
    assert "disk_snapshot_content_wrong" in kinds(canary_callbacks([cb("app/c", 21, "C1")], "az2", None, during))
    assert canary_callbacks([cb("app/c", 21, "C1")], "az1", None, during) == []


def test_canary_ops_are_checked_against_etcd() -> None:
    def op(name: str, rev: int, wid: str, target: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"op": name, "ns": "app/c", "rev": rev, "wid": wid, "outcome": "ack", "target": target}

    good = [op("canary_start", 21, "C1", {"labels": {"zone": "az1"}}), op("promote", 22, "C1")]
    violations: list[dict[str, Any]] = []
    assert check_canary_ops(good, [CANARY_T], violations)["canary_acknowledged"] == 2 and violations == []
    check_canary_ops([op("canary_start", 21, "C2", {"labels": {"zone": "az1"}}), op("canary_abort", 21, "")],
                     [CANARY_T], violations)
    assert [x["kind"] for x in violations] == ["acknowledged_canary_op_not_in_etcd"] * 2


def test_unhandled_exceptions_in_logs_are_found() -> None:
    log = "\n".join(["INFO ok", "ERROR asyncio: Task exception was never retrieved", "future: <Task ...>",
                     "RuntimeError: aclose(): asynchronous generator is already running", "INFO ok"])
    violations: list[dict[str, Any]] = []
    assert scan_log("replica", log, violations) == 1
    assert bug_signature(violations[0]) == "watch-request-iterator"
    assert known_bug(violations[0]) is None  # fixed: its symptoms fail a run again
    assert scan_log("replica", "Traceback (most recent call last):\n  File x\nValueError", violations) == 1
    assert known_bug(violations[1]) is None


# -- the real thing -----------------------------------------------------------------


def assert_clean(report: dict[str, Any]) -> None:
    assert not report["unexplained"], summary(report, examples=5)


@pytest.mark.slow
async def test_short_chaos_run(tmp_path: Path) -> None:
    """A fixed seed, every fault kind at least once, against 3 etcd members, 2 replicas, 3 SDK processes."""
    seed = int(os.environ.get("CHAOS_SEED", "11"))
    faults = int(os.environ.get("CHAOS_SHORT_FAULTS", "24"))
    report = await run_chaos(seed, faults, Path(os.environ.get("CHAOS_WORKDIR") or tmp_path) / f"seed-{seed}")
    print(summary(report))
    assert report["faults_run"] == faults, summary(report, examples=5)
    assert set(report["faults"]) == set(FAULT_KINDS)
    assert report["changes_checked"] > 1000 and report["callbacks_checked"] > 300 and report["resets"] > 0
    assert report["stalled_reader_resets"] >= 1
    # every consumer (3 raw, 3 SDK processes, 2 resume probes) followed every restore
    assert report["restores"] >= 1 and report["restores_followed"] >= 8 * report["restores"]
    assert_clean(report)


@pytest.mark.slow
@pytest.mark.chaos_long
@pytest.mark.skipif(not os.environ.get("CHAOS_LONG"), reason="long fault suite: make chaos (CHAOS_LONG=1)")
async def test_long_chaos_run(tmp_path: Path) -> None:
    seeds = [int(s) for s in os.environ.get("CHAOS_SEEDS", "1,2,3").split(",") if s.strip()]
    faults = int(os.environ.get("CHAOS_FAULTS", "100"))
    workdir = Path(os.environ.get("CHAOS_WORKDIR") or tmp_path)
    reports = []
    for seed in seeds:
        report = await run_chaos(seed, faults, workdir / f"seed-{seed}", verbose=True)
        print(summary(report, examples=3), flush=True)
        reports.append(report)
    total = sum(r["faults_run"] for r in reports)
    print(f"long mode: {total} faults over seeds {seeds}; reports in {workdir}", flush=True)
    for report in reports:
        assert_clean(report)
