// Server-Sent Events over fetch(): EventSource cannot send an Authorization header, and with
// auth.read_requires_token the watch needs one, so the console reads /v1/watch as a
// text/event-stream body itself.  It parses frames as the SSE spec does (id/event/data fields,
// comments, CRLF/LF/CR line ends), remembers the last id (the server puts an id only on the last
// frame of an etcd transaction, so a stream cut mid-transaction resumes before it), and after a
// dropped connection reconnects with that id in Last-Event-ID, with backoff: the server then
// replays what was missed from its ring, or sends a `reset` snapshot if it cannot.

import { authHeaders } from "./api.js";

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export class EventStream {
  /**
   * selectors: namespaces / "prefix/" (empty: everything the token may see).
   * onEvent({event, id, data}), onStatus({state, lastId, connects, resumedFrom, error}).
   */
  constructor({ selectors = [], onEvent = () => {}, onStatus = () => {} } = {}) {
    this.selectors = selectors;
    this.onEvent = onEvent;
    this.onStatus = onStatus;
    this.lastId = null;
    this.connects = 0;
    this.stopped = true;
    this.controller = null;
  }

  start() {
    if (!this.stopped) return this;
    this.stopped = false;
    this.loop();
    return this;
  }

  stop() {
    this.stopped = true;
    if (this.controller) this.controller.abort();
  }

  status(state, more = {}) {
    this.state = state;
    this.onStatus({ state, lastId: this.lastId, connects: this.connects, ...more });
  }

  async loop() {
    let delay = 500;
    while (!this.stopped) {
      this.controller = new AbortController();
      const resumeFrom = this.lastId;
      try {
        const query = this.selectors.map((s) => `ns=${encodeURIComponent(s)}`).join("&");
        const headers = authHeaders({ Accept: "text/event-stream" });
        if (resumeFrom) headers["Last-Event-ID"] = resumeFrom;
        this.status("connecting");
        const resp = await fetch(`/v1/watch${query ? `?${query}` : ""}`, {
          headers, signal: this.controller.signal, cache: "no-store",
        });
        if (!resp.ok) {
          const body = await resp.json().catch(() => null);
          const message = body && body.error ? body.error.message : `HTTP ${resp.status}`;
          this.status("error", { error: message, httpStatus: resp.status });
          // a refused selector or token will not get better by retrying quickly
          delay = resp.status >= 400 && resp.status < 500 ? 10000 : delay;
        } else {
          this.connects += 1;
          this.status("live", { resumedFrom: resumeFrom });
          delay = 500;
          await this.read(resp.body);
          if (!this.stopped) this.status("reconnecting", { error: "stream ended" });
        }
      } catch (err) {
        if (this.stopped) return;
        this.status("reconnecting", { error: String(err && err.message ? err.message : err) });
      }
      if (this.stopped) return;
      await sleep(delay + Math.random() * 250);
      delay = Math.min(delay * 2, 10000);
    }
  }

  async read(body) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let frame = { event: "", data: [] };
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      for (;;) {
        const match = /\r\n|\n|\r/.exec(buffer);
        if (!match) break;
        if (match[0] === "\r" && match.index === buffer.length - 1) break; // maybe the \r of a \r\n
        const line = buffer.slice(0, match.index);
        buffer = buffer.slice(match.index + match[0].length);
        frame = this.line(line, frame);
      }
    }
  }

  /** One line of the stream; returns the frame being built. */
  line(line, frame) {
    if (line === "") {
      if (frame.data.length) this.dispatch(frame.event || "message", frame.data.join("\n"));
      return { event: "", data: [] };
    }
    if (line.startsWith(":")) return frame; // comment
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") frame.event = value;
    else if (field === "data") frame.data.push(value);
    else if (field === "id" && !value.includes("\0")) this.lastId = value || null;
    return frame;
  }

  dispatch(event, raw) {
    let data = raw;
    try {
      data = JSON.parse(raw);
    } catch {
      // not JSON: hand it over as text
    }
    this.onEvent({ event, id: this.lastId, data });
  }
}
