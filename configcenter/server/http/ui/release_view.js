// Release control on a namespace's page: the change freezes that refuse its writes now
// (GET /v1/freezes: reason, who, until) and, while its record holds a canary, the base and the
// candidate side by side with the canary's target.  Display only: the server's gate decides.

import { api } from "./api.js";
import { facts, h } from "./dom.js";
import { dump } from "./yaml.js";

/** Whether a freeze's target (a namespace or a `prefix/`) covers `ns`. */
export function covers(target, ns) {
  return target === ns || (target.endsWith("/") && ns.startsWith(target));
}

/** The active freezes covering `ns`, the most specific first (the one the server names in a 423).
 * A token that may not list freezes (or a server without them) shows none: never an error. */
export async function activeFreezes(ns) {
  let data;
  try {
    data = await api("GET", "/v1/freezes");
  } catch {
    return [];
  }
  const rank = (f) => [f.target.endsWith("/") ? 0 : 1, f.target.length];
  return (data.freezes || []).filter((f) => f.active && covers(f.target, ns)).sort((a, b) => {
    const [x, y] = [rank(a), rank(b)];
    return y[0] - x[0] || y[1] - x[1];
  });
}

/** The freeze notice: one line per active freeze, or null when none. */
export function freezeNotice(ns, freezes) {
  if (!freezes.length) return null;
  return h("div", { class: "notice frozen", id: "freeze-notice", role: "status" },
    freezes.map((f) => h("p", { class: "freeze", dataset: { target: f.target } },
      h("strong", null, f.target === ns ? "Frozen" : `Frozen (by the freeze on ${f.target})`), ": ",
      h("span", { class: "freeze-reason" }, f.reason || ""), " — set by ",
      h("span", { class: "freeze-who" }, f.principal || "unknown"), ", ",
      h("span", { class: "freeze-until" }, f.until_time ? `until ${f.until_time}` : "until an admin removes it"), ".")),
    h("p", { class: "muted small" }, "Pushes, deletes, canary changes and promotions are refused (423); rollbacks are allowed."));
}

/** The canary's target in words: `zone=az1, service=checkout · instances a, b · 10 %`. */
export function describeTarget(target) {
  const parts = [];
  const labels = Object.entries(target.labels || {}).map(([k, v]) => `${k}=${v}`);
  if (labels.length) parts.push(labels.join(", "));
  if (target.instances && target.instances.length) parts.push(`instances ${target.instances.join(", ")}`);
  if (target.percent !== undefined && target.percent !== null) parts.push(`${target.percent} %`);
  return parts.join(" · ") || "-";
}

/** Base and candidate of a release that holds a canary, or null without one. */
export function canaryView(release) {
  const canary = release.canary;
  if (!canary) return null;
  const candidate = canary.candidate || {};
  return h("section", { class: "canary", id: "canary" },
    h("h2", null, "Canary running"),
    facts([
      ["target", h("span", { id: "canary-target" }, describeTarget(canary.target || {})), "wide"],
      ["started at revision", canary.started], ["abort on reject", canary.abort_on_reject ? "yes" : "no"],
      ["principal", canary.principal], ["message", canary.message, "wide"],
    ]),
    h("div", { class: "canary-docs" },
      h("div", null, h("h3", null, `Base (${release.kind}) — every other instance`),
        h("pre", { class: "yaml", id: "canary-base" }, dump(release.doc))),
      h("div", null, h("h3", null, `Candidate (${candidate.kind || release.kind}) — the canary's instances`),
        h("pre", { class: "yaml", id: "canary-candidate" }, candidate.doc === undefined ? "(not shown)" : dump(candidate.doc)))));
}
