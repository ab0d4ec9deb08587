// The chat page: one WebSocket to /ws/<room>?nick=<nickname>, JSON messages.
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
    ws: null,
    me: null, // our connection id, from the welcome message
    nick: "",
    room: "",
    members: new Map(), // connection id -> nickname
    welcomed: false,
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

  function timeNow() {
    return new Date().toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
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

  function addMessage(from, text, mine) {
    const item = document.createElement("li");
    item.className = mine ? "message mine" : "message";
    item.dataset.type = "message";
    item.append(span("time", timeNow()), span("from", from), span("text", text));
    append(item);
  }

  function addNotice(text, kind) {
    const item = document.createElement("li");
    item.className = `notice notice-${kind}`;
    item.dataset.type = kind;
    item.append(span("time", timeNow()), span("text", text));
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
    if (state.ws && state.ws.readyState === WebSocket.OPEN) {
      state.ws.send(JSON.stringify(data));
      return true;
    }
    return false;
  }

  const handlers = {
    welcome(data) {
      state.me = data.id;
      state.welcomed = true;
      state.members.clear();
      state.members.set(data.id, data.nick);
      $("chat").dataset.connectionId = data.id;
      $("messages").replaceChildren();
      showChat();
      setStatus("connected", true);
      addNotice(`You joined #${data.room} as ${data.nick}.`, "join");
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
      addMessage(data.from, data.text, data.id === state.me);
    },
    error(data) {
      addNotice(data.text, "error");
    },
  };

  function connect(nick, room) {
    state.nick = nick;
    state.room = room;
    state.me = null;
    state.welcomed = false;
    state.members.clear();
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const url =
      `${scheme}//${location.host}/ws/${encodeURIComponent(room)}` +
      `?nick=${encodeURIComponent(nick)}`;
    setStatus("connecting…", false);
    $("room-title").textContent = `#${room}`;
    document.title = `#${room} · Chat`;
    const ws = new WebSocket(url);
    state.ws = ws;
    ws.onmessage = (event) => {
      if (ws !== state.ws) return;
      let data;
      try {
        data = JSON.parse(event.data);
      } catch {
        return;
      }
      const handler = data && handlers[data.type];
      if (handler) handler(data);
    };
    ws.onclose = (event) => {
      if (ws !== state.ws) return;
      state.ws = null;
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
    if (state.ws) state.ws.close(1000, "left the room");
  });

  try {
    const saved = localStorage.getItem("chat-nick");
    if (saved && !$("nick").value) $("nick").value = saved;
  } catch {
    // no storage: start with an empty nickname
  }
})();
