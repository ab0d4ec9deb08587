// The chat page: Flask-WebSocket's client (FlaskWebSocket, /_websocket/client.js)
// to /ws/<room>?nick=<nickname>, JSON messages.
//
// The client reconnects by itself after a drop, a server reload or a killed
// worker, and resumes the room's messages where this page was: the page shows
// "reconnecting…" meanwhile, then every message it missed, once, in order. A
// reconnection is a new connection: the server welcomes it again, and the
// member list is rebuilt.
//
// User data (nicknames, messages, room names) only ever reaches the page as
// textContent, never as HTML.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const config = $("config").dataset;
  const limits = {
    nick: Number(config.maxNick),
    room: Number(config.maxRoom),
    message: Number(config.maxMessage),
  };

  /** State of the current visit to a room. */
  const state = {
    client: null, // the FlaskWebSocket
    me: null, // our connection id, from the latest welcome
    mine: new Set(), // every connection id this visit had: our messages
    nick: "",
    room: "",
    members: new Map(), // connection id -> nickname
    welcomed: false, // welcomed at least once in this visit
  };

  // -- validation (the server checks the same rules) -------------------------

  // Control, format, surrogate, private-use and unassigned code points.
  const CONTROL = /\p{C}/u;

  function nameProblem(value, what, limit) {
    if (!value.trim()) return `${what} is empty`;
    if ([...value].length > limit) return `${what} is longer than ${limit} characters`;
    if (CONTROL.test(value)) return `${what} contains control characters`;
    return null;
  }

  // -- rendering --------------------------------------------------------------

  function timeOf(milliseconds) {
    const when = Number.isFinite(milliseconds) ? new Date(milliseconds) : new Date();
    return when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }

  function atBottom(list) {
    return list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  }

  function append(item) {
    const list = $("messages");
    const follow = atBottom(list);
    list.append(item);
    if (follow) list.scrollTop = list.scrollHeight;
  }

  function span(className, text) {
    const element = document.createElement("span");
    element.className = className;
    element.textContent = text;
    return element;
  }

  function addMessage(from, text, mine, time) {
    const item = document.createElement("li");
    item.className = mine ? "message mine" : "message";
    item.dataset.type = "message";
    item.append(span("time", timeOf(time)), span("from", from), span("text", text));
    append(item);
  }

  function addNotice(text, kind) {
    const item = document.createElement("li");
    item.className = `notice notice-${kind}`;
    item.dataset.type = kind;
    item.append(span("time", timeOf()), span("text", text));
    append(item);
  }

  function renderMembers() {
    const list = $("members");
    const entries = [...state.members.entries()].sort(
      (a, b) => a[1].localeCompare(b[1]) || a[0].localeCompare(b[0]),
    );
    const items = entries.map(([id, nick]) => {
      const item = document.createElement("li");
      item.dataset.id = id;
      item.append(span("nick", nick));
      if (id === state.me) {
        item.classList.add("me");
        item.append(span("you", " (you)"));
      }
      return item;
    });
    list.replaceChildren(...items);
    $("member-count").textContent = String(entries.length);
  }

  function setStatus(text, online) {
    const status = $("status");
    status.textContent = text;
    status.className = `status ${online ? "status-online" : "status-offline"}`;
    $("chat").classList.toggle("offline", !online); // the member list may be stale
  }

  function showJoin(error) {
    $("chat").hidden = true;
    $("leave").hidden = true;
    $("join").hidden = false;
    const message = $("join-error");
    message.textContent = error || "";
    message.hidden = !error;
    $("nick").focus();
  }

  function showChat() {
    $("join").hidden = true;
    $("chat").hidden = false;
    $("leave").hidden = false;
    $("text").focus();
  }

  // -- the connection --------------------------------------------------------

  function send(data) {
    return state.client !== null && state.client.send(JSON.stringify(data));
  }

  const handlers = {
    welcome(data) {
      // Each connection is welcomed first: the first of this visit, and each
      // one the client made after a drop.
      state.me = data.id;
      state.mine.add(data.id);
      state.members.set(data.id, data.nick);
      $("chat").dataset.connectionId = data.id;
      if (!state.welcomed) {
        showChat();
        addNotice(`You joined #${data.room} as ${data.nick}.`, "join");
      }
      state.welcomed = true;
      renderMembers();
    },
    join(data) {
      if (data.id === state.me || data.room !== state.room) return;
      state.members.set(data.id, data.nick);
      renderMembers();
      addNotice(`${data.nick} joined.`, "join");
      send({ type: "here", to: data.id }); // tell the newcomer we are here
    },
    present(data) {
      if (data.room !== state.room) return; // only our room's members
      state.members.set(data.id, data.nick);
      renderMembers();
    },
    leave(data) {
      if (!state.members.has(data.id)) return;
      state.members.delete(data.id);
      renderMembers();
      addNotice(`${data.nick} left.`, "leave");
    },
    message(data) {
      // The room's recent messages on joining, what we missed after a drop,
      // then live ones: the client gives each once, in order.
      addMessage(data.from, data.text, state.mine.has(data.id), data.time);
    },
    error(data) {
      addNotice(data.text, "error");
    },
  };

  function connect(nick, room) {
    state.nick = nick;
    state.room = room;
    state.me = null;
    state.mine.clear();
    state.welcomed = false;
    state.members.clear();
    $("messages").replaceChildren();
    setStatus("connecting…", false);
    $("room-title").textContent = `#${room}`;
    document.title = `#${room} · Chat`;
    const client = new FlaskWebSocket(
      `/ws/${encodeURIComponent(room)}?nick=${encodeURIComponent(nick)}`,
    );
    state.client = client;
    client.onstatechange = (now, detail) => {
      if (client !== state.client) return;
      if (now === "open") {
        // A new connection: the member list starts over (the others answer
        // its join), and what it missed follows.
        setStatus("connected", true);
        state.members.clear();
        renderMembers();
        if (state.welcomed) addNotice("Reconnected.", "info");
      } else if (now === "reconnecting" && $("status").textContent !== "reconnecting…") {
        setStatus("reconnecting…", false);
        $("status").dataset.closeCode = String(detail.code); // why it dropped
      }
    };
    client.onmessage = (raw) => {
      if (client !== state.client) return;
      let data;
      try {
        data = JSON.parse(raw);
      } catch {
        return;
      }
      const handler = data && handlers[data.type];
      if (handler) handler(data);
    };
    client.onrecoveryincomplete = () => {
      if (client !== state.client) return;
      // History no longer reaches back to where we were (or the server lost
      // it): what it still holds follows.
      addNotice("Some messages may be missing here: the room's history no longer "
        + "reaches back that far.", "error");
    };
    client.onclose = (event) => {
      // Closed for good: we left, or the server refused us (1008).
      if (client !== state.client) return;
      state.client = null;
      setStatus("not connected", false);
      const wasIn = state.welcomed;
      state.welcomed = false;
      state.members.clear();
      renderMembers();
      if (event.code === 1000 && wasIn) {
        showJoin("");
      } else if (event.reason) {
        showJoin(`Disconnected: ${event.reason} (${event.code}).`);
      } else {
        showJoin(`Disconnected (${event.code}). Join again to reconnect.`);
      }
    };
  }

  // -- the forms --------------------------------------------------------------

  $("join-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const nick = $("nick").value.trim();
    const room = $("room").value.trim();
    const problem = nameProblem(nick, "Nickname", limits.nick) ||
      nameProblem(room, "Room name", limits.room);
    if (problem) {
      showJoin(`${problem}.`);
      return;
    }
    try {
      localStorage.setItem("chat-nick", nick);
    } catch {
      // storage may be disabled: the nickname is just not remembered
    }
    const query = new URLSearchParams(location.search);
    query.set("room", room);
    history.replaceState(null, "", `${location.pathname}?${query}`);
    connect(nick, room);
  });

  $("send-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("text");
    const text = input.value;
    if (!text.trim()) return;
    if (text.length > limits.message) {
      addNotice(`Message too long: at most ${limits.message} characters.`, "error");
      return;
    }
    if (send({ type: "message", text })) {
      input.value = "";
    } else {
      addNotice("Not connected: the message was not sent.", "error");
    }
  });

  $("leave").addEventListener("click", () => {
    if (state.client) state.client.close(1000, "left the room");
  });

  try {
    const saved = localStorage.getItem("chat-nick");
    if (saved && !$("nick").value) $("nick").value = saved;
  } catch {
    // no storage: start with an empty nickname
  }
})();
