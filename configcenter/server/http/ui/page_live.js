// Page 5: the live feed (its own watch on the prefixes typed in, resuming with Last-Event-ID
// after a reconnect) and page 6: the rollout of a namespace's current revision.

import { api, nsPath } from "./api.js";
import { age, clear, h, isoTime } from "./dom.js";
import { nsHead } from "./nsview.js";
import { EventStream } from "./sse.js";
import { bus } from "./state.js";

const MAX_ROWS = 500;
let feedPrefixes = "";

export function renderLive(main) {
  let stream = null;
  const input = h("input", { id: "feed-prefixes", placeholder: "payment/ orders/config (empty: everything)",
    value: feedPrefixes, "aria-label": "prefixes" });
  const state = h("span", { class: "badge", id: "feed-state" }, "idle");
  const detail = h("span", { class: "muted", id: "feed-detail" });
  const list = h("tbody", { id: "feed-rows" });
  const form = h("form", { class: "toolbar" }, input, h("button", { type: "submit", class: "primary", id: "feed-apply" }, "Watch"), state, detail);
  form.addEventListener("submit", (ev) => { ev.preventDefault(); connect(); });
  clear(main, h("div", { class: "page-head" }, h("h1", null, "Live feed")), form,
    h("div", { class: "scroll" }, h("table", { class: "grid", id: "feed-table" },
      h("thead", null, h("tr", null, ["received", "event", "namespace", "revision", "op", "principal", "message", "trace id"]
        .map((c) => h("th", null, c)))), list)));

  function row(kind, data, cls = "") {
    list.prepend(h("tr", { class: `ev-${kind} ${cls}`, dataset: { ns: data.ns || "", revision: data.revision ?? "" } },
      h("td", { class: "small" }, new Date().toLocaleTimeString()), h("td", null, h("span", { class: `op ev ev-${kind}` }, kind)),
      h("td", null, data.ns ? h("a", { href: `#/ns/${data.ns}` }, data.ns) : "-"), h("td", { class: "num" }, data.revision ?? "-"),
      h("td", null, data.op || ""), h("td", null, data.principal || ""), h("td", { class: "c-message" }, data.message || ""),
      h("td", { class: "mono small" }, data.trace_id || "")));
    while (list.children.length > MAX_ROWS) list.lastChild.remove();
  }

  function connect() {
    if (stream) stream.stop();
    list.replaceChildren(); // a new subscription starts a new feed
    feedPrefixes = input.value.trim();
    const selectors = feedPrefixes ? feedPrefixes.split(/[\s,]+/).filter(Boolean) : [];
    stream = new EventStream({
      selectors,
      onEvent: ({ event, data }) => {
        if (event === "change") row("change", data);
        else if (event === "reset") {
          const count = Object.keys(data.namespaces || {}).length;
          row("reset", { revision: data.revision, message: `snapshot of ${count} namespace(s) (${data.reason})` });
        } else if (event === "invalid") row("invalid", { ns: data.ns, message: data.error || "unreadable record" });
        else if (event === "progress") detail.textContent = `at revision ${data.revision}${data.stale ? ` — stale ${data.stale_seconds}s` : ""}`;
      },
      onStatus: (s) => {
        state.textContent = s.state;
        state.className = `badge st-${s.state}`;
        state.dataset.connects = s.connects;
        if (s.state === "live") {
          detail.textContent = s.resumedFrom ? `resumed from ${s.resumedFrom} (connection ${s.connects})` : "connected";
          if (s.resumedFrom) row("resumed", { message: `reconnected, resuming after ${s.resumedFrom}` }, "resume");
        } else if (s.error) detail.textContent = s.error;
      },
    }).start();
  }

  connect();
  return () => stream && stream.stop();
}

export function renderRollout(main, ns) {
  const body = h("div", { id: "rollout" });
  clear(main, nsHead(ns, "rollout"), body);

  async function load() {
    let data;
    try {
      data = await api("GET", `${nsPath(ns)}/rollout`);
    } catch (err) {
      clear(body, h("p", { class: "error" }, err.status === 404 ? `${ns}: ${err.message}` : err.message));
      return;
    }
    const s = data.summary;
    clear(body,
      h("div", { class: "summary" },
        h("span", { class: `badge ${data.complete ? "ok" : "warn"}`, id: "rollout-complete" }, data.complete ? "complete" : "in progress"),
        ` revision ${data.revision}: `,
        ["subscribed", "applied", "pending", "rejected", "fallback"].filter((k) => k in s)
          .map((k) => h("span", { class: `count c-${k}`, id: `rollout-${k}` }, `${s[k]} ${k}`))),
      h("div", { class: "scroll" }, h("table", { class: "grid", id: "rollout-table" },
        h("thead", null, h("tr", null, ["instance", "service", "status", "applied", "mode", "source", "last seen", "reason"]
          .map((c) => h("th", null, c)))),
        h("tbody", null, data.instances.map((i) => h("tr", { class: `st-${i.status}` },
          h("td", { class: "mono small" }, i.id), h("td", null, i.service), h("td", null, h("span", { class: `op st-${i.status}` }, i.status)),
          h("td", { class: "num" }, i.applied ?? "-"), h("td", null, i.mode), h("td", null, i.source || "-"),
          h("td", { title: isoTime(i.last_seen) }, age(i.last_seen)), h("td", null, i.reason || ""))),
        data.instances.length ? null : h("tr", null, h("td", { colspan: 8, class: "muted" }, "no SDK instance subscribes to this namespace"))))));
  }

  const off = bus.on((event) => {
    if (event.event === "change" && event.data.ns === ns) load();
  });
  const timer = setInterval(load, 5000);
  load();
  return () => {
    off();
    clearInterval(timer);
  };
}
