"""The operator console (``/ui/``) in a real browser: Playwright driving Debian's Chromium.

(Its static files, their headers and ``/v1/whoami`` without a browser: ``test_console_api.py``.)

One server (on the session's etcd, with ``read_requires_token`` on, so every read and the
watch need the token the console was given) and one browser serve the whole module; each
test works on namespaces of its own.  Screenshots of every page go to
``test-artifacts/console/`` (gitignored).  Chromium: ``$CONFIGCENTER_CHROMIUM`` or
``/usr/bin/chromium`` (``apt-get install chromium``; ``.ci/run`` installs it).
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, async_playwright, expect

from configcenter.cli.embedded_etcd import EtcdCluster
from configcenter.server.security import Principal
from helpers import READER, TEST_PRINCIPALS, WRITER, RunningServer, server_settings, start_server

pytestmark = pytest.mark.asyncio(loop_scope="module")

ROOT = Path(__file__).resolve().parents[3]
ARTIFACTS = ROOT / "test-artifacts" / "console"
CHROMIUM = os.environ.get("CONFIGCENTER_CHROMIUM", "/usr/bin/chromium")
BOB = "oncall-bob-token"
SAM = "scoped-sam-token"  # a writer for uiscoped/ only
PRINCIPALS = (*TEST_PRINCIPALS, Principal.from_token("oncall-bob", BOB, "writer"),
              Principal.from_token("scoped-sam", SAM, "writer", ["uiscoped/"]))
ROUTES = {
    "service": "payment", "hash_seed": "payment-v1",
    "rules": [
        {"id": "beta-header", "match": {"headers": [{"name": "x-release", "exact": "v2-beta"}]},
         "route": {"cluster": "payment-canary"}},
        {"id": "beta-users", "match": {"percent": {"header": "x-user-id", "value": 10}},
         "route": {"cluster": "payment-canary"}},
    ],
    "default": {"cluster": "payment-stable"},
}
expect.set_options(timeout=10_000)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def srv(etcd: EtcdCluster) -> AsyncIterator[RunningServer]:
    server = await start_server(server_settings(etcd, tokens=PRINCIPALS, read_requires_token=True), etcd)
    yield server
    await server.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"the console tests need Chromium at {CHROMIUM}: apt-get install chromium "
                    "(or set CONFIGCENTER_CHROMIUM)")
    async with async_playwright() as pw:
        launched = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield launched
        await launched.close()


@pytest_asyncio.fixture(loop_scope="module")
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    tab = await context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    yield tab
    await context.close()
    assert not errors, f"JavaScript errors in the console: {errors}"


@pytest_asyncio.fixture(loop_scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


def fresh(name: str) -> str:
    return f"ui{uuid.uuid4().hex[:8]}/{name}"


async def push(http: aiohttp.ClientSession, srv: RunningServer, ns: str, doc: dict[str, Any], *, kind: str = "config",
               message: str = "", token: str = WRITER) -> dict[str, Any]:
    async with http.put(f"{srv.url}/v1/namespaces/{ns}", json={"kind": kind, "doc": doc, "message": message},
                        headers=srv.auth(token)) as resp:
        assert resp.status in (200, 201), await resp.text()
        body: dict[str, Any] = await resp.json()
        return body


async def get(http: aiohttp.ClientSession, srv: RunningServer, path: str, token: str = WRITER) -> Any:
    async with http.get(f"{srv.url}{path}", headers=srv.auth(token)) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def login(page: Page, srv: RunningServer, token: str = WRITER, at: str = "") -> None:
    await page.goto(f"{srv.url}/ui/{at}")
    await page.fill("#token", token)
    await page.click("#sign-in")
    await expect(page.locator("#who-principal")).to_be_visible()


async def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.evaluate("window.scrollTo(0, 0)")  # the sticky header stays on top in a full-page shot
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


async def cli(srv: RunningServer, *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "configcenter", *args, "--server", srv.url, "--token", WRITER,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    return out.decode()


# --------------------------------------------------------------------------- in the browser


async def test_login_list_and_live_cli_push(srv: RunningServer, http: aiohttp.ClientSession, page: Page,
                                           tmp_path: Path) -> None:
    ns = fresh("config")
    first = await push(http, srv, ns, {"log_level": "info"}, message="first")
    await page.goto(f"{srv.url}/ui/")
    await page.click("#anonymous")  # reads need a token on this server: refused
    await expect(page.locator("#login-error")).to_contain_text("needs a token")
    await page.fill("#token", "not-a-token")
    await page.click("#sign-in")
    await expect(page.locator("#login-error")).to_have_text("unknown token")
    await page.fill("#token", WRITER)
    await page.click("#sign-in")
    await expect(page.locator("#who-principal")).to_have_text("test-writer")
    await expect(page.locator("#who-role")).to_have_text("admin")
    await page.fill("#filter-prefix", ns.split("/")[0] + "/")
    row = page.locator(f"tr[data-ns='{ns}']")
    await expect(row.locator(".c-revision")).to_have_text(str(first["revision"]))
    await expect(row.locator(".c-principal")).to_contain_text("test-writer")
    await expect(row.locator(".badge.live")).to_have_count(0)

    doc = tmp_path / "config.yaml"
    doc.write_text("log_level: debug\n")
    await cli(srv, "push", ns, str(doc), "--kind", "config", "-m", "from the CLI")
    current = await get(http, srv, f"/v1/namespaces/{ns}")
    await expect(row.locator(".badge.live")).to_be_visible()  # no reload: the watch brought it
    await expect(row.locator(".c-revision")).to_have_text(str(current["revision"]))
    await expect(row.locator(".c-message")).to_have_text("from the CLI")
    await page.fill("#filter-prefix", "")
    await shot(page, "namespaces")
    await page.reload()  # the token survives a reload of the tab (sessionStorage)
    await expect(page.locator("#who-principal")).to_have_text("test-writer")


async def test_edit_and_push(srv: RunningServer, http: aiohttp.ClientSession, page: Page) -> None:
    ns = fresh("config")
    await push(http, srv, ns, {"log_level": "info", "pool": {"size": 4}})
    await login(page, srv, at=f"#/ns/{ns}")
    await expect(page.locator("#doc-view")).to_contain_text("size: 4")
    await page.click("#edit")
    editor = page.locator("#doc-editor")
    await editor.fill((await editor.input_value()).replace("size: 4", "size: 8"))
    await page.fill("#push-message", "bigger pool")
    await shot(page, "document-edit")
    await page.click("#push")
    await expect(page.locator("#doc-view")).to_contain_text("size: 8")
    current = await get(http, srv, f"/v1/namespaces/{ns}")
    assert current["doc"] == {"log_level": "info", "pool": {"size": 8}}
    assert (current["message"], current["principal"], current["version"]) == ("bigger pool", "test-writer", 2)
    await expect(page.locator(".facts")).to_contain_text(str(current["revision"]))
    await shot(page, "document")


async def test_validation_error_shown_at_its_line(srv: RunningServer, http: aiohttp.ClientSession,
                                                  page: Page) -> None:
    ns = fresh("routes")
    before = await push(http, srv, ns, ROUTES, kind="routes")
    await login(page, srv, at=f"#/ns/{ns}")
    await page.click("#edit")
    editor = page.locator("#doc-editor")
    text = (await editor.input_value()).replace("value: 10", "value: 1000")
    await editor.fill(text)
    await page.click("#push")
    violation = page.locator(".violation[data-path='$.rules[1].match.percent.value']")
    await expect(violation).to_be_visible()
    line = next(i for i, t in enumerate(text.split("\n"), 1) if t.strip() == "value: 1000")
    await expect(violation).to_have_attribute("data-line", str(line))
    await expect(page.locator(f".gutter .ln.err[data-line='{line}']")).to_have_count(1)
    await expect(page.locator(".gutter .ln.err")).to_have_count(1)
    await shot(page, "validation-error")
    assert (await get(http, srv, f"/v1/namespaces/{ns}"))["revision"] == before["revision"]


async def test_if_match_conflict_names_who_and_offers_the_diff(srv: RunningServer, http: aiohttp.ClientSession,
                                                             page: Page) -> None:
    ns = fresh("config")
    base = await push(http, srv, ns, {"replicas": 2, "region": "eu"})
    await login(page, srv, at=f"#/ns/{ns}")
    await page.click("#edit")
    await expect(page.locator("#edit-base")).to_contain_text(f"If-Match: {base['revision']}")
    editor = page.locator("#doc-editor")
    await editor.fill((await editor.input_value()).replace("replicas: 2", "replicas: 3"))
    theirs = await push(http, srv, ns, {"replicas": 2, "region": "us"}, message="bob's hotfix", token=BOB)
    await expect(page.locator("#live-notice")).to_contain_text("oncall-bob")
    await page.click("#push")
    conflict = page.locator("#conflict")
    await expect(conflict).to_contain_text("oncall-bob changed it meanwhile")
    await expect(conflict).to_contain_text(f"revision {theirs['revision']}")
    await expect(conflict).to_contain_text("bob's hotfix")
    await page.click("#conflict-diff")
    await expect(conflict.locator(".patch .del")).to_contain_text("region: eu")
    await expect(conflict.locator(".patch .add")).to_contain_text("region: us")
    await shot(page, "conflict")
    assert (await get(http, srv, f"/v1/namespaces/{ns}"))["revision"] == theirs["revision"]  # nothing written
    await page.click("#conflict-rebase")  # keep my edit, push on top of theirs
    await page.click("#push")
    await expect(page.locator("#doc-view")).to_contain_text("replicas: 3")
    assert (await get(http, srv, f"/v1/namespaces/{ns}"))["doc"] == {"replicas": 3, "region": "eu"}


async def test_history_diff_and_rollback(srv: RunningServer, http: aiohttp.ClientSession, page: Page) -> None:
    ns = fresh("config")
    v1 = await push(http, srv, ns, {"timeout_ms": 100}, message="v1")
    await push(http, srv, ns, {"timeout_ms": 200}, message="v2")
    v3 = await push(http, srv, ns, {"timeout_ms": 900}, message="v3 too slow")
    await login(page, srv, at=f"#/history/{ns}")
    rows = page.locator("#history-table tbody tr")
    await expect(rows).to_have_count(3)
    await expect(rows.first).to_contain_text("v3 too slow")
    await expect(rows.first).to_contain_text(v3["trace_id"])
    await page.check(f"input[name='pick-from'][value='{v1['revision']}']")
    await page.click("#show-diff")
    await expect(page.locator("#diff .patch .del")).to_contain_text("timeout_ms: 100")
    await expect(page.locator("#diff .patch .add")).to_contain_text("timeout_ms: 900")
    await page.locator(f"tr[data-revision='{v1['revision']}'] .rollback").click()
    dialog = page.locator("#rollback-dialog")
    await expect(dialog.locator(".patch .del")).to_contain_text("timeout_ms: 900")  # what it will apply
    await expect(dialog.locator(".patch .add")).to_contain_text("timeout_ms: 100")
    await shot(page, "rollback-confirm")
    await page.click("#rollback-confirm")
    await expect(rows).to_have_count(4)
    await expect(rows.first.locator(".op")).to_have_text("rollback")
    current = await get(http, srv, f"/v1/namespaces/{ns}")
    assert current["op"] == "rollback" and current["from_revision"] == v1["revision"]
    assert current["doc"] == {"timeout_ms": 100}
    await shot(page, "history")


async def test_route_tester_matches_the_route_endpoint_and_cli(srv: RunningServer, http: aiohttp.ClientSession,
                                                               page: Page) -> None:
    ns = fresh("routes")
    await push(http, srv, ns, ROUTES, kind="routes")
    await login(page, srv, at=f"#/route/{ns}")
    cases = [{"x-release": "v2-beta"}, {"x-user-id": "alice"}, {"x-user-id": "user-7"}, {}]
    for headers in cases:
        names, values = page.locator(".h-name"), page.locator(".h-value")
        for i in range(await names.count()):
            await names.nth(i).fill("")
            await values.nth(i).fill("")
        for i, (name, value) in enumerate(headers.items()):
            await names.nth(i).fill(name)
            await values.nth(i).fill(value)
        async with http.post(f"{srv.url}/v1/namespaces/{ns}/route", json={"headers": headers},
                             headers=srv.auth()) as resp:
            want = await resp.json()
        await page.click("#evaluate")
        await expect(page.locator("#route-cluster")).to_have_text(want["cluster"])
        await expect(page.locator("#route-rule")).to_have_text(want["rule_id"])
        await expect(page.locator("#rules-table tr.matched")).to_have_attribute("data-rule", want["rule_id"])
        await expect(page.locator("#rules-table tr.matched")).to_have_count(1)
    answer = await cli(srv, "route", ns, "--header", "x-release=v2-beta", "--json")
    assert '"payment-canary"' in answer and '"beta-header"' in answer
    await page.locator(".h-name").first.fill("x-release")
    await page.locator(".h-value").first.fill("v2-beta")
    await page.click("#evaluate")
    await expect(page.locator("#route-cluster")).to_have_text("payment-canary")
    await expect(page.locator("#route-rule")).to_have_text("beta-header")
    await shot(page, "route-tester")


async def test_live_feed_resumes_after_a_dropped_connection(srv: RunningServer, http: aiohttp.ClientSession,
                                                           page: Page) -> None:
    prefix = f"ui{uuid.uuid4().hex[:8]}/"
    await login(page, srv, at="#/live")
    await page.fill("#feed-prefixes", prefix)
    await page.click("#feed-apply")
    await expect(page.locator("#feed-state")).to_have_text("live")
    await expect(page.locator("#feed-rows tr.ev-reset")).to_have_count(1)
    first = await push(http, srv, f"{prefix}a", {"n": 1}, message="before the cut")
    await expect(page.locator(f"#feed-rows tr.ev-change[data-revision='{first['revision']}']")).to_be_visible()

    def cut() -> int:  # the server drops every watch connection (as a restarted proxy would)
        subs = list(srv.runtime.hub.subscriptions)
        for sub in subs:
            sub.channel._transport.close()
        return len(subs)

    assert cut() >= 1
    missed = await push(http, srv, f"{prefix}b", {"n": 2}, message="while cut")
    await expect(page.locator(f"#feed-rows tr.ev-change[data-revision='{missed['revision']}']")).to_be_visible()
    await expect(page.locator("#feed-rows tr.ev-resumed")).to_have_count(1)
    await expect(page.locator("#feed-detail")).to_contain_text("resumed from")
    await expect(page.locator("#feed-rows tr.ev-reset")).to_have_count(1)  # resumed: replayed, not reset
    await shot(page, "live-feed")


async def test_reader_gets_a_read_only_console(srv: RunningServer, http: aiohttp.ClientSession, page: Page) -> None:
    ns = fresh("config")
    await push(http, srv, ns, {"a": 1}, message="one")
    await push(http, srv, ns, {"a": 2}, message="two")
    await login(page, srv, READER, at=f"#/ns/{ns}")
    await expect(page.locator("#read-only")).to_be_visible()
    await expect(page.locator("#doc-view")).to_contain_text("a: 2")
    await expect(page.locator("#edit")).to_have_count(0)
    await expect(page.locator("#doc-editor")).to_have_count(0)
    await page.click("#tab-history")
    await expect(page.locator("#history-table tbody tr")).to_have_count(2)
    await expect(page.locator(".rollback")).to_have_count(0)
    # and the server agrees: this token's push is refused whatever the console shows
    async with http.put(f"{srv.url}/v1/namespaces/{ns}", json={"kind": "config", "doc": {"a": 3}},
                        headers=srv.auth(READER)) as resp:
        assert resp.status == 403


async def test_scoped_writer_edits_only_in_its_scope_and_markup_stays_text(
        srv: RunningServer, http: aiohttp.ClientSession, page: Page) -> None:
    mine, other = f"uiscoped/{uuid.uuid4().hex[:8]}", fresh("config")
    await push(http, srv, mine, {"a": 1}, message="<img src=x onerror=alert(1)><b>bold</b>")
    await push(http, srv, other, {"a": 1})
    await login(page, srv, SAM, at=f"#/ns/{mine}")
    await expect(page.locator("#edit")).to_be_visible()
    await expect(page.locator(".facts")).to_contain_text("<b>bold</b>")  # shown as text, not markup
    await expect(page.locator(".facts img, .facts b")).to_have_count(0)
    await page.goto(f"{srv.url}/ui/#/ns/{other}")  # reads need a token here, so scopes limit them too
    await expect(page.locator("#ns-read-only")).to_be_visible()
    await expect(page.locator("main .error")).to_contain_text("outside its scope")
    await expect(page.locator("#edit")).to_have_count(0)
    await page.goto(f"{srv.url}/ui/#/namespaces")
    await expect(page.locator(f"tr[data-ns='{mine}']")).to_be_visible()
    await expect(page.locator("#ns-table tbody tr[data-ns]")).to_have_count(1)  # the list is filtered to the scope


async def report(http: aiohttp.ClientSession, srv: RunningServer, iid: str, ns: str, entry: dict[str, Any]) -> None:
    body = {"service": "payment", "labels": {"zone": "a"}, "selectors": [ns], "mode": "live",
            "namespaces": {ns: entry}}
    async with http.post(f"{srv.url}/v1/instances/{iid}/report", json=body, headers=srv.auth(READER)) as resp:
        assert resp.status == 200, await resp.text()


async def test_rollout_page_and_narrow_window(srv: RunningServer, http: aiohttp.ClientSession, page: Page) -> None:
    ns = fresh("routes")
    release = await push(http, srv, ns, ROUTES, kind="routes", message="canary for beta users")
    rev = release["revision"]
    await report(http, srv, f"pay-{uuid.uuid4().hex[:6]}", ns, {"applied": rev, "source": "live"})
    await report(http, srv, f"pay-{uuid.uuid4().hex[:6]}", ns,
                 {"applied": rev - 1, "rejected": rev, "reason": "route table does not compile: bad regex",
                  "source": "live"})
    await login(page, srv, at=f"#/rollout/{ns}")
    await expect(page.locator("#rollout-subscribed")).to_have_text("2 subscribed")
    await expect(page.locator("#rollout-applied")).to_have_text("1 applied")
    await expect(page.locator("#rollout-rejected")).to_have_text("1 rejected")
    await expect(page.locator("#rollout-table tr.st-rejected")).to_contain_text("bad regex")
    await shot(page, "rollout")
    await page.goto(f"{srv.url}/ui/#/namespaces")
    await expect(page.locator(f"tr[data-ns='{ns}']")).to_be_visible()
    await shot(page, "namespaces-all")
    await page.set_viewport_size({"width": 390, "height": 844})
    for at, ready in ((f"#/ns/{ns}", "#doc-view"), ("#/namespaces", "#ns-table"), (f"#/route/{ns}", "#rules-table"),
                      (f"#/history/{ns}", "#history-table")):
        await page.goto(f"{srv.url}/ui/{at}")
        await expect(page.locator(ready)).to_be_visible()
        overflow = await page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{at} is wider than a narrow window by {overflow}px"
        await shot(page, "narrow-" + at.split("/")[1])


async def test_namespace_page_shows_the_freeze_that_refuses_its_writes(
        srv: RunningServer, http: aiohttp.ClientSession, page: Page) -> None:
    ns = fresh("config")
    prefix = ns.split("/")[0] + "/"
    await push(http, srv, ns, {"pool": 4})
    await login(page, srv, at=f"#/ns/{ns}")
    await expect(page.locator("#doc-view")).to_contain_text("pool: 4")
    await expect(page.locator("#freeze-notice")).to_have_count(0)  # not frozen: no notice
    async with http.put(f"{srv.url}/v1/freezes/{prefix}", json={"reason": "incident <b>42</b>", "until": "2h"},
                        headers=srv.auth()) as resp:
        assert resp.status == 201, await resp.text()
        freeze = await resp.json()
    await page.reload()
    notice = page.locator("#freeze-notice")
    await expect(notice.locator(".freeze-reason")).to_have_text("incident <b>42</b>")  # text, not markup
    await expect(notice.locator(".freeze-who")).to_have_text("test-writer")
    await expect(notice.locator(".freeze-until")).to_have_text(f"until {freeze['until_time']}")
    await expect(notice).to_contain_text(f"by the freeze on {prefix}")
    await page.click("#edit")  # the server refuses the push, naming the freeze
    await page.click("#push")
    await expect(page.locator("#push-error")).to_contain_text("423 frozen")
    await expect(page.locator("#push-error")).to_contain_text("incident <b>42</b>")
    await shot(page, "freeze")
    async with http.delete(f"{srv.url}/v1/freezes/{prefix}", headers=srv.auth()) as resp:
        assert resp.status == 200, await resp.text()
    await page.reload()  # the freeze ended: the notice goes, the document stays
    await expect(page.locator("#doc-view")).to_contain_text("pool: 4")
    await expect(page.locator("#freeze-notice")).to_have_count(0)


async def test_namespace_page_shows_base_candidate_and_target_of_a_canary(
        srv: RunningServer, http: aiohttp.ClientSession, page: Page) -> None:
    ns = fresh("config")
    await push(http, srv, ns, {"timeout_ms": 100}, message="base")
    await login(page, srv, at=f"#/ns/{ns}")
    await expect(page.locator("#doc-view")).to_contain_text("timeout_ms: 100")
    await expect(page.locator("#canary")).to_have_count(0)
    start = {"doc": {"timeout_ms": 250}, "target": {"labels": {"zone": "az1"}, "percent": 10},
             "message": "try 250 ms"}
    async with http.post(f"{srv.url}/v1/namespaces/{ns}/canary", json=start, headers=srv.auth()) as resp:
        assert resp.status == 201, await resp.text()
        started = await resp.json()
    canary = page.locator("#canary")  # arrives live (the canary's start is a change of the namespace)
    await expect(canary.locator("#canary-target")).to_have_text("zone=az1 · 10 %")
    await expect(canary.locator("#canary-base")).to_have_text("timeout_ms: 100\n")
    await expect(canary.locator("#canary-candidate")).to_have_text("timeout_ms: 250\n")
    await expect(canary).to_contain_text(str(started["canary"]["started"]))
    await expect(canary).to_contain_text("try 250 ms")
    await shot(page, "canary")
    async with http.post(f"{srv.url}/v1/namespaces/{ns}/promote", json={}, headers=srv.auth()) as resp:
        assert resp.status == 200, await resp.text()
    await expect(page.locator("#doc-view")).to_contain_text("timeout_ms: 250")  # promoted: one release again
    await expect(page.locator("#canary")).to_have_count(0)


@pytest.mark.slow  # stops etcd
async def test_stale_banner_while_etcd_is_down(own_etcd: EtcdCluster, browser: Browser) -> None:
    server = await start_server(server_settings(own_etcd, tokens=PRINCIPALS), own_etcd)
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        tab = await context.new_page()
        await login(tab, server, at="#/namespaces")
        banner = tab.locator("#stale-banner")
        await expect(banner).to_be_hidden()
        await asyncio.to_thread(own_etcd.members[0].stop)
        await expect(banner).to_contain_text("etcd is unreachable", timeout=15_000)
        await shot(tab, "stale-banner")
        await asyncio.to_thread(own_etcd.members[0].start)
        await asyncio.to_thread(own_etcd.members[0].wait_ready)
        await expect(banner).to_be_hidden(timeout=20_000)
    finally:
        await context.close()
        await server.stop()
