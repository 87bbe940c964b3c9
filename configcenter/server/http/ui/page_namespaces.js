// Page 1: every namespace the token may see, filtered by prefix and kind, kept current by the
// console-wide watch (a "live" badge marks rows changed since the page was opened).

import { api } from "./api.js";
import { age, clear, h } from "./dom.js";
import { bus } from "./state.js";

const filters = { prefix: "", kind: "" };

export function renderNamespaces(main) {
  const items = new Map(); // ns -> release (no doc)
  const changed = new Map(); // ns -> revision of the live change
  const prefix = h("input", { id: "filter-prefix", type: "search", placeholder: "prefix, e.g. payment/",
    value: filters.prefix, "aria-label": "prefix" });
  const kind = h("select", { id: "filter-kind", "aria-label": "kind" },
    ["", "routes", "config"].map((k) => h("option", { value: k }, k || "any kind")));
  kind.value = filters.kind;
  const count = h("span", { class: "muted", id: "ns-count" });
  const body = h("tbody");
  const table = h("table", { class: "grid", id: "ns-table" },
    h("thead", null, h("tr", null, ["namespace", "kind", "revision", "version", "principal", "age", "message"]
      .map((c) => h("th", { class: `c-${c}` }, c)))), body);
  const error = h("p", { class: "error", hidden: true });
  clear(main,
    h("div", { class: "page-head" }, h("h1", null, "Namespaces"), count),
    h("div", { class: "toolbar" }, prefix, kind),
    error, h("div", { class: "scroll" }, table));

  function draw() {
    filters.prefix = prefix.value.trim();
    filters.kind = kind.value;
    const rows = [...items.values()]
      .filter((r) => r.ns.startsWith(filters.prefix) && (!filters.kind || r.kind === filters.kind))
      .sort((a, b) => a.ns.localeCompare(b.ns));
    count.textContent = `${rows.length} of ${items.size}`;
    clear(body, rows.map((r) => {
      const live = changed.get(r.ns);
      return h("tr", { class: live ? "changed" : "", dataset: { ns: r.ns } },
        h("td", { class: "c-namespace" }, h("a", { href: `#/ns/${r.ns}` }, r.ns),
          live ? h("span", { class: "badge live", title: `changed live at revision ${live}` }, "live") : null,
          r.op === "delete" ? h("span", { class: "badge deleted" }, "deleted") : null),
        h("td", { class: "c-kind" }, r.kind),
        h("td", { class: "c-revision num" }, r.revision),
        h("td", { class: "c-version num" }, r.version),
        h("td", { class: "c-principal" }, r.principal || "-", r.author ? h("span", { class: "muted" }, ` (${r.author})`) : null),
        h("td", { class: "c-age", title: new Date(r.time * 1000).toISOString() }, age(r.time)),
        h("td", { class: "c-message" }, r.message || ""));
    }));
    if (!rows.length) body.append(h("tr", null, h("td", { colspan: 7, class: "muted" }, "no namespaces")));
  }

  prefix.addEventListener("input", draw);
  kind.addEventListener("change", draw);

  api("GET", "/v1/namespaces").then((data) => {
    for (const r of data.namespaces) if (!items.has(r.ns) || items.get(r.ns).revision < r.revision) items.set(r.ns, r);
    draw();
  }).catch((err) => {
    error.hidden = false;
    error.textContent = `cannot list namespaces: ${err.message}`;
  });

  const off = bus.on((event) => {
    if (event.event === "change") {
      const r = event.data;
      const known = items.get(r.ns);
      if (known && known.revision >= r.revision) return;
      if (r.op === "delete") items.delete(r.ns);
      else items.set(r.ns, r);
      changed.set(r.ns, r.revision);
      draw();
    } else if (event.event === "reset") {
      const seen = new Set(Object.keys(event.data.namespaces));
      for (const ns of [...items.keys()]) if (!seen.has(ns)) items.delete(ns);
      for (const r of Object.values(event.data.namespaces)) {
        const known = items.get(r.ns);
        if (known && known.revision < r.revision) changed.set(r.ns, r.revision);
        items.set(r.ns, r);
      }
      draw();
    }
  });
  const timer = setInterval(draw, 5000);
  return () => {
    off();
    clearInterval(timer);
  };
}
