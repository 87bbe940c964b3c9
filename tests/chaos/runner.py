"""One seeded chaos run: topology up, writer and subscribers running, N faults, quiesce, check.

``run_chaos(seed, faults, workdir)`` returns the report (a JSON-able dict):
faults by kind, writes by outcome, changes/callbacks checked, resets, re-list
windows, violations.  Every process it started is reaped before it returns,
whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from etcd3aio import prefix_range_end

from chaos.canaries import CANARY_KINDS, Canaries, check_canary_ops, membership
from chaos.checker import (
    CallbackCheck,
    Entry,
    StreamCheck,
    Truth,
    entries_from_history,
    scan_log,
    selector_matcher,
    split_incarnations,
)
from chaos.epochs import Epoch, EpochCheck, epoch_at
from chaos.sse_records import marker, revision_of_id
from chaos.streams import RawSubscriber, StalledSubscriber
from chaos.topology import Replica, SdkDriver, Topology
from chaos.writer import CONFIG_NS, Writer

FAULT_KINDS = (
    "etcd_kill", "etcd_kill_leader", "etcd_pause", "replica_pause", "replica_kill",
    "compact_paused", "stall_reader", "sdk_corrupt_restart", "sdk_kill", "etcd_restore",
    "replica_cut", "compact_cut", *CANARY_KINDS,
)
# where ``compact_cut`` compacts while one replica is cut off from etcd
COMPACT_AT = ("delete_at_applied+1", "applied+1", "resume_point")
# Bugs the suite found, each pinned by an xfail(strict) regression test: their violations are
# tagged ``known_bug`` and do not fail a run.  Remove an entry together with the test's xfail marker.
KNOWN_BUGS: dict[str, str] = {}  # none open: every bug found so far is fixed (docs/fault-suite.md)
APPLIED = "configcenter_applied_revision"
RESYNCS = "configcenter_mirror_resyncs_total"
TRUNCATED = "configcenter_mirror_ring_truncated_total"
DIVERGED = "configcenter_mirror_diverged_total"
OVERFLOWS = "configcenter_subscriber_overflows_total"
BLOB_PAD = 60_000
STALL_PUSHES = 150  # x 60 KB = 9 MB
FILL_WRITES = 240
RESUME_MARKER = "_resume.json"
SNAPSHOT_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*(~[a-z0-9][a-z0-9._-]*){0,3}\.json")  # <ns, / as ~>.json
FILL_PAD = 4000


FAULT_DEADLINE = 180.0  # seconds: the longest fault (a restore with its waits) takes well under a minute

class ChaosRun:
    def __init__(self, seed: int, faults: int, workdir: Path, *, kinds: tuple[str, ...] = FAULT_KINDS,
                 verbose: bool = False) -> None:
        self.seed = seed
        self.fault_count = faults
        self.kinds = kinds
        self.workdir = workdir
        self.verbose = verbose
        self.rng = random.Random(seed)
        self.topo = Topology(workdir)
        self.writer: Writer | None = None
        self.subs: list[RawSubscriber] = []
        self.fault_log: list[dict[str, Any]] = []
        self.violations: list[dict[str, Any]] = []
        self.canaries = Canaries([], random.Random(seed * 7919 + 3), str(seed), self.violations)
        self.relist_windows: list[tuple[str, int, int]] = []  # (replica url, low, high]
        self.corrupted: dict[tuple[str, int], set[str]] = {}
        self.extra_stats: Counter[str] = Counter()
        # etcd histories that restores ended (the current one is read at the end), and where each
        # ended in the writer's records
        self.epochs: list[Epoch] = []
        self.write_marks: list[int] = []
        self.current_epoch = (0.0, 0)  # (began, backup revision) of etcd's current history
        self.probes: list[StalledSubscriber] = []  # resumes from a discarded history (``etcd_restore``)
        self.window_probes: list[StalledSubscriber] = []  # resumes into a re-listed window (``compact_cut``)
        self.started = time.monotonic()

    def say(self, message: str) -> None:
        if self.verbose:
            print(f"[chaos seed={self.seed} {time.monotonic() - self.started:7.1f}s] {message}", file=sys.stderr,
                  flush=True)

    # -- the run ------------------------------------------------------------------
    async def run(self) -> dict[str, Any]:
        async with aiohttp.ClientSession() as http:
            try:
                await self.topo.start(http)
                self.say(f"topology up: replicas {self.topo.urls}")
                self.writer = Writer(self.topo.urls, self.topo.etcd.endpoints, self.topo.prefix,
                                     random.Random(self.seed * 7919 + 1), tag=str(self.seed))
                await self.writer.start(http)
                self.canaries.urls = self.topo.urls
                sub_rng = random.Random(self.seed * 7919 + 2)
                urls = self.topo.urls
                self.subs = [
                    RawSubscriber("raw-app", urls, ["app/"], sub_rng),
                    RawSubscriber("raw-app-other", urls[::-1], ["app/", "other/"], sub_rng),
                    # a patient reader: stays on a stopped replica for up to 8 s, so it also sees a
                    # replica's re-list after compaction live
                    RawSubscriber("raw-exact", urls, ["app/n0", "app/rt", "other/n0"], sub_rng, idle=8.0),
                ]
                for sub in self.subs:
                    sub.start(http)
                await asyncio.sleep(1.0)
                for i, kind in enumerate(self.schedule()):
                    t0 = time.monotonic()
                    record: dict[str, Any] = {"n": i, "kind": kind}
                    try:
                        record.update(await asyncio.wait_for(self.inject(kind, http), FAULT_DEADLINE) or {})
                    except TimeoutError:  # a fault that never ends: say where everything waits, do not hang
                        record["error"] = f"did not end within {FAULT_DEADLINE} s"
                        (self.workdir / f"hung-fault-{i}.txt").write_text(_task_stacks())
                        self.violations.append({"consumer": "harness", "kind": "fault_hung", "fault": record})
                    except Exception as exc:  # a fault that could not be carried out is a harness problem
                        record["error"] = f"{type(exc).__name__}: {exc}"[:300]
                        self.violations.append({"consumer": "harness", "kind": "fault_failed", "fault": record})
                    record["seconds"] = round(time.monotonic() - t0, 2)
                    self.fault_log.append(record)
                    self.say(f"fault {i + 1}/{self.fault_count} {kind}: {record}")
                    if not await self.recover(http, after=record):
                        break
                return await self.finish(http)
            finally:
                for sub in self.subs:
                    await sub.stop()
                if self.writer is not None:
                    await self.writer.close()
                for relay in self.topo.relays:
                    await relay.close()
                await asyncio.to_thread(self.topo.close)

    def schedule(self) -> list[str]:
        """Every kind once (shuffled), then random kinds: a short run still covers each kind."""
        first = list(self.kinds)
        self.rng.shuffle(first)
        rest = [self.rng.choice(self.kinds) for _ in range(max(0, self.fault_count - len(first)))]
        return (first + rest)[: self.fault_count]

    async def inject(self, kind: str, http: aiohttp.ClientSession) -> dict[str, Any] | None:
        faults: dict[str, Callable[[aiohttp.ClientSession], Awaitable[dict[str, Any] | None]]] = {
            "etcd_kill": self.etcd_kill, "etcd_kill_leader": self.etcd_kill_leader, "etcd_pause": self.etcd_pause,
            "replica_pause": self.replica_pause, "replica_kill": self.replica_kill,
            "compact_paused": self.compact_paused, "stall_reader": self.stall_reader,
            "sdk_corrupt_restart": self.sdk_corrupt_restart, "sdk_kill": self.sdk_kill,
            "etcd_restore": self.etcd_restore, "replica_cut": self.replica_cut, "compact_cut": self.compact_cut,
        }
        if kind in CANARY_KINDS:
            return await self.canaries.fault(kind, http)
        return await faults[kind](http)

    # -- faults -------------------------------------------------------------------
    async def _kill_member(self, member: Any) -> dict[str, Any]:
        etcd = self.topo.etcd
        await asyncio.to_thread(etcd.kill, member)
        down = self.rng.uniform(0.3, 2.0)
        await asyncio.sleep(down)
        await asyncio.to_thread(etcd.restart, member)
        return {"member": member.name, "down_s": round(down, 2)}

    async def etcd_kill(self, http: aiohttp.ClientSession) -> dict[str, Any]:
        leader = await self.topo.etcd.leader()
        followers = [m for m in self.topo.etcd.members if m is not leader]
        return await self._kill_member(self.rng.choice(followers))

    async def etcd_kill_leader(self, http: aiohttp.ClientSession) -> dict[str, Any]:
        leader = await self.topo.etcd.leader()
        if leader is None:
            return {"error": "no leader found", **await self._kill_member(self.rng.choice(self.topo.etcd.members))}
        return {"leader": True, **await self._kill_member(leader)}

    async def etcd_pause(self, http: aiohttp.ClientSession) -> dict[str, Any]:
        member = self.rng.choice(self.topo.etcd.members)
        leader = await self.topo.etcd.leader()
        pause = self.rng.uniform(0.5, 3.0)
        self.topo.etcd.pause(member)
        try:
            await asyncio.sleep(pause)
        finally:
            self.topo.etcd.resume(member)
        return {"member": member.name, "was_leader": member is leader, "paused_s": round(pause, 2)}

    async def replica_pause(self, http: aiohttp.ClientSession) -> dict[str, Any]:
        replica = self.rng.choice(self.topo.replicas)
        pause = self.rng.uniform(0.5, 4.0)
        replica.pause()
        try:
            await asyncio.sleep(pause)
        finally:
            replica.resume()
        return {"replica": replica.name, "paused_s": round(pause, 2)}

    async def replica_kill(self, http: aiohttp.ClientSession) -> dict[str, Any]:
        replica = self.rng.choice(self.topo.replicas)
        replica.kill()
        down = self.rng.uniform(0.1, 1.5)
        await asyncio.sleep(down)
        replica.start()
        return {"replica": replica.name, "down_s": round(down, 2)}

    async def compact_paused(self, http: aiohttp.ClientSession) -> dict[str, Any]:
        """Compact etcd while a replica is stopped: on return its watch resume point is gone."""
        assert self.writer is not None
        replica = self.rng.choice(self.topo.replicas)
        before = {r.name: await r.metrics(http) for r in self.topo.replicas}
        if any(APPLIED not in m for m in before.values()):
            return {"skipped": "a replica did not answer /metrics"}
        replica.pause()
        try:
            await asyncio.sleep(self.rng.uniform(0.3, 1.0))
            # enough changes that etcd gives up buffering for the stopped watcher (it becomes
            # "unsynced"), so the compaction below really cancels its watch
            await asyncio.gather(*[self._fill(f"fill/n{j}", FILL_WRITES // 4) for j in range(4)])
            compacted = await self.writer.current_revision()
            await self.writer.kv.compact(compacted, physical=True, timeout=10.0)
            await asyncio.sleep(self.rng.uniform(0.2, 0.8))
        finally:
            replica.resume()
        target = await self.writer.current_revision()
        await self._wait(lambda: self._applied_at_least(http, replica, target), 30, "paused replica catches up")
        return {"replica": replica.name, "compacted_at": compacted, "resyncs": await self._resyncs(http, before)}

    async def _resyncs(self, http: aiohttp.ClientSession, before: dict[str, dict[str, float]]) -> dict[str, int]:
        """Re-lists per replica since ``before`` (their metrics); a replica that could not replay its missed
        window exactly (or whose metrics are gone) gets a re-list window: (its url, applied before, now]."""
        assert self.writer is not None
        after = {r.name: await r.metrics(http) for r in self.topo.replicas}
        high = await self.writer.current_revision()
        resyncs = {}
        for r in self.topo.replicas:
            resyncs[r.name] = int(after[r.name].get(RESYNCS, 0) - before[r.name].get(RESYNCS, 0))
            if after[r.name].get(TRUNCATED, 0) > before[r.name].get(TRUNCATED, 0) or after[r.name].get(RESYNCS) is None:
                self.relist_windows.append((r.url, int(before[r.name][APPLIED]), high))
                self.extra_stats["truncated_windows"] += 1
        self.extra_stats["resyncs"] += sum(resyncs.values())
        return resyncs

    async def replica_cut(self, http: aiohttp.ClientSession) -> dict[str, Any]:
        """Cut one replica's etcd connection (its relay) while the writer goes on; the raw subscribers
        fail over meanwhile, some onto the cut replica, which serves its last view as stale."""
        assert self.writer is not None
        replica = self.rng.choice(self.topo.replicas)
        relay = self.topo.relay_of(replica)
        relay.cut()
        try:
            for sub in self.subs:
                sub.hop()
            await asyncio.sleep(self.rng.uniform(0.5, 3.0))
        finally:
            relay.restore()
        target = await self.writer.current_revision()
        caught_up = await self._wait(lambda: self._applied_at_least(http, replica, target), 30, "replica catches up")
        return {"replica": replica.name, "caught_up": caught_up}

    async def compact_cut(self, http: aiohttp.ClientSession) -> dict[str, Any]:
        """Cut one replica off etcd and compact at a chosen revision (``COMPACT_AT``): at a delete at its
        applied + 1 (etcd's watch drops a delete at the revision it is opened at, etcd-io/etcd#18089),
        at its applied + 1, or at a subscriber's resume point; subscribers fail over meanwhile.  Once the
        replica is back, a probe resumes on it from just below the compaction (inside its missed window)."""
        assert self.writer is not None
        replica = self.rng.choice(self.topo.replicas)
        where = self.rng.choice(COMPACT_AT)
        before = {r.name: await r.metrics(http) for r in self.topo.replicas}
        if any(APPLIED not in m for m in before.values()):
            return {"skipped": "a replica did not answer /metrics"}
        relay = self.topo.relay_of(replica)
        try:
            at, probe_id = await self._cut_and_compact(http, replica, where)
        finally:
            relay.restore()
            self.writer.resume()
        target = await self.writer.current_revision()
        await self._wait(lambda: self._applied_at_least(http, replica, target), 30, "cut replica catches up")
        probe = await self._probe(replica, probe_id) if probe_id else "no probe"
        return {"replica": replica.name, "where": where, "compacted_at": at, "probe": probe,
                "resyncs": await self._resyncs(http, before)}

    async def _cut_and_compact(self, http: aiohttp.ClientSession, replica: Replica, where: str,
                               ) -> tuple[int | None, str | None]:
        """Cut ``replica``'s relay, compact at ``where``: (the compaction revision, a resume id below it)."""
        assert self.writer is not None
        if where == "delete_at_applied+1":  # quiet and caught up, so the delete lands at its applied + 1
            await self.writer.stop()
            now = await self.writer.current_revision()
            await self._wait(lambda: self._applied_at_least(http, replica, now), 10, "replica caught up")
        self.topo.relay_of(replica).cut()
        for sub in self.subs:
            sub.hop()
        applied = int((await replica.metrics(http)).get(APPLIED, 0))
        cluster = f"{(await self.writer.kv.get(b'x', count_only=True, timeout=5.0)).header.cluster_id:x}"
        if where == "delete_at_applied+1":
            deleted = await self._delete_some_namespace()
            self.writer.resume()
            at = deleted
        elif where == "applied+1":
            await self._wait(self._past_applied(applied + 1), 10, "a write after the cut")
            at = applied + 1
        else:
            at = revision_of_id(self.rng.choice(self.subs).last_id)
        await asyncio.sleep(self.rng.uniform(0.2, 1.0))  # later writes
        if not at:
            return None, None
        try:
            await self.writer.kv.compact(at, physical=True, timeout=10.0)
        except Exception as exc:  # compacted beyond it already, or a future revision: still a cut
            self.extra_stats["compactions_refused"] += 1
            self.say(f"compaction at {at} refused: {exc}")
            return None, None
        await asyncio.sleep(self.rng.uniform(0.2, 0.8))
        return at, f"{cluster}:{at - 1}"

    def _past_applied(self, revision: int) -> Callable[[], Awaitable[bool]]:
        async def past() -> bool:
            return await self._past(revision)
        return past

    async def _delete_some_namespace(self) -> int | None:
        """Delete a namespace that holds a document (through the API): its revision, or None."""
        assert self.writer is not None
        for ns in self.rng.sample(CONFIG_NS, len(CONFIG_NS)):
            rec = await self.writer.delete(ns)
            if rec.get("outcome") == "ack":
                return int(rec["rev"])
        return None

    async def _probe(self, replica: Replica, resume_id: str) -> str:
        """Resume on ``replica`` from ``resume_id`` (below a compaction it re-listed over): a consumer checked
        like any other (``window-probe-N``); it must get exactly the rest, or a reset."""
        probe = StalledSubscriber(f"window-probe-{len(self.window_probes)}", replica.url, ["app/", "other/"])
        self.window_probes.append(probe)
        target = await self._current_or_zero()
        try:
            await probe.open(resume=resume_id)
            done = await probe.read_until(lambda rec: (rec.get("pos") or 0) >= target, 10)
        finally:
            await probe.close()
        return f"resumed from {resume_id}: {'caught up' if done else 'NOT caught up'}"

    async def _current_or_zero(self) -> int:
        assert self.writer is not None
        try:
            return await self.writer.current_revision()
        except Exception:
            return 0

    async def etcd_restore(self, http: aiohttp.ClientSession) -> dict[str, Any]:
        """Back up etcd, let the writer go on, then lose every member's data and restore the backup:
        etcd's revision goes back, acknowledged writes after the backup are gone, and its new history
        reuses their revision numbers.  The writer pauses across the restore (so etcd's old history
        can be read whole) and resumes once every replica has noticed."""
        assert self.writer is not None
        cluster = self.topo.etcd.cluster
        backup = self.workdir / f"backup-{len(self.fault_log)}.db"
        backup_revision = await asyncio.to_thread(cluster.save_snapshot, backup)
        await asyncio.sleep(self.rng.uniform(0.5, 2.0))  # acknowledged writes the restore will lose
        await self.writer.stop()
        await asyncio.sleep(0.5)  # the subscribers receive the last writes
        # every replica sees the whole history about to be discarded: the resume probe below relies on
        # it (a replica that never saw a revision cannot know a restore discarded it, architecture.md)
        last = await self.writer.current_revision()
        for replica in self.topo.replicas:
            await self._wait(lambda r=replica: self._applied_at_least(http, r, last), 10, "replica caught up")
        stale_id = self.subs[0].last_id  # a resume id in the history about to be discarded
        # a service down across the restore, started again once etcd's new history has passed the
        # resume point it persisted: its first resume must get a reset too
        sleeper = self.rng.choice(self.topo.drivers)
        await asyncio.to_thread(sleeper.kill)
        sleeper.poll()
        sleeper_revision = int((sleeper.last_status or {}).get("rev", 0))
        before = {r.name: (await r.metrics(http)).get(DIVERGED, 0) for r in self.topo.replicas}
        old = await self._read_truth()
        self.epochs.append(Epoch(old, *self.current_epoch))
        self.write_marks.append(len(self.writer.records))
        self.relist_windows = []
        self.current_epoch = (time.time(), backup_revision)
        try:
            await asyncio.to_thread(cluster.restore, backup)
        finally:
            self.writer.forget_after(backup_revision)

        async def followed() -> bool:
            after = {r.name: (await r.metrics(http)).get(DIVERGED, 0) for r in self.topo.replicas}
            return all(after[name] > count for name, count in before.items())

        if not await self._wait(followed, 30, "every replica noticed the restore"):
            self.violations.append({"consumer": "system", "kind": "replica_missed_restore",
                                    "backup_revision": backup_revision, "old_revision": old.final_rev})
        self.writer.resume()
        probe = await self._resume_in_discarded_history(http, stale_id, backup_revision)
        await self._wait(lambda: self._past(sleeper_revision), 30, "new history passes the sleeper's resume point")
        await self._start_driver(sleeper)
        return {"backup_revision": backup_revision, "discarded_up_to": old.final_rev, "probe": probe,
                "sleeper": sleeper.name, "sleeper_resume_point": sleeper_revision}

    async def _resume_in_discarded_history(self, http: aiohttp.ClientSession, stale_id: str | None,
                                           backup_revision: int) -> str:
        """Once etcd's new history has passed ``stale_id``'s revision, resume from it on each replica:
        the number now also names a release of the new history, and only a reset is right (a
        consumer checked like any other, ``resume-probe-N``)."""
        stale = revision_of_id(stale_id) or 0
        assert self.writer is not None
        if stale <= backup_revision:
            return "no id in the discarded history"
        if not await self._wait(lambda: self._past(stale), 30, "new history passes the stale id"):
            return "new history did not pass the stale id"
        for replica in self.topo.replicas:
            await self._wait(lambda r=replica: self._applied_at_least(http, r, stale + 1), 10, "replica catches up")
            probe = StalledSubscriber(f"resume-probe-{len(self.probes)}", replica.url, ["app/", "other/"])
            self.probes.append(probe)
            try:
                await probe.open(resume=stale_id)
                await probe.read_until(lambda rec: rec["k"] in ("reset", "change"), 10)
            finally:
                await probe.close()
        return f"resumed from {stale_id} on every replica"

    async def _past(self, revision: int) -> bool:
        assert self.writer is not None
        try:
            return await self.writer.current_revision() > revision
        except Exception:  # the writer's etcd client is still reconnecting after the restore
            return False

    async def _read_truth(self, final_rev: int | None = None) -> Truth:
        """etcd's history, documents and revision now (the writer stopped), with this history's re-list windows."""
        assert self.writer is not None
        final_rev = final_rev or await self.writer.current_revision()
        root = f"{self.writer.layout.prefix}history/".encode()
        history = await self.writer.read_range("history/")
        docs = await self.writer.read_range("docs/")
        return Truth(entries_from_history(history, root), _docs_state(docs), final_rev, self.relist_windows)

    async def _fill(self, ns: str, count: int) -> None:
        assert self.writer is not None
        for _ in range(count):
            await self.writer.txn([ns], pad=FILL_PAD)

    async def _applied_at_least(self, http: aiohttp.ClientSession, replica: Replica, revision: int) -> bool:
        ready = await replica.readyz(http)
        return ready is not None and int(ready.get("revision", 0)) >= revision

    async def stall_reader(self, http: aiohttp.ClientSession) -> dict[str, Any]:
        """A reader with a 4 KB receive window stops reading until its queue overflows: it must get a reset."""
        assert self.writer is not None
        writer = self.writer
        replica = self.rng.choice(self.topo.replicas)
        sub = StalledSubscriber(f"stall-{len(self.fault_log)}", replica.url, ["blob/"])
        writer.wide_allowed = False
        result: dict[str, Any] = {"replica": replica.name}
        try:
            await sub.open()
            await sub.read_until(lambda rec: rec["k"] == "reset", 5)
            before = (await replica.metrics(http)).get(OVERFLOWS, 0)
            # a fixed volume, more than the kernel's socket buffers (~4 MB) plus a full queue of 32
            # (the overflow counter is per replica: other subscribers move it too, so it cannot
            # tell when this one overflowed)
            for i in range(STALL_PUSHES):
                await writer.push(f"blob/n{i % 3}", url=replica.url, pad=BLOB_PAD, via="blob")
            overflows = int((await replica.metrics(http)).get(OVERFLOWS, 0) - before)
            tail = [await writer.push(f"blob/n{k}", url=replica.url, via="blob") for k in range(3)]
            last = max((r["rev"] for r in tail if r.get("outcome") == "ack"), default=0)
            got_reset = await sub.read_until(lambda rec: rec["k"] == "reset", 30)
            caught_up = await sub.read_until(lambda rec: (rec.get("pos") or 0) >= last, 15) if last else False
            result.update(pushes=STALL_PUSHES, overflows=overflows, reset=got_reset, caught_up=caught_up)
            if not got_reset:
                self.violations.append({"consumer": sub.name, "kind": "stalled_reader_got_no_reset", **result})
            await self._check_blob_stream(sub)
            self.extra_stats["stalled_resets"] += sum(1 for r in sub.records if r["k"] == "reset") - 1
        finally:
            await sub.close()
            writer.wide_allowed = True
            # drop the blobs (documents and history) so later ring rebuilds stay small
            for sub_prefix in ("docs/blob/", "history/blob/"):
                start = f"{writer.layout.prefix}{sub_prefix}".encode()
                with contextlib.suppress(Exception):
                    await writer.kv.delete(start, range_end=prefix_range_end(start), timeout=5.0)
        return result

    async def _check_blob_stream(self, sub: StalledSubscriber) -> None:
        assert self.writer is not None
        root = f"{self.writer.layout.prefix}history/".encode()
        entries = entries_from_history(await self.writer.read_range("history/blob/", page=20), root)
        docs = await self.writer.read_range("docs/blob/", page=20)
        truth = Truth(entries, _docs_state(docs), max((e.rev for e in entries), default=0), self.relist_windows)
        check = StreamCheck(sub.name, selector_matcher(["blob/"]), truth, self.violations)
        for rec in sub.records:
            check.feed(rec)
        check.finish(final=True)
        self.extra_stats["stall_changes_checked"] += check.stats["changes"]

    async def sdk_kill(self, http: aiohttp.ClientSession) -> dict[str, Any]:
        """SIGKILL an SDK process and start it again on its intact snapshots (and resume point, if any)."""
        return await self.sdk_corrupt_restart(http, corrupt_files=False)

    async def sdk_corrupt_restart(self, http: aiohttp.ClientSession, *, corrupt_files: bool = True,
                                  ) -> dict[str, Any]:
        """Stop an SDK process (SIGTERM or SIGKILL), corrupt one snapshot file, start it again."""
        driver = self.rng.choice(self.topo.drivers)
        graceful = corrupt_files and self.rng.random() < 0.5
        await asyncio.to_thread(driver.stop if graceful else driver.kill)
        files = sorted(p for p in driver.cache_dir.glob("*.json") if SNAPSHOT_NAME.fullmatch(p.name))
        if not corrupt_files:
            files = []
        resume_marker = driver.cache_dir / RESUME_MARKER
        if files and resume_marker.exists() and self.rng.random() < 0.25:
            files = [resume_marker]  # the SDK's persisted resume point, if this SDK version keeps one
        result: dict[str, Any] = {"driver": driver.name, "graceful": graceful}
        incarnation = sum(1 for r in driver.records() if r.get("k") == "start")
        if files:
            path = self.rng.choice(files)
            how = self.rng.choice(["truncate", "flip", "garbage", "empty"])
            corrupt(path, how, self.rng)
            if path != resume_marker:
                ns = path.name[: -len(".json")].replace("~", "/")
                self.corrupted.setdefault((driver.name, incarnation), set()).add(ns)
            result.update(file=path.name, how=how)
        offset = len(driver.log_text())
        driver.poll()  # consume the old process's records, so "live" below is the new one's
        await self._start_driver(driver)
        if files:
            mentions = ("resume marker", RESUME_MARKER) if result["file"] == RESUME_MARKER else (result["file"],)
            warned = [line for line in driver.log_text()[offset:].splitlines()
                      if "WARNING" in line and any(word in line for word in mentions)]
            result["warned"] = bool(warned)
            if not warned:
                self.violations.append({"consumer": driver.name, "kind": "corrupt_snapshot_not_reported",
                                        **result})
        return result

    async def _start_driver(self, driver: SdkDriver) -> None:
        """Start a stopped SDK process (its old records consumed) and wait until the new one is live."""
        driver.last_status = None
        driver.start()
        await self._wait(lambda: _driver_live(driver), 30, f"{driver.name} live after restart")

    # -- recovery, quiesce, check -------------------------------------------------
    async def _wait(self, check: Callable[[], Awaitable[bool] | bool], timeout: float, what: str) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = check()
            if not isinstance(result, bool):
                result = await result
            if result:
                return True
            await asyncio.sleep(0.1)
        self.say(f"timed out: {what}")
        return False

    async def recover(self, http: aiohttp.ClientSession, after: dict[str, Any], timeout: float = 45.0) -> bool:
        """Everything healthy again (processes that died by themselves are reported and restarted)."""
        for proc in [*self.topo.replicas, *self.topo.drivers]:
            if proc.proc is not None and proc.proc.poll() is not None:
                self.violations.append({"consumer": proc.name, "kind": "process_died",
                                        "returncode": proc.proc.returncode, "after_fault": after,
                                        "log_tail": proc.log_text()[-2000:]})
                proc.start()

        async def healthy() -> bool:
            etcd_ok = all(await asyncio.to_thread(lambda: [self.topo.etcd.healthy(m) for m in self.topo.etcd.members]))
            replicas_ok = all([await r.readyz(http) for r in self.topo.replicas])
            for d in self.topo.drivers:
                d.poll()
            return etcd_ok and replicas_ok and all(_driver_live(d) for d in self.topo.drivers)

        if not await self._wait(healthy, timeout, "recovery"):
            self.violations.append({"consumer": "system", "kind": "no_recovery", "timeout_s": timeout,
                                    "after_fault": after,
                                    "replicas": {r.name: await r.readyz(http) for r in self.topo.replicas},
                                    "drivers": {d.name: d.last_status for d in self.topo.drivers}})
            return False
        await asyncio.sleep(self.rng.uniform(0.3, 1.0))
        return True

    async def finish(self, http: aiohttp.ClientSession) -> dict[str, Any]:
        writer = self.writer
        assert writer is not None
        await writer.stop()
        final_rev = await writer.current_revision()
        self.say(f"quiesce at etcd revision {final_rev}")

        async def quiet() -> bool:
            for d in self.topo.drivers:
                d.poll()
            replicas = [await r.readyz(http) for r in self.topo.replicas]
            return (all(r is not None and r.get("revision", 0) >= final_rev for r in replicas)
                    and all(s.pos >= final_rev for s in self.subs)
                    and all((d.last_status or {}).get("rev", 0) >= final_rev for d in self.topo.drivers))

        await self._wait(quiet, 30, "quiet")
        await asyncio.sleep(0.5)
        for sub in self.subs:
            await sub.stop()
        for driver in self.topo.drivers:
            await asyncio.to_thread(driver.stop)
        truth = await self._read_truth(final_rev)
        for replica in self.topo.replicas:
            await asyncio.to_thread(replica.stop)
        return self.check([*self.epochs, Epoch(truth, *self.current_epoch)])

    def check(self, epochs: list[Epoch]) -> dict[str, Any]:
        """Every consumer against etcd's history (one per restore, ``epochs``), every write against
        the history it was made in."""
        assert self.writer is not None
        v = self.violations
        truth = epochs[-1].truth
        _dump(self.workdir / "writes.jsonl", self.writer.records)
        _dump(self.workdir / "canaries.jsonl", self.canaries.records)
        for sub in [*self.subs, *self.probes, *self.window_probes]:
            _dump(self.workdir / f"{sub.name}.jsonl", sub.records)
        writes: Counter[str] = Counter()
        bounds = [0, *self.write_marks, len(self.writer.records)]
        for i, epoch in enumerate(epochs):
            _check_truth(epoch.truth, v)
            writes.update(_check_writes(self.writer.records[bounds[i]:bounds[i + 1]], epoch.truth, v))
            if i + 1 < len(epochs):
                writes["acknowledged_then_lost_to_restore"] += _lost_to_restore(
                    self.writer.records[bounds[i]:bounds[i + 1]], epochs[i + 1].backup_revision)
        canary_ops = check_canary_ops(self.canaries.records, [e.truth for e in epochs], v)
        consumers: dict[str, dict[str, Any]] = {}
        for sub in [*self.subs, *self.probes, *self.window_probes]:
            # a window probe lives in the etcd history it was opened in; a restore's probe starts in the
            # discarded one and must follow the restore at its reset
            started = sub.records[0]["t"] if sub in self.window_probes and sub.records else 0.0
            check = EpochCheck(sub.name, selector_matcher(sub.selectors), epochs, v, started=started)
            for rec in sub.records:
                check.feed(rec)
            check.finish(final=sub in self.subs)
            consumers[sub.name] = dict(check.stats)
        for driver in self.topo.drivers:
            consumers.update(self._check_driver(driver, epochs))
        logs = {p.name: scan_log(p.name, p.log_text(), v) for p in [*self.topo.replicas, *self.topo.drivers]}
        total = Counter[str]()
        for stats in consumers.values():
            total.update({k: n for k, n in stats.items() if isinstance(n, int)})
        for violation in v:
            bug = known_bug(violation)
            if bug is not None:
                violation["known_bug"] = bug
        unexplained = [x for x in v if "known_bug" not in x]
        return {
            "seed": self.seed,
            "seconds": round(time.monotonic() - self.started, 1),
            "etcd": self.topo.etcd_version,
            "faults_run": len(self.fault_log),
            "faults": dict(Counter(f["kind"] for f in self.fault_log)),
            "writes": dict(writes),
            "canary_ops": canary_ops,
            "tracks_checked": total["tracks_checked"],
            "restores": len(epochs) - 1,
            "restores_followed": total["restores_followed"],
            "etcd_final_revision": truth.final_rev,
            "releases_in_etcd": len(truth.entries),
            "changes_checked": total["changes"] + self.extra_stats["stall_changes_checked"],
            "callbacks_checked": total["callbacks"],
            "resets": total["resets"] + self.extra_stats["stalled_resets"],
            "stalled_reader_resets": self.extra_stats["stalled_resets"],
            "superseded_by_reset": total["superseded_by_reset"],
            "superseded_by_relist": total["superseded_by_relist"],
            "resyncs": self.extra_stats["resyncs"],
            "relist_deletions": total["relist_deletions"],
            "relist_windows": [w for epoch in epochs for w in epoch.truth.relist_windows],
            "log_exceptions": logs,
            "consumers": consumers,
            "violations_by_kind": dict(Counter(x["kind"] for x in v)),
            "known_bugs": {bug: sum(1 for x in v if x.get("known_bug") == bug) for bug in KNOWN_BUGS},
            "unexplained_by_kind": dict(Counter(x["kind"] for x in unexplained)),
            "unexplained": unexplained,
            "violations": v,
            "fault_log": self.fault_log,
            "workdir": str(self.workdir),
        }

    def _check_driver(self, driver: SdkDriver, epochs: list[Epoch]) -> dict[str, dict[str, Any]]:
        out = {}
        match = selector_matcher(driver.selectors)
        runs = split_incarnations(driver.records())
        missed: set[tuple[str, int]] = set()
        for i, records in enumerate(runs):
            name = f"{driver.name}#{i}"
            # what it starts from (disk snapshots, resume point) was written by the run before it
            started = float((runs[i - 1] if i else records)[-1 if i else 0].get("t", 0.0))
            last = i == len(runs) - 1
            final = next((r for r in records if r.get("k") == "final"), None)
            if last and final is None:
                self.violations.append({"consumer": name, "kind": "sdk_no_final_record"})
            stream = EpochCheck(name, match, epochs, self.violations, started=started)
            callbacks = CallbackCheck(name, match, epochs[epoch_at(epochs, started)].truth, self.violations,
                                      self.corrupted.get((driver.name, i), ()), missed, final_truth=epochs[-1].truth,
                                      member=membership(driver.instance_id, driver.labels))
            for rec in records:
                stream.feed(rec)
                callbacks.feed(rec)
            stream.finish(final=last and final is not None)
            callbacks.finish(final["state"] if last and final is not None else None, exited=not last)
            stats = {**stream.stats, **callbacks.stats}
            if final is not None:
                stats.update(sdk_gaps=final.get("gaps"), sdk_duplicates=final.get("dups"),
                             sdk_reconnects=final.get("reconnects"))
            out[name] = stats
        return out


def _dump(path: Path, records: list[dict[str, Any]]) -> None:
    with open(path, "w") as f:
        for rec in records:
            f.write(json.dumps(rec, default=str) + "\n")


def known_bug(violation: dict[str, Any]) -> str | None:
    """The ``KNOWN_BUGS`` key a violation is a symptom of, if any (a fixed bug's symptom is a violation)."""
    bug = bug_signature(violation)
    return bug if bug in KNOWN_BUGS else None


def bug_signature(violation: dict[str, Any]) -> str | None:
    """The bug (known or fixed) a violation looks like a symptom of (narrow signatures only)."""
    kind = violation["kind"]
    if kind == "callback_missing" and violation.get("same_revision"):
        return "sdk-same-revision"
    if kind in ("callbacks_final_state_differs", "sdk_final_state_differs") and violation.get(
            "missed_same_revision_change"):
        return "sdk-same-revision"
    if kind == "lost" and violation.get("resumed_mid_transaction"):
        return "resume-mid-transaction"
    if kind == "delete_of_absent_namespace_in_history":
        return "concurrent-deletes"
    excerpt = violation.get("excerpt", "")
    if kind == "exception_in_log" and ("aclose(): asynchronous generator is already running" in excerpt
                                       or "_consume_request_iterator" in excerpt):
        return "watch-request-iterator"
    return None


def _docs_state(kvs: list[Any]) -> dict[str, tuple[int, str | None]]:
    """``docs/<ns>`` key-values as {ns: (mod_revision, marker)}."""
    return {kv.key.decode().rpartition("docs/")[2]: (int(kv.mod_revision), marker(json.loads(kv.value).get("doc")))
            for kv in kvs}


def _driver_live(driver: SdkDriver) -> bool:
    driver.poll()
    return driver.running and driver.last_status is not None and driver.last_status.get("mode") == "live"


def corrupt(path: Path, how: str, rng: random.Random) -> None:
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: max(1, len(data) // 2)])
    elif how == "flip" and data:
        i = rng.randrange(len(data))
        path.write_bytes(data[:i] + bytes([data[i] ^ 0x20]) + data[i + 1:])
    elif how == "garbage":
        path.write_bytes(data[:-20] + b"garbage")
    else:
        path.write_bytes(b"")


def _check_truth(truth: Truth, v: list[dict[str, Any]]) -> None:
    """etcd's own consistency: the last history entry of each namespace is its current document."""
    for ns, items in truth.by_ns.items():
        last = items[-1]
        want = (last.rev, last.m) if last.op == "put" else None
        if truth.final.get(ns) != want:
            v.append({"consumer": "etcd", "kind": "history_disagrees_with_docs", "ns": ns,
                      "history": [last.rev, last.op, last.m], "docs": truth.final.get(ns)})
    for ns in truth.final:
        if ns not in truth.by_ns:
            v.append({"consumer": "etcd", "kind": "document_without_history", "ns": ns})
    for e in truth.noop_deletes:
        v.append({"consumer": "etcd", "kind": "delete_of_absent_namespace_in_history", "ns": e.ns, "rev": e.rev})


def _task_stacks() -> str:
    """Every asyncio task of this loop and where it waits (for a fault that hung)."""
    out = []
    for task in asyncio.all_tasks():
        out.append(f"--- {task.get_name()}: {task.get_coro()!r}")
        out += [f"  {frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}" for frame in task.get_stack()]
    return "\n".join(out)


def _lost_to_restore(records: list[dict[str, Any]], backup_revision: int) -> int:
    """Acknowledged writes above the revision of the backup etcd was then restored from."""
    return sum(1 for rec in records if rec.get("outcome") == "ack" and rec.get("rev", 0) > backup_revision)


def _check_writes(records: list[dict[str, Any]], truth: Truth, v: list[dict[str, Any]]) -> dict[str, Any]:
    """Every acknowledged write is in etcd at its revision; count how many ambiguous ones committed."""
    counts: Counter[str] = Counter()
    committed_markers = {e.m for e in truth.entries if e.m is not None}
    for rec in records:
        if rec.get("via") == "blob":
            counts[f"blob_{rec.get('outcome')}"] += 1
            continue
        label = "txn" if rec.get("via") == "txn" else rec["op"]
        counts[f"{label}_{rec.get('outcome')}"] += 1
        if rec.get("outcome") == "ambiguous" and rec.get("wid") is not None:
            wids = rec["wid"] if isinstance(rec["wid"], list) else [rec["wid"]]
            counts["ambiguous_committed"] += any(w in committed_markers for w in wids)
        if rec.get("outcome") != "ack":
            continue
        wids = rec["wid"] if isinstance(rec["wid"], list) else [rec["wid"]] * len(rec["ns"])
        for ns, wid in zip(rec["ns"], wids, strict=True):
            entry: Entry | None = truth.by_key.get((ns, rec["rev"]))
            if rec["op"] == "delete":
                ok = entry is not None and entry.op == "delete"
            elif rec["op"] == "rollback":
                target = truth.by_key.get((ns, rec["target"]))
                ok = entry is not None and entry.op == "put" and target is not None and entry.m == target.m
            else:
                ok = entry is not None and entry.op == "put" and entry.m == wid
            if not ok:
                v.append({"consumer": "writer", "kind": "acknowledged_write_not_in_etcd", "write": rec,
                          "ns": ns, "etcd": None if entry is None else [entry.op, entry.m]})
        counts["acknowledged"] += 1
    return dict(counts)


async def run_chaos(seed: int, faults: int, workdir: Path, *, verbose: bool = False,
                    kinds: tuple[str, ...] = FAULT_KINDS) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    report = await ChaosRun(seed, faults, workdir, kinds=kinds, verbose=verbose).run()
    (workdir / "report.json").write_text(json.dumps(report, indent=1, default=str))
    return report


def summary(report: dict[str, Any], examples: int = 0) -> str:
    """A few human lines: the numbers the docs quote (and ``examples`` violations of each kind)."""
    lines = [
        f"seed {report['seed']}: {report['faults_run']} faults in {report['seconds']} s "
        f"({report['etcd']}, final revision {report['etcd_final_revision']}, "
        f"{report['releases_in_etcd']} releases)",
        "  faults: " + ", ".join(f"{k}={n}" for k, n in sorted(report["faults"].items())),
        "  writes: " + ", ".join(f"{k}={n}" for k, n in sorted(report["writes"].items())),
        f"  changes checked {report['changes_checked']}, callbacks checked {report['callbacks_checked']}, "
        f"resets {report['resets']} (stalled reader {report['stalled_reader_resets']}), "
        f"superseded by reset {report['superseded_by_reset']}, by re-list {report['superseded_by_relist']}, "
        f"resyncs {report['resyncs']} (re-list deletions delivered {report['relist_deletions']})",
        f"  etcd restores {report['restores']} (followed by consumers {report['restores_followed']} times, "
        f"acknowledged writes lost to them {report['writes'].get('acknowledged_then_lost_to_restore', 0)})",
        "  canary ops: " + ", ".join(f"{k}={n}" for k, n in sorted(report.get("canary_ops", {}).items()))
        + f"; SDK tracks checked {report.get('tracks_checked', 0)}",
        f"  violations: {len(report['violations'])} {report['violations_by_kind']}",
        f"  of which known bugs: {report['known_bugs']}",
        f"  UNEXPLAINED: {len(report['unexplained'])} {report['unexplained_by_kind']}",
    ]
    for kind in report["unexplained_by_kind"]:
        for violation in [x for x in report["unexplained"] if x["kind"] == kind][:examples]:
            lines.append(f"    {json.dumps(violation, default=str)[:1500]}")
    return "\n".join(lines)
