// The console's shell: sign-in, the hash router, the header, the stale banner and the
// console-wide watch that feeds live badges.  Pages live in page_*.js; each render function
// fills the main element and returns a cleanup function.

import { api, ApiError, health, reportStale, session, setToken } from "./api.js";
import { clear, h } from "./dom.js";
import { EventStream } from "./sse.js";
import { bus } from "./state.js";
import { renderNamespaces } from "./page_namespaces.js";
import { renderDocument } from "./page_document.js";
import { renderHistory } from "./page_history.js";
import { renderRoute } from "./page_route.js";
import { renderLive, renderRollout } from "./page_live.js";

const main = document.getElementById("main");
let cleanup = null;
let watch = null;

const ROUTES = [
  [/^#\/namespaces$/, () => renderNamespaces(main)],
  [/^#\/ns\/(.+)$/, (m) => renderDocument(main, m[1])],
  [/^#\/history\/(.+)$/, (m) => renderHistory(main, m[1])],
  [/^#\/route\/(.+)$/, (m) => renderRoute(main, m[1])],
  [/^#\/rollout\/(.+)$/, (m) => renderRollout(main, m[1])],
  [/^#\/live$/, () => renderLive(main)],
];

function route() {
  if (cleanup) cleanup();
  cleanup = null;
  if (!session.who) return renderLogin();
  const hash = decodeURI(location.hash || "#/namespaces");
  const page = hash.split("/")[1] || "namespaces";
  for (const link of document.querySelectorAll("[data-nav]")) {
    link.classList.toggle("active", link.dataset.nav === page || (page !== "live" && link.dataset.nav === "namespaces"));
  }
  for (const [pattern, render] of ROUTES) {
    const m = pattern.exec(hash);
    if (m) {
      cleanup = render(m) || null;
      return;
    }
  }
  location.hash = "#/namespaces";
}

function renderWho() {
  const box = document.getElementById("who");
  const who = session.who;
  if (!who) return clear(box);
  const role = who.role || "anonymous";
  const readOnly = !who.role || who.role === "reader";
  clear(box,
    h("span", { class: "principal", id: "who-principal" }, who.principal || "anonymous"),
    h("span", { class: `role role-${role}`, id: "who-role" }, role),
    readOnly ? h("span", { class: "role ro", id: "read-only" }, "read-only") : null,
    who.namespaces ? h("span", { class: "scope", title: "scope" }, who.namespaces.join(" ")) : null,
    h("button", { class: "link", id: "sign-out", onclick: signOut }, "Sign out"));
}

function renderLogin(error) {
  clear(document.getElementById("who"));
  const input = h("input", { type: "password", id: "token", name: "token", autocomplete: "off",
    placeholder: "bearer token", "aria-label": "token" });
  const form = h("form", { class: "card login", id: "login" },
    h("h1", null, "Sign in"),
    h("p", { class: "muted" }, "Paste a token from the server's auth.tokens (", h("code", null, "configcenter dev"),
      " prints one). It is kept in this tab only (sessionStorage)."),
    input,
    error ? h("p", { class: "error", id: "login-error" }, error) : null,
    h("div", { class: "actions" },
      h("button", { type: "submit", class: "primary", id: "sign-in" }, "Sign in"),
      h("button", { type: "button", id: "anonymous", onclick: () => signIn("") }, "Continue without a token")));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    signIn(input.value.trim());
  });
  clear(main, form);
  input.focus();
}

async function signIn(token) {
  setToken(token);
  try {
    const who = await api("GET", "/v1/whoami");
    if (!who.principal && who.read_requires_token) throw new Error("this server needs a token to read");
    session.who = who;
  } catch (err) {
    setToken("");
    session.who = null;
    return renderLogin(err instanceof ApiError && err.status === 401 ? "unknown token" : err.message);
  }
  renderWho();
  startWatch();
  route();
}

function signOut(message) {
  setToken("");
  session.who = null;
  if (watch) watch.stop();
  watch = null;
  if (cleanup) cleanup();
  cleanup = null;
  if (typeof message === "string") renderLogin(message);
  else route();
}

function startWatch() {
  if (watch) watch.stop();
  watch = new EventStream({
    onEvent: (event) => {
      if (event.event === "progress") reportStale(event.data.stale ? event.data.stale_seconds || 0.001 : 0);
      bus.emit(event);
    },
    onStatus: (status) => {
      if (status.httpStatus === 401) signOut(`the server no longer accepts this token: ${status.error}`);
      else bus.emit({ event: "status", data: status });
    },
  }).start();
}

health.listeners.add((stale) => {
  const banner = document.getElementById("stale-banner");
  banner.hidden = !stale;
  if (stale) {
    banner.textContent = `etcd is unreachable: the server shows its last view (${stale.toFixed(1)} s old); `
      + "writes are refused until it is back.";
  }
});

window.addEventListener("hashchange", route);
window.addEventListener("configcenter:unauthorized", (ev) => signOut(`signed out: ${ev.detail}`));

// Resume a session of this tab (the token survives a reload, not a new tab).
if (session.token) signIn(session.token);
else renderLogin();
