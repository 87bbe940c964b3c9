// Tiny DOM helpers: elements are built with createElement and text nodes only (no HTML strings),
// so nothing the server returns (messages, principals, documents) can inject markup.

export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key === "value") el.value = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of [children].flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

export function clear(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

export function age(seconds) {
  if (!seconds) return "-";
  const delta = Math.max(0, Date.now() / 1000 - seconds);
  if (delta < 60) return `${Math.floor(delta)}s ago`;
  if (delta < 3600) return `${Math.floor(delta / 60)}m ago`;
  if (delta < 86400) return `${Math.floor(delta / 3600)}h ago`;
  return `${Math.floor(delta / 86400)}d ago`;
}

export function isoTime(seconds) {
  return seconds ? new Date(seconds * 1000).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z") : "-";
}

/** Facts as a <dl>: [["revision", 12], ["message", "…", "wide"]] (a third item: the pair's class). */
export function facts(pairs) {
  return h("dl", { class: "facts" }, pairs.map(([k, v, cls]) =>
    h("div", { class: cls || null }, h("dt", null, k), h("dd", null, v === "" || v === null || v === undefined ? "-" : v))));
}

/** A unified patch as <pre> with added/removed/hunk lines coloured. */
export function patchView(patch) {
  const pre = h("pre", { class: "patch" });
  if (!patch) return append(pre, h("span", { class: "muted" }, "(no differences)"));
  for (const line of patch.replace(/\n$/, "").split("\n")) {
    const cls = line.startsWith("+++") || line.startsWith("---") ? "file"
      : line.startsWith("@@") ? "hunk" : line.startsWith("+") ? "add" : line.startsWith("-") ? "del" : "ctx";
    pre.append(h("span", { class: `pl ${cls}` }, line + "\n"));
  }
  return pre;
}

export function toast(message, kind = "ok") {
  const box = document.getElementById("toasts");
  const el = h("div", { class: `toast ${kind}`, role: "status" }, message);
  box.append(el);
  setTimeout(() => el.remove(), 6000);
}
