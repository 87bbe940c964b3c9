// Page 3: the release timeline; a diff between any two revisions (GET .../diff?from=&to=);
// rollback after a confirmation that shows the diff it will apply (current -> target).

import { api, canWrite, nsPath } from "./api.js";
import { age, clear, h, isoTime, patchView, toast } from "./dom.js";
import { nsHead } from "./nsview.js";
import { bus } from "./state.js";

export function renderHistory(main, ns) {
  const entries = [];
  let nextBefore = null;
  let current = null; // the newest release (revision)
  let generation = 0; // a reload drops pages still in flight
  const pick = { from: null, to: null };
  const body = h("tbody");
  const more = h("button", { id: "older", hidden: true, onclick: () => page(nextBefore) }, "Older releases");
  const diffBox = h("div", { id: "diff" });
  const dialog = h("dialog", { id: "rollback-dialog", class: "card" });
  const error = h("p", { class: "error", hidden: true });
  const diffButton = h("button", { class: "primary", id: "show-diff", onclick: showDiff }, "Diff selected");
  clear(main, nsHead(ns, "history"), error,
    h("div", { class: "toolbar" }, diffButton, h("span", { class: "muted", id: "diff-pick" })),
    h("div", { class: "scroll" }, h("table", { class: "grid", id: "history-table" },
      h("thead", null, h("tr", null, ["from", "to", "version", "revision", "op", "principal", "message", "trace id", "time", ""]
        .map((c) => h("th", null, c)))), body)),
    more, diffBox, dialog);

  function draw() {
    clear(body, entries.map((r) => {
      const radio = (side) => {
        const input = h("input", { type: "radio", name: `pick-${side}`, value: r.revision, "aria-label": `${side} ${r.revision}` });
        input.checked = pick[side] === r.revision;
        input.addEventListener("change", () => { pick[side] = r.revision; drawPick(); });
        return input;
      };
      const canRoll = canWrite(ns) && current && r.revision !== current.revision && r.op !== "delete";
      return h("tr", { dataset: { revision: r.revision }, class: current && r.revision === current.revision ? "current" : "" },
        h("td", null, radio("from")), h("td", null, radio("to")),
        h("td", { class: "num" }, r.version), h("td", { class: "num" }, r.revision),
        h("td", null, h("span", { class: `op op-${r.op}` }, r.op), r.from_revision ? h("span", { class: "muted" }, ` → ${r.from_revision}`) : null),
        h("td", null, r.principal || "-"), h("td", { class: "c-message" }, r.message || ""),
        h("td", { class: "mono small" }, r.trace_id || "-"),
        h("td", { title: isoTime(r.time) }, age(r.time)),
        h("td", null, canRoll ? h("button", { class: "small rollback", onclick: () => confirmRollback(r) }, "Roll back to this") : null));
    }));
    more.hidden = !nextBefore;
    drawPick();
  }

  function drawPick() {
    main.querySelector("#diff-pick").textContent = pick.from && pick.to ? `from ${pick.from} to ${pick.to}` : "pick two revisions";
  }

  async function page(before) {
    const mine = generation;
    try {
      const data = await api("GET", `${nsPath(ns)}/history?limit=50${before ? `&before=${before}` : ""}`);
      if (mine !== generation) return;
      entries.push(...data.entries);
      nextBefore = data.next_before;
      if (!current && entries.length) current = entries[0];
      if (pick.to === null && entries.length) pick.to = entries[0].revision;
      if (pick.from === null && entries.length > 1) pick.from = entries[1].revision;
      error.hidden = true;
      draw();
    } catch (err) {
      error.hidden = false;
      error.textContent = err.message;
    }
  }

  async function reload() {
    generation += 1;
    entries.length = 0;
    current = null;
    await page(null);
  }

  async function showDiff() {
    if (!pick.from || !pick.to) return;
    try {
      const d = await api("GET", `${nsPath(ns)}/diff?from=${pick.from}&to=${pick.to}`);
      clear(diffBox, h("h2", null, `Diff ${d.from} → ${d.to}`),
        h("p", { class: "muted" }, `${d.changes.length} change(s)`), patchView(d.patch));
    } catch (err) {
      clear(diffBox, h("p", { class: "error" }, err.message));
    }
  }

  async function confirmRollback(target) {
    const message = h("input", { id: "rollback-message", placeholder: "why (release message)", "aria-label": "message",
      value: `roll back to revision ${target.revision}` });
    const status = h("p", { class: "error", hidden: true });
    let d;
    try {
      d = await api("GET", `${nsPath(ns)}/diff?from=${current.revision}&to=${target.revision}`);
    } catch (err) {
      return toast(err.message, "error");
    }
    const base = current.revision;
    clear(dialog,
      h("h2", null, `Roll ${ns} back to revision ${target.revision}?`),
      h("p", null, `This publishes a new release with the content of revision ${target.revision} (version ${target.version}). `
        + `It applies this change to the current revision ${base}:`),
      patchView(d.patch), message, status,
      h("div", { class: "actions" },
        h("button", { class: "danger", id: "rollback-confirm", onclick: async () => {
          try {
            const r = await api("POST", `${nsPath(ns)}/rollback`, {
              body: { to_revision: target.revision, message: message.value }, headers: { "If-Match": String(base) } });
            dialog.close();
            toast(`rolled back ${ns}: revision ${r.revision}`);
            await reload();
          } catch (err) {
            status.hidden = false;
            status.textContent = err.status === 412
              ? `${ns} changed meanwhile (412): close and look at the history again.` : `${err.status} ${err.message}`;
          }
        } }, "Roll back"),
        h("button", { id: "rollback-cancel", onclick: () => dialog.close() }, "Cancel")));
    dialog.showModal();
  }

  const off = bus.on((event) => {
    if (event.event === "change" && event.data.ns === ns && (!current || event.data.revision > current.revision)) reload();
  });
  page(null);
  return off;
}
