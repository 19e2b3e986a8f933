// The notification bell of the site header (every page, signed-in users; ui.js renderHeader).
// The unread count comes from `/ws/notifications` (API.md "Notifications and webhooks"): on
// connect and on every change, with each new notification as it is made. The socket is opened
// with a one-time ticket, so every reconnect asks for a fresh one, after a growing delay with
// jitter (a restarting node is not hit by every tab at once); while it is down the count (and
// the open list) come from GET /api/notifications every POLL_MS. The dropdown lists the
// notifications newest first, a page at a time; unread ones are marked; opening one marks it
// read. Titles, names and URLs are user text: they go in only through `textContent` (ui.js `el`).

import { ApiError, api, currentUser, notificationSocketUrl } from "/static/js/api.js";
import { el, showError } from "/static/js/ui.js";

const PAGE = 20;
const POLL_MS = 30_000;
const FIRST_RETRY_MS = 1000;
const MAX_RETRY_MS = 30_000;
const SVG = "http://www.w3.org/2000/svg";
const BELL_PATH = "M12 22a2.5 2.5 0 0 0 2.5-2.5h-5A2.5 2.5 0 0 0 12 22zm7-6v-5a7 7 0 0 0-5.5-6.84V3"
  + "a1.5 1.5 0 0 0-3 0v1.16A7 7 0 0 0 5 11v5l-2 2v1h18v-1l-2-2z";

const bell = {
  root: null,
  button: null,
  badge: null,
  panel: null,
  list: null,
  more: null,
  status: null,
  errorBox: null,
  count: 0,
  items: new Map(), // notification id → its list item
  cursor: null,
  loaded: false,
  started: false,
  stopped: false,
  socket: null,
  retry: 0,
  retryTimer: 0,
  pollTimer: 0,
  muted: new Set(), // channels muted from this list (their buttons read "Unmute")
};

// Read by the browser tests: whether the socket is up, the count shown, frames received.
const diagnostics = { connected: false, count: 0, messages: 0, connects: 0 };
window.sfBell = diagnostics;

// --- the count ----------------------------------------------------------------------------------

function setCount(count) {
  bell.count = Math.max(0, Number(count) || 0);
  diagnostics.count = bell.count;
  bell.badge.textContent = bell.count > 99 ? "99+" : String(bell.count);
  bell.badge.hidden = bell.count === 0;
  bell.button.setAttribute("aria-label", bell.count
    ? `Notifications, ${bell.count} unread` : "Notifications");
}

// --- the socket, and polling while it is down ---------------------------------------------------

async function connect() {
  clearTimeout(bell.retryTimer);
  if (bell.stopped || !currentUser()) return;
  let url;
  try {
    url = await notificationSocketUrl();
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) {
      stop(); // signed out (here or in another tab): nothing to count
      return;
    }
    startPolling();
    reconnectLater();
    return;
  }
  const socket = new WebSocket(url);
  bell.socket = socket;
  socket.onopen = () => {
    if (bell.socket !== socket) return;
    const again = diagnostics.connects > 0;
    bell.retry = 0;
    diagnostics.connected = true;
    diagnostics.connects += 1;
    stopPolling();
    // Back after an outage: the list may have missed notifications made meanwhile.
    if (again && bell.loaded) refresh().catch(() => {});
  };
  socket.onmessage = (event) => {
    if (bell.socket !== socket) return;
    diagnostics.messages += 1;
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      return;
    }
    if (message.type === "unread_count") setCount(message.count);
    else if (message.type === "notification" && message.notification) addNewest([message.notification]);
  };
  socket.onclose = () => {
    if (bell.socket !== socket) return;
    bell.socket = null;
    diagnostics.connected = false;
    if (bell.stopped) return;
    startPolling();
    reconnectLater();
  };
}

function reconnectLater() {
  if (bell.stopped) return;
  const ceiling = Math.min(MAX_RETRY_MS, FIRST_RETRY_MS * 2 ** bell.retry);
  bell.retry += 1;
  bell.retryTimer = setTimeout(connect, ceiling / 2 + Math.random() * ceiling / 2);
}

function startPolling() {
  if (bell.pollTimer) return;
  const poll = () => refresh().catch(() => {});
  poll();
  bell.pollTimer = setInterval(poll, POLL_MS);
}

function stopPolling() {
  clearInterval(bell.pollTimer);
  bell.pollTimer = 0;
}

function stop() {
  bell.stopped = true;
  stopPolling();
  clearTimeout(bell.retryTimer);
  if (bell.socket) {
    const socket = bell.socket;
    bell.socket = null;
    socket.close(1000);
  }
}

async function refresh() {
  /** The count, and the newest page merged into the list when it is shown (REST). */
  if (!currentUser()) {
    stop();
    return;
  }
  const page = await api("GET", `/api/notifications?limit=${bell.loaded ? PAGE : 1}`,
    undefined, { auth: "required" });
  setCount(page.unread_count);
  if (bell.loaded) addNewest(page.data);
}

// --- the list -----------------------------------------------------------------------------------

function watchPath(data) {
  const id = Number(data && data.stream_id);
  return Number.isSafeInteger(id) && id > 0 ? `/watch/${id}` : null;
}

function describe(notification) {
  /** [link target or null, the item's text nodes] for a notification. */
  const data = notification.data || {};
  if (notification.type === "stream.online") {
    return [watchPath(data), [
      el("strong", { class: "bell-name", text: String(data.username || "A channel") }),
      " is live: ",
      el("span", { class: "bell-title", "data-testid": "bell-title", text: String(data.title || "Untitled stream") }),
    ]];
  }
  if (notification.type === "webhook.disabled") {
    return ["/dashboard#webhooks", [
      el("strong", { text: "A webhook was disabled: " }),
      el("span", { class: "bell-title", text: String(data.url || "") }),
      data.reason ? ` (${data.reason})` : "",
    ]];
  }
  return [null, [el("span", { text: String(notification.type) })]];
}

function showRead(item) {
  item.classList.remove("unread");
  item.dataset.unread = "false";
  const marker = item.querySelector(".bell-unread");
  if (marker) marker.remove();
}

async function markRead(notification, item) {
  if (item.dataset.unread !== "true") return;
  await api("POST", "/api/notifications/read", { ids: [notification.id] }, { auth: "required" });
  showRead(item);
  if (!diagnostics.connected) setCount(bell.count - 1); // else the socket sends the count
}

function setMuted(username, muted) {
  if (muted) bell.muted.add(username);
  else bell.muted.delete(username);
  for (const button of bell.list.querySelectorAll(".bell-mute")) {
    if (button.dataset.username === username) button.textContent = muted ? "Unmute" : "Mute";
  }
}

function muteButton(username) {
  const button = el("button", {
    type: "button", class: "link-button bell-mute", "data-testid": "bell-mute", "data-username": username,
  }, bell.muted.has(username) ? "Unmute" : "Mute");
  button.addEventListener("click", async (event) => {
    event.stopPropagation();
    const muting = !bell.muted.has(username);
    button.disabled = true;
    showError(bell.errorBox, null);
    try {
      await api(muting ? "PUT" : "DELETE", `/api/notifications/mutes/${encodeURIComponent(username)}`,
        undefined, { auth: "required" });
      setMuted(username, muting);
      // The dashboard's list of muted channels, when it is this page, follows.
      document.dispatchEvent(new CustomEvent("sf:mutes-changed", { detail: { username, muted: muting, from: "bell" } }));
      bell.status.textContent = muting
        ? `Muted ${username}: nothing more when they go live (you still follow them).`
        : `${username} is not muted any more.`;
    } catch (error) {
      showError(bell.errorBox, error);
    } finally {
      button.disabled = false;
    }
  });
  return button;
}

function itemOf(notification) {
  const unread = !notification.read_at;
  const [href, text] = describe(notification);
  const when = new Date(notification.created_at);
  const time = el("time", {
    class: "bell-time", datetime: notification.created_at,
    text: Number.isNaN(when.getTime()) ? "" : when.toLocaleString([], { dateStyle: "short", timeStyle: "short" }),
  });
  const body = [unread ? el("span", { class: "bell-unread", text: "Unread: " }) : null, ...text];
  const item = el("li", {
    class: unread ? "bell-item unread" : "bell-item",
    "data-id": notification.id,
    "data-type": notification.type,
    "data-unread": String(unread),
    "data-testid": "bell-item",
  });
  if (href) {
    const link = el("a", { href, class: "bell-link", "data-testid": "bell-link" }, body);
    link.addEventListener("click", async (event) => {
      const plain = event.button === 0 && !event.ctrlKey && !event.metaKey && !event.shiftKey && !event.altKey;
      if (plain) event.preventDefault();
      try {
        await markRead(notification, item);
      } catch {
        // Not marked (offline?): opening what it points to matters more.
      }
      if (plain) location.assign(href);
    });
    item.append(link);
  } else {
    const mark = el("button", { type: "button", class: "link-button bell-link", "data-testid": "bell-link" }, body);
    mark.addEventListener("click", () => markRead(notification, item).catch((error) => showError(bell.errorBox, error)));
    item.append(mark);
  }
  const actions = el("span", { class: "bell-actions" }, time);
  if (notification.type === "stream.online" && notification.data && notification.data.username) {
    actions.append(muteButton(String(notification.data.username)));
  }
  item.append(actions);
  return item;
}

function dropPlaceholder() {
  const empty = bell.list.querySelector(".bell-empty");
  if (empty) empty.remove();
}

function addNewest(notifications) {
  /** Notifications newer than the list's (newest first in `notifications`) go on top. */
  if (!bell.loaded) return;
  const fresh = notifications.filter((notification) => !bell.items.has(notification.id));
  if (!fresh.length) return;
  dropPlaceholder();
  const newest = Math.max(0, ...bell.items.keys());
  const items = fresh.filter((notification) => notification.id > newest)
    .sort((a, b) => b.id - a.id)
    .map((notification) => {
      const item = itemOf(notification);
      bell.items.set(notification.id, item);
      return item;
    });
  bell.list.prepend(...items);
}

async function loadPage() {
  const query = new URLSearchParams({ limit: String(PAGE) });
  if (bell.cursor) query.set("cursor", bell.cursor);
  const page = await api("GET", `/api/notifications?${query}`, undefined, { auth: "required" });
  bell.loaded = true;
  for (const notification of page.data) {
    if (bell.items.has(notification.id)) continue;
    const item = itemOf(notification);
    bell.items.set(notification.id, item);
    bell.list.append(item);
  }
  if (!bell.items.size && !bell.list.querySelector(".bell-empty")) {
    bell.list.append(el("li", { class: "bell-empty status", text: "No notifications yet. Follow channels to hear when they go live." }));
  }
  bell.cursor = page.pagination ? page.pagination.next_cursor : null;
  bell.more.hidden = !bell.cursor;
  setCount(page.unread_count);
}

// --- the dropdown -------------------------------------------------------------------------------

function setOpen(open) {
  bell.panel.hidden = !open;
  bell.button.setAttribute("aria-expanded", String(open));
  if (open && !bell.loaded) {
    showError(bell.errorBox, null);
    loadPage().catch((error) => showError(bell.errorBox, error));
  }
}

async function markAllRead(button) {
  button.disabled = true;
  showError(bell.errorBox, null);
  try {
    await api("POST", "/api/notifications/read-all", undefined, { auth: "required" });
    for (const item of bell.items.values()) showRead(item);
    setCount(0);
  } catch (error) {
    showError(bell.errorBox, error);
  } finally {
    button.disabled = false;
  }
}

function bellIcon() {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("width", "20");
  svg.setAttribute("height", "20");
  svg.setAttribute("aria-hidden", "true");
  svg.setAttribute("focusable", "false");
  const path = document.createElementNS(SVG, "path");
  path.setAttribute("d", BELL_PATH);
  path.setAttribute("fill", "currentColor");
  svg.append(path);
  return svg;
}

function build() {
  bell.badge = el("span", { class: "bell-count", "data-testid": "bell-count", hidden: true }, "0");
  bell.button = el("button", {
    type: "button", class: "bell-button", "aria-haspopup": "true", "aria-expanded": "false",
    "aria-controls": "bell-panel", "aria-label": "Notifications", "data-testid": "bell-button",
  }, bellIcon(), bell.badge);
  const readAll = el("button", { type: "button", class: "link-button", "data-testid": "bell-read-all" }, "Mark all read");
  readAll.addEventListener("click", () => markAllRead(readAll));
  bell.list = el("ol", { class: "bell-list", "data-testid": "bell-list" });
  bell.more = el("button", { type: "button", class: "button", hidden: true, "data-testid": "bell-more" }, "Load more");
  bell.more.addEventListener("click", async () => {
    bell.more.disabled = true;
    try {
      await loadPage();
    } catch (error) {
      showError(bell.errorBox, error);
    } finally {
      bell.more.disabled = false;
    }
  });
  bell.status = el("p", { class: "status bell-status", role: "status", "aria-live": "polite", "data-testid": "bell-status" });
  bell.errorBox = el("div", { class: "error", role: "alert", hidden: true });
  bell.panel = el("div", {
    id: "bell-panel", class: "bell-panel", role: "region", "aria-label": "Notifications", hidden: true,
    "data-testid": "bell-panel",
  },
  el("div", { class: "bell-head" }, el("strong", { text: "Notifications" }), readAll,
    el("a", { href: "/dashboard#notifications", class: "bell-settings" }, "Settings")),
  bell.status, bell.errorBox, bell.list, bell.more);
  bell.root = el("div", { class: "bell", "data-testid": "bell" }, bell.button, bell.panel);
  bell.button.addEventListener("click", () => setOpen(bell.panel.hidden));
  document.addEventListener("click", (event) => {
    if (!bell.panel.hidden && !bell.root.contains(event.target)) setOpen(false);
  });
  document.addEventListener("sf:mutes-changed", (event) => {
    const { username, muted, from } = event.detail || {};
    if (from !== "bell" && typeof username === "string") setMuted(username, Boolean(muted));
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && !bell.panel.hidden) {
      setOpen(false);
      bell.button.focus();
    }
  });
}

export function mountBell(nav) {
  /** Put the bell into the header's account links and start counting (once per page). */
  if (!bell.root) build();
  nav.prepend(bell.root);
  if (!bell.started) {
    bell.started = true;
    connect();
  }
}
