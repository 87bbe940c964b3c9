// Page 4: the route tester.  Headers go to POST /v1/namespaces/{ns}/route (the SDK's own
// evaluator on the server); the answer's rule is highlighted in the table.  The API evaluates
// only the current route table, so the tester does too (a historical table is shown on the
// History page's diff, not evaluated).

import { api, nsPath } from "./api.js";
import { clear, h } from "./dom.js";
import { nsHead } from "./nsview.js";
import { bus } from "./state.js";
import { dump } from "./yaml.js";

const remembered = new Map(); // ns -> [[name, value], ...] of the last evaluation

function target(route) {
  if (!route) return "-";
  if (route.cluster) return route.cluster;
  if (route.weighted) return route.weighted.map((w) => `${w.cluster} ${w.weight}`).join(", ");
  return dump(route).trim();
}

export function renderRoute(main, ns) {
  let release = null;
  let lastDecision = null;
  const rows = h("div", { class: "header-rows", id: "header-rows" });
  const result = h("div", { class: "route-result", id: "route-result" });
  const table = h("tbody");
  const info = h("p", { class: "muted", id: "route-table-info" });
  const form = h("form", { class: "card", id: "route-form" },
    h("h2", null, "Request headers"), rows,
    h("div", { class: "actions" },
      h("button", { type: "button", id: "add-header", onclick: () => addRow("", "") }, "Add header"),
      h("button", { type: "submit", class: "primary", id: "evaluate" }, "Route")),
    h("p", { class: "muted small" }, "Evaluated by the server on the current revision (the API has no historical evaluation)."));
  form.addEventListener("submit", (ev) => { ev.preventDefault(); evaluate(); });
  const head = nsHead(ns, "route", "routes");
  clear(main, head, h("div", { class: "split" }, h("div", null, form, result),
    h("div", null, h("h2", null, "Route table"), info, h("div", { class: "scroll" },
      h("table", { class: "grid", id: "rules-table" },
        h("thead", null, h("tr", null, ["#", "rule", "match", "route"].map((c) => h("th", null, c)))), table)))));

  function addRow(name, value) {
    const row = h("div", { class: "header-row" },
      h("input", { class: "h-name", placeholder: "x-release", value: name, "aria-label": "header name" }),
      h("input", { class: "h-value", placeholder: "v2-beta", value, "aria-label": "header value" }),
      h("button", { type: "button", class: "small", "aria-label": "remove", onclick: () => row.remove() }, "×"));
    rows.append(row);
    return row;
  }

  function headers() {
    const out = {};
    for (const row of rows.querySelectorAll(".header-row")) {
      const name = row.querySelector(".h-name").value.trim();
      if (name) out[name] = row.querySelector(".h-value").value;
    }
    return out;
  }

  function drawTable() {
    const rules = (release.doc && release.doc.rules) || [];
    info.textContent = `revision ${release.revision} (version ${release.version}), ${rules.length} rule(s)`;
    const matched = lastDecision && lastDecision.revision === release.revision ? lastDecision.rule_id ?? "default" : undefined;
    clear(table, rules.map((rule, i) => h("tr", { dataset: { rule: rule.id }, class: rule.id === matched ? "matched" : "" },
      h("td", { class: "num" }, i), h("td", { class: "mono" }, rule.id),
      h("td", null, h("pre", { class: "yaml small" }, dump(rule.match || {}).trim())),
      h("td", null, target(rule.route)))),
    h("tr", { dataset: { rule: "default" }, class: matched === "default" ? "matched" : "" },
      h("td", null, ""), h("td", { class: "muted" }, "default"), h("td", { class: "muted" }, "no rule matched"),
      h("td", null, target(release.doc && release.doc.default))));
  }

  async function load() {
    try {
      release = await api("GET", nsPath(ns));
    } catch (err) {
      clear(result, h("p", { class: "error" }, err.message));
      return;
    }
    if (release.kind !== "routes") {
      clear(main, nsHead(ns, "route", release.kind), h("p", { class: "muted" }, `${ns} holds ${release.kind}, not a route table.`));
      return;
    }
    drawTable();
  }

  async function evaluate() {
    const sent = headers();
    remembered.set(ns, Object.entries(sent));
    try {
      lastDecision = await api("POST", `${nsPath(ns)}/route`, { body: { headers: sent } });
    } catch (err) {
      clear(result, h("p", { class: "error", id: "route-error" }, `${err.status} ${err.message}`));
      return;
    }
    if (!release || lastDecision.revision !== release.revision) await load();
    const d = lastDecision;
    clear(result, h("div", { class: "card decision" },
      h("div", { class: "cluster" }, "→ ", h("strong", { id: "route-cluster" }, d.cluster)),
      h("div", null, "rule ", h("code", { id: "route-rule" }, d.rule_id ?? "default"),
        h("span", { class: "muted" }, ` at revision `), h("span", { id: "route-revision" }, d.revision))));
    drawTable();
  }

  for (const [name, value] of remembered.get(ns) || [["", ""], ["", ""]]) addRow(name, value);
  const off = bus.on((event) => {
    if (event.event === "change" && event.data.ns === ns) load();
  });
  load();
  return off;
}
