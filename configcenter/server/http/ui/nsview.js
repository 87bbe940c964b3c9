// What the namespace pages share: the title, the tabs and the facts of a release.

import { canWrite } from "./api.js";
import { age, facts, h, isoTime } from "./dom.js";

export function nsHead(ns, active, kind) {
  const tabs = [["ns", "Document"], ["history", "History"]];
  if (!kind || kind === "routes") tabs.push(["route", "Route tester"]);
  tabs.push(["rollout", "Rollout"]);
  return h("div", { class: "page-head" },
    h("h1", null, h("a", { href: "#/namespaces", class: "crumb" }, "Namespaces"), " / ", h("span", { id: "ns-name" }, ns)),
    canWrite(ns) ? null : h("span", { class: "badge ro", id: "ns-read-only" }, "read-only"),
    h("nav", { class: "tabs" }, tabs.map(([page, label]) =>
      h("a", { href: `#/${page}/${ns}`, class: page === active ? "active" : "", id: `tab-${page}` }, label))));
}

export function releaseFacts(r) {
  return facts([
    ["kind", r.kind], ["revision", r.revision], ["version", r.version], ["op", r.op],
    ["principal", r.principal], ["author", r.author], ["time", `${isoTime(r.time)} (${age(r.time)})`],
    ["message", r.message, "wide"], ["trace id", r.trace_id, "wide mono"],
    r.from_revision ? ["rolled back to", r.from_revision] : null,
  ].filter(Boolean));
}
