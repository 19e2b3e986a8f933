// The dashboard's Chat section (API.md "Live socket and chat"): the channel's chat settings
// (on/off, slow mode, followers-only, minimum account age, blocked terms), its moderators
// (add, remove), its bans and timeouts (lift) and the moderation log, newest first, a page at
// a time. User text goes in only through `textContent` (ui.js `el`).

import { api } from "/static/js/api.js";
import { $, el, formatDuration, onSubmit, setText, showError } from "/static/js/ui.js";

const LOG_PAGE = 20;
const ACTIONS = {
  // How the log's actions read (ModerationLogEntry.action); others show as the server names them.
  ban: "banned",
  timeout: "timed out",
  unban: "lifted the ban of",
  message_deleted: "deleted a message of",
  moderator_added: "made moderator",
  moderator_removed: "removed as moderator",
  settings_changed: "changed the chat settings",
};

const state = { logCursor: null, settings: {} };

function nameOf(user) {
  /** A user in a list item: {username} or {user: {username}} or a bare name; null = erased. */
  if (!user) return null;
  if (typeof user === "string") return user;
  if (user.user) return nameOf(user.user);
  return user.username || null;
}

function numberOrNull(value) {
  return value === "" || value === null || value === undefined ? null : Number(value);
}

// --- settings -----------------------------------------------------------------------------------

function fillSettings(form, settings) {
  state.settings = settings;
  form.elements.enabled.checked = Boolean(settings.enabled);
  form.elements.slow_mode_seconds.value = settings.slow_mode_seconds ?? "";
  form.elements.followers_only_minutes.value = settings.followers_only_minutes ?? "";
  form.elements.min_account_age_minutes.value = settings.min_account_age_minutes ?? 0;
  form.elements.blocked_terms.value = (settings.blocked_terms || []).join("\n");
}

async function setUpSettings() {
  const form = $("#chat-settings-form");
  fillSettings(form, await api("GET", "/api/channel/chat/settings", undefined, { auth: "required" }));
  onSubmit(form, async (data) => {
    setText(form.querySelector(".status"), "");
    const terms = String(data.get("blocked_terms") || "").split("\n").map((term) => term.trim()).filter(Boolean);
    const wanted = {
      enabled: form.elements.enabled.checked,
      slow_mode_seconds: numberOrNull(data.get("slow_mode_seconds")),
      followers_only_minutes: numberOrNull(data.get("followers_only_minutes")),
      min_account_age_minutes: numberOrNull(data.get("min_account_age_minutes")) ?? 0,
      blocked_terms: [...new Set(terms)],
    };
    // Only what changed: the moderation log then names just those settings.
    const changes = Object.fromEntries(Object.entries(wanted)
      .filter(([name, value]) => JSON.stringify(value) !== JSON.stringify(state.settings[name] ?? null)));
    if (Object.keys(changes).length) {
      fillSettings(form, await api("PUT", "/api/channel/chat/settings", changes, { auth: "required" }));
      await loadLog(true);
    }
    setText(form.querySelector(".status"), "Saved.");
  });
}

// --- moderators -------------------------------------------------------------------------------

async function loadModerators() {
  const { data } = await api("GET", "/api/channel/moderators?limit=100", undefined, { auth: "required" });
  const list = $("#moderators");
  list.replaceChildren(...data.map((item) => {
    const username = nameOf(item);
    const remove = el("button", { type: "button", class: "link-button", "data-testid": "moderator-remove" }, "Remove");
    remove.addEventListener("click", async () => {
      remove.disabled = true;
      try {
        await api("DELETE", `/api/channel/moderators/${encodeURIComponent(username)}`, undefined, { auth: "required" });
        await Promise.all([loadModerators(), loadLog(true)]);
      } catch (error) {
        showError("#moderator-form .error", error);
        remove.disabled = false;
      }
    });
    return el("li", { "data-username": username, "data-testid": "moderator" }, el("span", { text: username }), remove);
  }));
  if (!data.length) list.append(el("li", { class: "status", text: "No moderators yet." }));
}

function setUpModerators() {
  const form = $("#moderator-form");
  onSubmit(form, async (data) => {
    await api("PUT", `/api/channel/moderators/${encodeURIComponent(String(data.get("username")).trim())}`, undefined, { auth: "required" });
    form.reset();
    await Promise.all([loadModerators(), loadLog(true)]);
  });
}

// --- bans ---------------------------------------------------------------------------------------

function banText(item) {
  const parts = [item.expires_at ? `timed out until ${new Date(item.expires_at).toLocaleString()}` : "banned"];
  if (item.reason) parts.push(`“${item.reason}”`);
  const by = nameOf(item.created_by);
  if (by) parts.push(`by ${by}`);
  return parts.join(" · ");
}

export async function loadBans() {
  /** The channel's bans and running timeouts, each with a button that lifts it. */
  const { data } = await api("GET", "/api/channel/bans?limit=100", undefined, { auth: "required" });
  const list = $("#bans");
  list.replaceChildren(...data.map((item) => {
    const username = nameOf(item);
    const lift = el("button", { type: "button", class: "link-button", "data-testid": "ban-lift" }, "Lift");
    lift.addEventListener("click", async () => {
      showError("#bans-error", null);
      lift.disabled = true;
      try {
        await api("DELETE", `/api/channel/bans/${encodeURIComponent(username)}`, undefined, { auth: "required" });
        await Promise.all([loadBans(), loadLog(true)]);
      } catch (error) {
        showError("#bans-error", error);
        lift.disabled = false;
      }
    });
    return el("li", { "data-username": username, "data-testid": "ban" },
      el("strong", { text: username }), el("span", { class: "status", text: banText(item) }), lift);
  }));
  if (!data.length) list.append(el("li", { class: "status", text: "Nobody is banned or timed out." }));
}

// --- moderation log -----------------------------------------------------------------------------

function logText(entry) {
  const actor = nameOf(entry.actor) || "a deleted account";
  const action = ACTIONS[entry.action] || entry.action;
  const target = nameOf(entry.target || entry.target_user);
  const details = entry.details || {};
  const extra = [];
  if (details.duration_seconds) extra.push(`for ${formatDuration(details.duration_seconds)}`);
  if (details.reason) extra.push(`“${details.reason}”`);
  if (details.messages_hidden) extra.push(`(${details.messages_hidden} ${details.messages_hidden === 1 ? "message" : "messages"} hidden)`);
  if (Array.isArray(details.changed) && details.changed.length) extra.push(`(${details.changed.join(", ")})`);
  return [actor, action, target, ...extra].filter(Boolean).join(" ");
}

async function loadLog(reset = false) {
  if (reset) state.logCursor = null;
  const query = new URLSearchParams({ limit: String(LOG_PAGE) });
  if (state.logCursor) query.set("cursor", state.logCursor);
  const { data, pagination } = await api("GET", `/api/channel/moderation-log?${query}`, undefined, { auth: "required" });
  const list = $("#moderation-log");
  const items = data.map((entry) => el("li", { "data-action": entry.action, "data-testid": "moderation-entry" },
    el("time", { class: "status", datetime: entry.created_at, text: new Date(entry.created_at).toLocaleString() }),
    el("span", { text: logText(entry) })));
  if (reset) list.replaceChildren(...items);
  else list.append(...items);
  if (reset && !data.length) list.append(el("li", { class: "status", text: "Nothing yet." }));
  state.logCursor = pagination ? pagination.next_cursor : null;
  $("#moderation-log-more").hidden = !state.logCursor;
}

export async function setUpChatSection() {
  /** Fill the Chat section and wire its forms; each part reports its own errors. */
  setUpModerators();
  const more = $("#moderation-log-more");
  more.addEventListener("click", async () => {
    more.disabled = true;
    try {
      await loadLog();
    } catch (error) {
      showError("#moderation-log-error", error);
    } finally {
      more.disabled = false;
    }
  });
  await Promise.all([
    setUpSettings().catch((error) => showError("#chat-settings-form .error", error)),
    loadModerators().catch((error) => showError("#moderator-form .error", error)),
    loadBans().catch((error) => showError("#bans-error", error)),
    loadLog(true).catch((error) => showError("#moderation-log-error", error)),
  ]);
}
