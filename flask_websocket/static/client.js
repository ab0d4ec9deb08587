/*
 * Flask-WebSocket's browser client: a WebSocket that reconnects and resumes.
 *
 * Served by the extension at /_websocket/client.js
 * (url_for("flask_websocket.static", filename="client.js")). No
 * dependencies, no build step: load it with a <script> tag and use
 * window.FlaskWebSocket. It speaks the fws.v1 subprotocol
 * (flask_websocket/wire.py): every message from the server comes in a small
 * JSON envelope, those of rooms with history with their position, and on
 * reconnecting the client gives back the last position of every room it had
 * joined (fws_since=<room>:<epoch>:<offset>), so that the handler's
 * ws.join(room) replays what it missed, once, in order.
 *
 *   const socket = new FlaskWebSocket("/ws/lobby");
 *   socket.onmessage = (data, info) => { ... };    // info.room: null or the room
 *   socket.onstatechange = (state, detail) => { ... };
 *   socket.onrecoveryincomplete = (room, info) => { ... };  // reload your state
 *   socket.send("hello");                          // false when not connected
 *
 * docs/client.rst documents it.
 */
"use strict";

(function (root) {
  const SUBPROTOCOL = "fws.v1";
  const SINCE = "fws_since";
  /** Rooms whose positions one reconnection gives back, at most (as the server). */
  const MAX_ROOMS = 100;

  const DEFAULTS = {
    // Backoff after a failure: a random delay between 0 and
    // min(maxDelay, minDelay * 2^attempt) ms ("full jitter").
    minDelay: 500,
    maxDelay: 15000,
    // After 1012 (the server restarts: a reload), at most this: at once, spread.
    restartDelay: 1000,
    // A connection not open after this many ms is given up and retried.
    openTimeout: 10000,
    // The server's heartbeat interval (s) until its first heartbeat says it;
    // a silence of deadAfter intervals means the connection is dead.
    heartbeat: 25,
    deadAfter: 2.5,
    // A connection open this long (ms) starts the backoff over when it drops.
    stableAfter: 5000,
    // Close codes after which the client does not reconnect: normal closure
    // (the handler ended) and policy violation (refused, logged out, banned).
    noReconnect: [1000, 1008],
    // Where to resume from: {room: {epoch, offset}} (a page rendered with
    // websocket.history(room) gives the position of its last message).
    positions: null,
    // Extra subprotocols to offer after fws.v1 (a route with its own).
    protocols: [],
  };

  /** ws:// or wss:// for ``url``, which may be relative to the page. */
  function webSocketUrl(url) {
    const base = root.location ? root.location.href : undefined;
    const resolved = new URL(String(url), base);
    if (resolved.protocol === "http:") resolved.protocol = "ws:";
    else if (resolved.protocol === "https:") resolved.protocol = "wss:";
    return resolved;
  }

  function fromBase64(text) {
    const binary = atob(text);
    const bytes = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i += 1) bytes[i] = binary.charCodeAt(i);
    return bytes.buffer;
  }

  class FlaskWebSocket {
    /**
     * Connect to ``url`` (absolute, or relative to the page: "/ws/lobby").
     * ``options``: see DEFAULTS above.
     */
    constructor(url, options) {
      this.url = webSocketUrl(url);
      this.url.searchParams.delete(SINCE);
      this.options = Object.assign({}, DEFAULTS, options || {});
      /** "connecting", "open", "reconnecting" or "closed" (for good). */
      this.state = "connecting";
      /** Whether the server speaks fws.v1 on this connection (positions, resume). */
      this.resumable = false;
      this.onmessage = null; // (data, {room, epoch, offset}): data is a string or an ArrayBuffer
      // (state, {code, reason, delay, attempt}): on each change, and on each
      // reconnection scheduled while reconnecting (delay: ms until it).
      this.onstatechange = null;
      this.onjoined = null; // (room, {epoch, offset, recovered, resumed})
      this.onrecoveryincomplete = null; // (room, {epoch, offset, recovered, resumed, reason})
      this.onclose = null; // ({code, reason}): closed for good
      this._rooms = new Map(); // room -> {epoch, offset, floor, lossTold}
      const given = this.options.positions || {};
      for (const room of Object.keys(given)) {
        const position = given[room];
        this._rooms.set(room, this._position(position.epoch, position.offset));
      }
      this._ws = null;
      this._sent = new Set(); // rooms whose positions the current connection gave
      this._attempt = 0;
      this._openedAt = 0;
      this._retryTimer = null;
      this._watchdog = null;
      this._heartbeat = this.options.heartbeat;
      this._closing = false;
      this._online = () => {
        if (this.state === "reconnecting" && this._ws === null) this._connect();
      };
      if (root.addEventListener) root.addEventListener("online", this._online);
      this._connect();
    }

    /** Send ``data`` (string, ArrayBuffer, Blob, typed array); false when not connected. */
    send(data) {
      const ws = this._ws;
      if (ws === null || ws.readyState !== 1) return false;
      ws.send(data);
      return true;
    }

    /**
     * Close for good (no reconnection): sends a close frame with ``code``
     * (1000 by default, or 3000-4999) and ``reason``, and calls onclose at once.
     */
    close(code, reason) {
      const detail = { code: code === undefined ? 1000 : code, reason: reason || "" };
      const ws = this._ws;
      if (ws !== null && ws.readyState <= 1) ws.close(detail.code, detail.reason); // may throw
      this._closing = true;
      this._abandon();
      this._finish(detail);
    }

    /** Drop the current connection (if any) and connect again now. */
    reconnect() {
      if (this.state === "closed") return;
      this._abandon(4000, "reconnect");
      this._attempt = 0;
      this._setState("reconnecting", { code: 4000, reason: "reconnect", delay: 0, attempt: 0 });
      this._connect();
    }

    /** Stop resuming ``room`` (the app left it). */
    forget(room) {
      this._rooms.delete(room);
    }

    /** The server's heartbeat interval in seconds (the default until it says; 0: none). */
    get heartbeat() {
      return this._heartbeat;
    }

    /** The last position of each room: {room: {epoch, offset}}. */
    get positions() {
      const positions = {};
      for (const [room, position] of this._rooms) {
        positions[room] = { epoch: position.epoch, offset: position.offset };
      }
      return positions;
    }

    // -- the connection ------------------------------------------------------

    _position(epoch, offset) {
      return { epoch: String(epoch), offset: Number(offset) || 0, floor: null, lossTold: false };
    }

    _connect() {
      clearTimeout(this._retryTimer);
      this._retryTimer = null;
      const url = new URL(this.url.href);
      const sent = new Set();
      for (const [room, position] of this._rooms) {
        if (sent.size >= MAX_ROOMS) break;
        if (position.epoch === "" && position.offset !== 0) continue;
        url.searchParams.append(SINCE, `${room}:${position.epoch}:${position.offset}`);
        sent.add(room);
      }
      const ws = new WebSocket(url.href, [SUBPROTOCOL].concat(this.options.protocols));
      ws.binaryType = "arraybuffer";
      this._ws = ws;
      this._sent = sent;
      this._openedAt = 0;
      this._arm(this.options.openTimeout, "open timeout");
      ws.onopen = () => {
        if (ws !== this._ws) return;
        this._openedAt = Date.now();
        this.resumable = ws.protocol === SUBPROTOCOL;
        this._armHeartbeat();
        this._setState("open", {});
      };
      ws.onmessage = (event) => {
        if (ws !== this._ws) return;
        this._armHeartbeat();
        this._receive(event.data);
      };
      ws.onclose = (event) => {
        if (ws !== this._ws) return;
        this._dropped(event.code, event.reason);
      };
      ws.onerror = () => {}; // a close event follows
    }

    /** Let go of the current socket without waiting for its close handshake. */
    _abandon(code, reason) {
      const ws = this._ws;
      this._ws = null;
      clearTimeout(this._watchdog);
      this._watchdog = null;
      if (ws === null) return;
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      if (ws.readyState <= 1 && code !== undefined) ws.close(code, reason);
    }

    _arm(milliseconds, why) {
      clearTimeout(this._watchdog);
      this._watchdog = null;
      if (milliseconds > 0) {
        this._watchdog = setTimeout(() => {
          this._abandon(4000, why);
          this._dropped(1006, why);
        }, milliseconds);
      }
    }

    _armHeartbeat() {
      this._arm(this._heartbeat * this.options.deadAfter * 1000, "no heartbeat");
    }

    _dropped(code, reason) {
      this._ws = null;
      clearTimeout(this._watchdog);
      this._watchdog = null;
      if (this._closing || this.options.noReconnect.indexOf(code) >= 0) {
        this._finish({ code, reason });
        return;
      }
      if (this._openedAt && Date.now() - this._openedAt >= this.options.stableAfter) {
        this._attempt = 0;
      }
      let delay;
      if (code === 1012) {
        delay = Math.random() * this.options.restartDelay;
      } else {
        const ceiling = Math.min(this.options.maxDelay, this.options.minDelay * 2 ** this._attempt);
        delay = Math.random() * ceiling;
        this._attempt += 1;
      }
      this._setState("reconnecting", { code, reason, delay, attempt: this._attempt }, true);
      this._retryTimer = setTimeout(() => this._connect(), delay);
    }

    _finish(detail) {
      clearTimeout(this._retryTimer);
      clearTimeout(this._watchdog);
      this._retryTimer = this._watchdog = null;
      this._ws = null;
      if (this.state === "closed") return;
      if (root.removeEventListener) root.removeEventListener("online", this._online);
      this._setState("closed", detail);
      this._emit("close", detail);
    }

    _setState(state, detail, again) {
      if (state === this.state && !again) return;
      this.state = state;
      this._emit("statechange", state, detail);
    }

    _emit(name, ...args) {
      const handler = this["on" + name];
      if (typeof handler !== "function") return;
      try {
        handler.apply(this, args);
      } catch (error) {
        setTimeout(() => {
          throw error; // reported like any uncaught error; the client goes on
        });
      }
    }

    // -- what the server says ----------------------------------------------------

    _receive(raw) {
      if (!this.resumable || typeof raw !== "string") {
        this._emit("message", raw, { room: null });
        return;
      }
      let message;
      try {
        message = JSON.parse(raw);
      } catch (error) {
        return; // not fws.v1: nothing the server sends
      }
      if (message === null || typeof message !== "object") return;
      if ("h" in message) {
        this._heartbeat = Number(message.h) > 0 ? Number(message.h) : 0;
        this._armHeartbeat();
      } else if ("j" in message) {
        this._joined(message);
      } else if ("r" in message) {
        this._streamed(message);
      } else {
        this._emit("message", this._data(message), { room: null });
      }
    }

    _data(message) {
      return "d" in message ? message.d : fromBase64(message.b);
    }

    _joined(message) {
      const room = String(message.j);
      const epoch = String(message.e);
      const offset = Number(message.o);
      const resumed = this._sent.has(room);
      const info = { epoch, offset, recovered: message.recovered === true, resumed };
      let position = this._rooms.get(room);
      if (resumed && position && position.epoch === epoch) {
        position.floor = null; // what follows is after our position
      } else {
        // A first join, or another stream: what history holds may follow,
        // older than the join's position.
        position = this._position(epoch, offset);
        position.floor = 0;
        if (!this._rooms.has(room) && this._rooms.size >= MAX_ROOMS) {
          this._rooms.delete(this._rooms.keys().next().value);
        }
        this._rooms.set(room, position);
      }
      this._emit("joined", room, info);
      if (resumed && !info.recovered) {
        position.lossTold = true;
        this._emit("recoveryincomplete", room, Object.assign({ reason: "history" }, info));
      }
    }

    _streamed(message) {
      const room = String(message.r);
      const epoch = String(message.e);
      const offset = Number(message.o);
      let position = this._rooms.get(room);
      if (position === undefined) {
        position = this._position(epoch, offset - 1);
        this._rooms.set(room, position);
      }
      let lost = null;
      if (epoch !== position.epoch) {
        // The store lost the room's stream and started another.
        if (position.epoch !== "") lost = "epoch";
        position.epoch = epoch;
        position.offset = offset;
        position.floor = null;
      } else if (offset > position.offset) {
        if (offset !== position.offset + 1 && position.floor === null && !position.lossTold) {
          lost = "gap";
        }
        position.offset = offset;
        position.floor = null;
      } else if (position.floor !== null && offset > position.floor) {
        position.floor = offset; // history replayed by a first join
      } else {
        return; // had it already
      }
      position.lossTold = false;
      if (lost !== null) {
        const info = { epoch, offset, recovered: false, resumed: false, reason: lost };
        this._emit("recoveryincomplete", room, info);
      }
      this._emit("message", this._data(message), { room, epoch, offset });
    }
  }

  FlaskWebSocket.SUBPROTOCOL = SUBPROTOCOL;
  root.FlaskWebSocket = FlaskWebSocket;
})(typeof window !== "undefined" ? window : globalThis);
