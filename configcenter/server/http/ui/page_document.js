// Page 2: the current document as YAML; edit in place and push it guarded by If-Match.
// A 422 puts each of the server's `details.violations` at its line; a 412 says who changed
// the namespace meanwhile and offers the diff between the edited base and the current release.

import { api, ApiError, canWrite, nsPath } from "./api.js";
import { age, clear, h, patchView, toast } from "./dom.js";
import { nsHead, releaseFacts } from "./nsview.js";
import { activeFreezes, canaryView, freezeNotice } from "./release_view.js";
import { bus } from "./state.js";
import { dump, locate } from "./yaml.js";

export function envelopeYaml(kind, message, docText) {
  const indented = docText.replace(/\s+$/, "").split("\n").map((line) => (line ? `  ${line}` : line)).join("\n");
  return `kind: ${kind}\nmessage: ${JSON.stringify(message)}\ndoc:\n${indented}\n`;
}

export function renderDocument(main, ns) {
  let release = null;
  let editing = null; // {base: revision the edit started from}
  let pushing = false; // our own push's change event must not read as someone else's
  const info = h("div", { class: "facts-box" });
  const body = h("div", { class: "doc-body" });
  const notice = h("div", { class: "notice", id: "live-notice", hidden: true });
  const frozen = h("div"); // the active freezes covering ns (release_view.js)
  const canary = h("div"); // base and candidate while a canary runs
  clear(main, nsHead(ns, "ns"), frozen, notice, info, canary, body);

  async function load() {
    try {
      release = await api("GET", nsPath(ns));
    } catch (err) {
      clear(body, h("p", { class: "error" }, err.status === 404 ? `namespace ${ns} does not exist` : err.message));
      return;
    }
    main.querySelector(".page-head").replaceWith(nsHead(ns, "ns", release.kind));
    clear(info, releaseFacts(release));
    clear(canary, canaryView(release));
    if (!editing) showView();
    clear(frozen, freezeNotice(ns, await activeFreezes(ns)));
  }

  function showView() {
    editing = null;
    notice.hidden = true;
    const text = dump(release.doc);
    clear(body,
      h("div", { class: "toolbar" },
        canWrite(ns) ? h("button", { class: "primary", id: "edit", onclick: () => showEditor(text) }, "Edit") : null,
        h("span", { class: "muted" }, `YAML of revision ${release.revision}`)),
      h("pre", { class: "yaml", id: "doc-view" }, text));
  }

  function showEditor(text) {
    editing = { base: release.revision };
    const area = h("textarea", { id: "doc-editor", spellcheck: "false", wrap: "off", "aria-label": "document (YAML)" });
    area.value = text;
    const gutter = h("pre", { class: "gutter", "aria-hidden": "true" });
    const editorBox = h("div", { class: "editor" }, gutter, area);
    const message = h("input", { id: "push-message", placeholder: "release message", "aria-label": "message" });
    const problems = h("div", { id: "push-result" });
    const base = h("span", { class: "muted", id: "edit-base" });
    const marks = new Map(); // line -> message
    const drawGutter = () => {
      const count = area.value.split("\n").length;
      clear(gutter, Array.from({ length: count }, (_, i) =>
        h("span", { class: marks.has(i) ? "ln err" : "ln", title: marks.get(i) || null, dataset: { line: i + 1 } }, `${i + 1}\n`)));
      gutter.scrollTop = area.scrollTop;
      editorBox.style.height = `${Math.min(Math.max(count + 2, 8) * 18 + 20, Math.max(320, window.innerHeight * 0.65))}px`;
    };
    const setBase = () => { base.textContent = `editing revision ${editing.base}; the push sends If-Match: ${editing.base}`; };
    area.addEventListener("input", () => { marks.clear(); drawGutter(); });
    area.addEventListener("scroll", () => { gutter.scrollTop = area.scrollTop; });
    const selectLine = (line) => {
      const lines = area.value.split("\n");
      const start = lines.slice(0, line).reduce((n, l) => n + l.length + 1, 0);
      area.focus();
      area.setSelectionRange(start, start + lines[line].length);
    };

    async function push() {
      clear(problems);
      marks.clear();
      const text = area.value;
      pushing = true;
      try {
        const result = await api("PUT", nsPath(ns), {
          body: envelopeYaml(release.kind, message.value, text), headers: { "If-Match": String(editing.base) },
        });
        if (result && result.proposal) { // 202: a review policy held the change as a proposal
          problems.append(h("p", { class: "notice", id: "push-proposal" },
            `Held for review: proposal ${result.proposal.id} (${result.message}). Nothing is released until another writer approves it.`));
          return;
        }
        editing = null;
        toast(`pushed ${ns}: revision ${result.revision}`);
        release = result;
        clear(info, releaseFacts(release));
        showView();
        return;
      } catch (err) {
        if (!(err instanceof ApiError)) throw err;
        if (err.status === 422) showViolations(text, err);
        else if (err.status === 412) await showConflict(err);
        else problems.append(h("p", { class: "error", id: "push-error" }, `${err.status} ${err.code}: ${err.message}`));
      } finally {
        pushing = false;
      }
      drawGutter();
    }

    function showViolations(text, err) {
      const list = h("ul", { class: "violations", id: "violations" });
      for (const v of err.details.violations || []) {
        const where = locate(text, v.path);
        marks.set(where.line, `${v.path}: ${v.message}`);
        list.append(h("li", { class: "violation", dataset: { path: v.path, line: where.line + 1 } },
          h("button", { class: "link", onclick: () => selectLine(where.line) }, `line ${where.line + 1}`), " ",
          h("code", { class: "path" }, v.path), " ", h("span", null, v.message)));
      }
      problems.append(h("p", { class: "error" }, "The server refused the document (422):"), list);
      if (err.details.violations && err.details.violations.length) selectLine(locate(text, err.details.violations[0].path).line);
    }

    async function showConflict(err) {
      const current = await api("GET", nsPath(ns)).catch(() => null);
      const box = h("div", { class: "conflict", id: "conflict" });
      const diffBox = h("div");
      const was = editing.base;
      box.append(h("p", { class: "error" }, `Conflict (412): revision ${was} is no longer current. `,
        current ? [`${current.principal || "someone"} changed it meanwhile: revision ${current.revision}, `,
          `${age(current.time)}`, current.message ? ` — “${current.message}”` : ""] : err.message));
      if (current) {
        box.append(h("div", { class: "actions" },
          h("button", { id: "conflict-diff", onclick: async () => {
            const d = await api("GET", `${nsPath(ns)}/diff?from=${was}&to=${current.revision}`);
            clear(diffBox, h("p", { class: "muted" }, `What changed between revision ${was} and ${current.revision}:`),
              patchView(d.patch));
          } }, `Show their change (${was} → ${current.revision})`),
          h("button", { id: "conflict-rebase", onclick: () => {
            editing.base = current.revision;
            release = current;
            clear(info, releaseFacts(release));
            setBase();
            box.remove();
          } }, `Keep my edit, push over revision ${current.revision}`),
          h("button", { id: "conflict-discard", onclick: () => { editing = null; load(); } }, "Discard my edit")), diffBox);
      }
      problems.append(box);
    }

    setBase();
    clear(body,
      h("div", { class: "toolbar" }, base),
      editorBox,
      h("div", { class: "toolbar" }, message,
        h("button", { class: "primary", id: "push", onclick: push }, "Push"),
        h("button", { id: "cancel", onclick: () => { editing = null; load(); } }, "Cancel")),
      problems);
    drawGutter();
    area.focus();
  }

  const off = bus.on((event) => {
    if (event.event !== "change" || event.data.ns !== ns) return;
    if (pushing || (release && event.data.revision <= release.revision)) return;
    if (editing) {
      notice.hidden = false;
      notice.textContent = `${event.data.principal || "someone"} changed ${ns} (revision ${event.data.revision}) while you edit: `
        + "your push will be refused with a conflict.";
    } else {
      load().then(() => toast(`${ns} changed live: revision ${event.data.revision}`, "info"));
    }
  });
  load();
  return off;
}
