// msgi.js: an MSGI client for browsers, over WebSocket (one frame per binary
// message; docs/PROTOCOL.md, "MSGI over WebSocket"). A dependency-free ES
// module:
//
//   import { MsgiClient } from "./msgi.js";
//   const client = new MsgiClient("ws://127.0.0.1:8081/chat", { clientId: "ada" });
//   client.addEventListener("push", (e) => console.log(e.detail.text));
//   await client.connect();                      // resolves on WELCOME
//   const answer = await client.call("hello");   // correlated: a promise
//   client.send("one-way");                      // no answer expected
//
// Events (EventTarget): "open" {sessionId}, "push" (a frame the server sent
// on its own: broadcasts, sends), "disconnect" {reason} (the server's
// DISCONNECT), "close" {code, reason, willReconnect}, "reconnecting" {delay},
// "error" {error}.
//
// Wire transforms (compression, encryption, HMAC) are not supported: a frame
// with one of their flags closes the connection as a protocol error.

/** Frame kinds (PROTOCOL.md section 1). */
export const Kind = Object.freeze({
  PING: 0x001,
  PONG: 0x002,
  DATA: 0x010,
  CONTROL: 0x020,
  ERROR: 0x030,
  HEARTBEAT: 0x040,
  DISCONNECT: 0x050,
});

/** Frame flags (the high 4 bits of the type field). */
export const Flags = Object.freeze({
  COMPRESSED: 0x8000,
  ENCRYPTED: 0x4000,
  AUTHENTICATED: 0x2000,
  CORRELATED: 0x1000,
});

const MAGIC = [0x4d, 0x53, 0x47, 0x49]; // "MSGI"
const HEADER_LEN = 10;
const CORRELATED_HEADER_LEN = 14;
const TRANSFORM_FLAGS = Flags.COMPRESSED | Flags.ENCRYPTED | Flags.AUTHENTICATED;
const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** An MSGI error: an ERROR answer (`remote` true), a timeout, a lost connection. */
export class MsgiError extends Error {
  constructor(message, { remote = false, code = "error" } = {}) {
    super(message);
    this.name = "MsgiError";
    this.remote = remote;
    this.code = code;
  }
}

function bytesOf(payload) {
  if (payload === undefined || payload === null) return new Uint8Array(0);
  if (typeof payload === "string") return encoder.encode(payload);
  if (payload instanceof Uint8Array) return payload;
  if (payload instanceof ArrayBuffer) return new Uint8Array(payload);
  throw new TypeError("payload must be a string, a Uint8Array or an ArrayBuffer");
}

/**
 * Encodes one frame: {kind, payload, requestId?, flags?} to its bytes.
 * A requestId (0 to 2^32 - 1) makes it correlated.
 */
export function encodeFrame({ kind, payload, requestId, flags = 0 }) {
  if (!Number.isInteger(kind) || kind < 0 || kind > 0xfff) throw new RangeError("kind must be 0..0xfff");
  const body = bytesOf(payload);
  const correlated = requestId !== undefined && requestId !== null;
  const header = correlated ? CORRELATED_HEADER_LEN : HEADER_LEN;
  const out = new Uint8Array(header + body.length);
  const view = new DataView(out.buffer);
  out.set(MAGIC, 0);
  view.setUint32(4, out.length);
  const type = (flags & 0xf000 & ~Flags.CORRELATED) | (correlated ? Flags.CORRELATED : 0) | kind;
  view.setUint16(8, type);
  if (correlated) view.setUint32(10, requestId >>> 0);
  out.set(body, header);
  return out;
}

/**
 * Decodes the bytes of one message, which must be exactly one frame, to
 * {kind, flags, requestId (or null), payload (Uint8Array), text}.
 * Throws MsgiError (code "protocol") on anything else.
 */
export function decodeFrame(bytes) {
  const data = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  const bad = (why) => new MsgiError(why, { code: "protocol" });
  if (data.length < HEADER_LEN) throw bad(`message shorter than a frame header (${data.length} bytes)`);
  for (let i = 0; i < 4; i++) if (data[i] !== MAGIC[i]) throw bad("bad magic");
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const length = view.getUint32(4);
  if (length < HEADER_LEN) throw bad(`length below header (${length} < 10)`);
  if (length !== data.length) throw bad(`message is not one frame (length ${length}, message ${data.length} bytes)`);
  const type = view.getUint16(8);
  const flags = type & 0xf000;
  const kind = type & 0x0fff;
  let header = HEADER_LEN;
  let requestId = null;
  if (flags & Flags.CORRELATED) {
    if (length < CORRELATED_HEADER_LEN) throw bad(`length below correlated header (${length} < 14)`);
    requestId = view.getUint32(10);
    header = CORRELATED_HEADER_LEN;
  }
  const payload = data.subarray(header);
  return {
    kind,
    flags,
    requestId,
    payload,
    get text() {
      return decoder.decode(payload);
    },
  };
}

// A WebSocket close reason is at most 123 bytes of UTF-8: cut `reason` to
// that many, at a character boundary.
function closeReason(reason) {
  const encoder = new TextEncoder();
  let out = "";
  let bytes = 0;
  for (const ch of String(reason)) {
    const len = encoder.encode(ch).length;
    if (bytes + len > 123) break;
    out += ch;
    bytes += len;
  }
  return out;
}

const DEFAULTS = {
  clientId: null, // announced with HELLO; null: the session id is the client id
  callTimeout: 10_000, // ms a call waits for its answer
  heartbeat: 20_000, // ms between HEARTBEATs while connected (keeps the idle timeout away)
  reconnect: true,
  backoffInitial: 250, // ms before the first reconnect attempt
  backoffMax: 10_000, // ms, the longest wait between attempts
  queueLimit: 256, // frames held while not connected; beyond, send/call fail at once
  queueBytesLimit: 1024 * 1024, // bytes of those frames; beyond, send/call fail at once (not_connected)
  maxFrameSize: 1024 * 1024,
};

/**
 * An MSGI session over WebSocket, reconnecting with backoff until closed.
 */
export class MsgiClient extends EventTarget {
  constructor(url, options = {}) {
    super();
    this.url = url;
    this.options = { ...DEFAULTS, ...options };
    this.sessionId = null;
    this.ws = null;
    this.state = "idle"; // idle, connecting, handshaking, open, closed
    this.pending = new Map(); // request id -> {resolve, reject, timer, sent}
    this.queue = []; // {id, bytes}: encoded frames waiting for a session (id 0: not a call)
    this.queueBytes = 0;
    this.nextId = 1;
    this.attempt = 0;
    this.timers = { heartbeat: null, reconnect: null };
    this.waiters = [];
  }

  /** Connects (once); resolves with the session id on WELCOME. */
  connect() {
    if (this.state === "closed") return Promise.reject(new MsgiError("client closed", { code: "closed" }));
    const ready = new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
    if (this.state === "idle") this.#open();
    else if (this.state === "open") this.#settleWaiters(null);
    return ready;
  }

  /** Sends a one-way frame (no answer). Held while reconnecting. */
  send(payload, { kind = Kind.DATA } = {}) {
    this.#enqueue(encodeFrame({ kind, payload }), 0);
  }

  /**
   * Sends a correlated request; resolves with the answer frame, rejects
   * with MsgiError: the server's ERROR (remote), a timeout, a lost connection.
   */
  call(payload, { kind = Kind.DATA, timeout = this.options.callTimeout } = {}) {
    return new Promise((resolve, reject) => {
      const id = this.#takeId();
      const timer = setTimeout(() => {
        this.pending.delete(id);
        this.#unqueue(id); // a rejected call is never sent later
        reject(new MsgiError(`no answer within ${timeout} ms`, { code: "timeout" }));
      }, timeout);
      this.pending.set(id, { resolve, reject, timer, sent: false });
      try {
        this.#enqueue(encodeFrame({ kind, payload, requestId: id }), id);
      } catch (e) {
        clearTimeout(timer);
        this.pending.delete(id);
        reject(e);
      }
    });
  }

  /** Says DISCONNECT with `reason`, closes, and stops reconnecting. */
  close(reason = "bye") {
    if (this.state === "closed") return;
    const ws = this.ws;
    if (ws && ws.readyState === WebSocket.OPEN) {
      ws.send(encodeFrame({ kind: Kind.DISCONNECT, payload: reason }));
      ws.close(1000, closeReason(reason));
    } else if (ws) {
      ws.close();
    }
    this.#stop("client closed");
  }

  #takeId() {
    // Request ids are per connection on the server's side; unique among
    // the pending calls is what matters.
    do {
      this.nextId = (this.nextId + 1) >>> 0 || 1;
    } while (this.pending.has(this.nextId));
    return this.nextId;
  }

  // Sends now when open, else queues (at most queueLimit frames and
  // queueBytesLimit bytes: beyond either, throws not_connected and queues
  // nothing). `id`: the call's request id, 0 for a one-way frame.
  #enqueue(bytes, id) {
    if (this.state === "closed") throw new MsgiError("client closed", { code: "closed" });
    if (bytes.length > this.options.maxFrameSize) throw new MsgiError("frame too large", { code: "too_large" });
    if (this.state === "open" && this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(bytes);
      this.#markSent(id);
      return;
    }
    if (
      this.queue.length >= this.options.queueLimit ||
      this.queueBytes + bytes.length > this.options.queueBytesLimit
    ) {
      throw new MsgiError("not connected and the queue is full", { code: "not_connected" });
    }
    this.queue.push({ id, bytes });
    this.queueBytes += bytes.length;
    if (this.state === "idle") this.#open();
  }

  #markSent(id) {
    const call = id ? this.pending.get(id) : undefined;
    if (call) call.sent = true;
  }

  // Drops the queued frame of call `id`, if it is still queued.
  #unqueue(id) {
    const at = this.queue.findIndex((entry) => entry.id === id);
    if (at >= 0) {
      this.queueBytes -= this.queue[at].bytes.length;
      this.queue.splice(at, 1);
    }
  }

  #open() {
    this.state = "connecting";
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch (e) {
      this.#emit("error", { error: e });
      this.#lost(1006, String(e));
      return;
    }
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    ws.onopen = () => {
      this.state = "handshaking";
      // HELLO first, with request id 0, as the msgi client does; without a
      // client id there is no handshake and the session opens at once.
      if (this.options.clientId) {
        ws.send(encodeFrame({ kind: Kind.CONTROL, payload: `HELLO ${this.options.clientId}`, requestId: 0 }));
      } else {
        this.#opened(null);
      }
    };
    ws.onmessage = (event) => this.#onMessage(event.data);
    ws.onerror = () => this.#emit("error", { error: new MsgiError("WebSocket error", { code: "transport" }) });
    ws.onclose = (event) => {
      if (this.ws === ws) this.#lost(event.code, event.reason);
    };
  }

  #opened(sessionId) {
    this.state = "open";
    this.sessionId = sessionId;
    this.attempt = 0;
    const queued = this.queue;
    this.queue = [];
    this.queueBytes = 0;
    for (const { id, bytes } of queued) {
      this.ws.send(bytes);
      this.#markSent(id);
    }
    clearInterval(this.timers.heartbeat);
    this.timers.heartbeat = setInterval(() => {
      if (this.ws && this.ws.readyState === WebSocket.OPEN) {
        this.ws.send(encodeFrame({ kind: Kind.HEARTBEAT }));
      }
    }, this.options.heartbeat);
    this.#emit("open", { sessionId });
    this.#settleWaiters(null);
  }

  #settleWaiters(error) {
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) (error ? w.reject(error) : w.resolve(this.sessionId));
  }

  #onMessage(data) {
    if (typeof data === "string") {
      this.#protocolError(new MsgiError("text message from the server", { code: "protocol" }));
      return;
    }
    let frame;
    try {
      frame = decodeFrame(new Uint8Array(data));
      if (frame.flags & TRANSFORM_FLAGS) {
        throw new MsgiError("frame with a wire transform flag (not supported in msgi.js)", { code: "protocol" });
      }
    } catch (e) {
      this.#protocolError(e);
      return;
    }
    if (this.state === "handshaking" && frame.requestId === 0) {
      if (frame.kind === Kind.CONTROL && frame.text.startsWith("WELCOME ")) {
        this.#opened(frame.text.slice("WELCOME ".length)); // a decimal string: never a Number
        return;
      }
      if (frame.kind === Kind.ERROR) {
        // Refused client id: the session stays open under its session id.
        this.#emit("error", { error: new MsgiError(frame.text, { remote: true, code: "hello_refused" }) });
        this.#opened(null);
        return;
      }
    }
    switch (frame.kind) {
      case Kind.PING:
        this.ws.send(encodeFrame({ kind: Kind.PONG, payload: frame.payload, requestId: frame.requestId ?? undefined }));
        return;
      case Kind.HEARTBEAT:
        return;
      case Kind.DISCONNECT:
        this.#emit("disconnect", { reason: frame.text });
        return;
      default:
        break;
    }
    if (frame.requestId !== null) {
      const call = this.pending.get(frame.requestId);
      if (call) {
        this.pending.delete(frame.requestId);
        clearTimeout(call.timer);
        if (frame.kind === Kind.ERROR) call.reject(new MsgiError(frame.text, { remote: true, code: "remote" }));
        else call.resolve(frame);
      }
      return; // a late answer: dropped
    }
    if (frame.kind === Kind.ERROR) {
      this.#emit("error", { error: new MsgiError(frame.text, { remote: true, code: "remote" }) });
      return;
    }
    this.#emit("push", frame);
  }

  #protocolError(error) {
    this.#emit("error", { error });
    if (this.ws) this.ws.close(1002, "protocol error");
  }

  // Rejects the calls sent on the lost connection (all calls when
  // `everyCall`, the client being closed); calls still queued wait for the
  // next session.
  #failPending(why, everyCall) {
    for (const [id, call] of this.pending) {
      if (!everyCall && !call.sent) continue;
      clearTimeout(call.timer);
      this.pending.delete(id);
      call.reject(new MsgiError(why, { code: "connection_lost" }));
    }
  }

  #lost(code, reason) {
    clearInterval(this.timers.heartbeat);
    this.ws = null;
    this.sessionId = null;
    this.#failPending(`connection lost (${code}${reason ? ` ${reason}` : ""})`, false);
    const willReconnect = this.state !== "closed" && this.options.reconnect;
    this.#emit("close", { code, reason, willReconnect });
    if (!willReconnect) {
      this.#stop("connection closed");
      return;
    }
    this.state = "connecting";
    // Exponential backoff with jitter, reset by the next WELCOME.
    const base = Math.min(this.options.backoffMax, this.options.backoffInitial * 2 ** this.attempt);
    const delay = Math.round(base / 2 + Math.random() * (base / 2));
    this.attempt = Math.min(this.attempt + 1, 30);
    this.#emit("reconnecting", { delay });
    this.timers.reconnect = setTimeout(() => {
      if (this.state !== "closed") this.#open();
    }, delay);
  }

  #stop(why) {
    this.state = "closed";
    clearInterval(this.timers.heartbeat);
    clearTimeout(this.timers.reconnect);
    this.#failPending(why, true);
    this.queue = [];
    this.queueBytes = 0;
    this.#settleWaiters(new MsgiError(why, { code: "closed" }));
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}
