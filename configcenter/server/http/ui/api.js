// The admin API: fetch() with the session's bearer token; errors become ApiError with the
// server's {error: {code, message, details}}.  Responses that carry X-Configcenter-Revision
// also say whether the server is serving a stale view (X-Configcenter-Stale: seconds).

const TOKEN_KEY = "configcenter.token";

export const session = {
  token: sessionStorage.getItem(TOKEN_KEY) || "",
  who: null, // GET /v1/whoami: {principal, role, namespaces, read_requires_token}
};

export function setToken(token) {
  session.token = token || "";
  if (session.token) sessionStorage.setItem(TOKEN_KEY, session.token);
  else sessionStorage.removeItem(TOKEN_KEY);
}

const ROLES = ["reader", "writer", "admin"];

/** Whether the signed-in principal may push/roll back `ns` (the server checks again). */
export function canWrite(ns) {
  const who = session.who;
  if (!who || !who.role || ROLES.indexOf(who.role) < 1) return false;
  if (!who.namespaces || ns === undefined) return true;
  return who.namespaces.some((e) => ns === e || (e.endsWith("/") && ns.startsWith(e)));
}

export class ApiError extends Error {
  constructor(status, body, requestId) {
    const err = body && body.error ? body.error : { code: `http_${status}`, message: String(body || status), details: {} };
    super(err.message);
    this.status = status;
    this.code = err.code;
    this.details = err.details || {};
    this.requestId = requestId;
  }
}

/** Staleness as last reported by the server; listeners get (staleSeconds | 0). */
export const health = { stale: 0, listeners: new Set() };

export function reportStale(seconds) {
  const value = Number(seconds) || 0;
  if (value === health.stale) return;
  health.stale = value;
  for (const fn of health.listeners) fn(value);
}

export function authHeaders(extra = {}) {
  const headers = { ...extra };
  if (session.token) headers.Authorization = `Bearer ${session.token}`;
  return headers;
}

/** `body`: an object (sent as JSON) or a string (sent as application/yaml). */
export async function api(method, path, { body, headers } = {}) {
  const all = authHeaders({ Accept: "application/json", ...(headers || {}) });
  let payload;
  if (typeof body === "string") {
    payload = body;
    all["Content-Type"] = "application/yaml";
  } else if (body !== undefined) {
    payload = JSON.stringify(body);
    all["Content-Type"] = "application/json";
  }
  const resp = await fetch(path, { method, headers: all, body: payload, cache: "no-store" });
  if (resp.headers.has("X-Configcenter-Revision")) reportStale(resp.headers.get("X-Configcenter-Stale"));
  const text = await resp.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = text;
  }
  if (!resp.ok) {
    const err = new ApiError(resp.status, data, resp.headers.get("X-Request-ID"));
    // a token the server no longer accepts (revoked, a restarted `configcenter dev`): sign in again
    if (resp.status === 401 && session.who) window.dispatchEvent(new CustomEvent("configcenter:unauthorized", { detail: err.message }));
    throw err;
  }
  return data;
}

export const nsPath = (ns) => `/v1/namespaces/${ns.split("/").map(encodeURIComponent).join("/")}`;
