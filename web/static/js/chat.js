// The watch page's chat panel (API.md "Live socket and chat"). It rides on the page's live
// WebSocket (watch.js owns the socket and hands every `chat.*` frame here): history on
// connect, new messages appended (at most MAX_MESSAGES kept in the page), a send box for
// signed-in viewers with the server's notices next to it, and for the channel's owner and
// moderators delete, timeout and ban on each message. Every text from users goes in with
// `textContent` (ui.js `el`), never as markup.

import { api } from "/static/js/api.js";
import { $, el, formatDuration } from "/static/js/ui.js";

export const MAX_MESSAGES = 200;
export const TIMEOUT_SECONDS = 600;
const ACK_WAIT_MS = 10000; // no ack nor notice by then: the socket dropped the message

// What the sender is told for each refusal (API.md codes); `{s}` is the time left, counted
// down from the notice's retry_after. Unknown codes show the server's own message.
const NOTICES = {
  not_signed_in: () => "Sign in to chat.",
  rate_limited: () => "You are sending messages too quickly. You can send again in {s}.",
  slow_mode: () => "Slow mode is on: you can send again in {s}.",
  followers_only: (settings) => settings && settings.followers_only_minutes
    ? `Only followers of ${settings.followers_only_minutes} min or more can chat here.`
    : "Only followers can chat here.",
  account_too_new: (settings) => settings && settings.min_account_age_minutes
    ? `Your account must be ${formatDuration(settings.min_account_age_minutes * 60)} old to chat here.`
    : "Your account is too new to chat here.",
  banned: () => "You are banned from this chat.",
  timed_out: () => "You are timed out of this chat for {s}.",
  blocked_term: () => "Your message contains a term this channel blocks.",
  duplicate: () => "You already sent that message just now.",
  too_long: () => "Your message is too long (500 characters at most).",
  chat_disabled: () => "Chat is turned off for this stream.",
};

let nonces = 0;

function newNonce() {
  // Not crypto.randomUUID(): that exists only in secure contexts (a plain-HTTP page on a LAN
  // address has none); a nonce only has to tell this tab's own sends apart.
  nonces += 1;
  return `${Date.now().toString(36)}-${nonces}-${Math.random().toString(36).slice(2, 8)}`;
}

function settingsLine(settings) {
  if (!settings) return "";
  if (!settings.enabled) return "Chat is off.";
  const parts = [];
  if (settings.slow_mode_seconds) parts.push(`Slow mode: one message every ${formatDuration(settings.slow_mode_seconds)}`);
  if (settings.followers_only_minutes !== null && settings.followers_only_minutes !== undefined) {
    parts.push(settings.followers_only_minutes
      ? `Followers-only (followed for ${formatDuration(settings.followers_only_minutes * 60)})`
      : "Followers-only");
  }
  if (settings.min_account_age_minutes) parts.push(`Accounts older than ${formatDuration(settings.min_account_age_minutes * 60)}`);
  return parts.join(" · ");
}

export class ChatPanel {
  /** The chat of one watch page; `send(frame)` writes to the live socket (false when closed). */

  constructor({ send, me }) {
    this.send = send;
    this.me = me; // the signed-in user ({id, username}) or null
    this.stream = null;
    this.settings = null;
    this.role = null; // "owner" | "moderator" | null: the viewer's own role in this channel
    this.connected = false;
    this.pending = null; // {nonce, timer} of the message waiting for its ack
    this.noticeTimer = 0;
    this.list = $("#chat-messages");
    this.form = $("#chat-form");
    this.input = $("#chat-input");
    this.notice = $("#chat-notice");
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.submit();
    });
    this.input.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        this.submit();
      }
    });
    this.list.addEventListener("click", (event) => {
      const button = event.target.closest("button[data-action]");
      if (button) this.moderate(button);
    });
  }

  setStream(stream) {
    /** The stream whose chat this is (again after the page follows the streamer's next one). */
    const changed = !this.stream || this.stream.id !== stream.id;
    this.stream = stream;
    if (changed) {
      this.list.replaceChildren();
      this.settings = null;
      this.role = null; // a moderator's role comes with the stream's chat.settings
    }
    if (this.me && this.me.id === stream.user.id) this.role = "owner";
    const signedIn = Boolean(this.me);
    this.form.hidden = !signedIn;
    $("#chat-sign-in").hidden = signedIn;
    $("#chat-sign-in-link").href = `/login?next=${encodeURIComponent(location.pathname)}`;
    this.showState();
  }

  connectedChanged(connected) {
    this.connected = connected;
    if (!connected) this.settlePending();
    this.showState();
  }

  handle(message) {
    /** One `chat.*` frame; false for frames that are not chat. */
    switch (message.type) {
      case "chat.history":
        this.list.replaceChildren();
        this.append(message.messages || []);
        return true;
      case "chat.message":
        this.append([message]);
        return true;
      case "chat.deleted":
        this.remove(`[data-message-id="${CSS.escape(String(message.id))}"]`);
        return true;
      case "chat.user_cleared":
        this.remove(`[data-user-id="${CSS.escape(String(message.user_id))}"]`);
        return true;
      case "chat.settings":
        this.showSettings(message);
        return true;
      case "chat.ack":
        if (this.pending && this.pending.nonce === message.nonce) {
          this.settlePending();
          this.input.value = "";
          this.showNotice(null);
        }
        return true;
      case "chat.notice":
        if (message.nonce && this.pending && this.pending.nonce === message.nonce) this.settlePending();
        this.showNotice(message);
        return true;
      default:
        return false;
    }
  }

  // --- messages ---------------------------------------------------------------------------

  canModerate() {
    return this.role === "owner" || this.role === "moderator";
  }

  messageNode(message) {
    const user = message.user;
    const roles = (user && user.roles) || [];
    const author = el("span", {
      class: `chat-author ${roles.includes("owner") ? "owner" : roles.includes("moderator") ? "moderator" : ""}`.trim(),
      "data-testid": "chat-author",
      text: user ? user.username : "deleted account",
    });
    const badges = roles.map((role) => el("span", { class: "badge chat-role", text: role === "owner" ? "streamer" : "mod" }));
    const node = el("li", {
      class: "chat-message",
      "data-message-id": message.id,
      "data-user-id": user ? user.id : null,
      "data-testid": "chat-message",
      title: message.sent_at ? new Date(message.sent_at).toLocaleTimeString() : null,
    }, badges, author, ": ", el("span", { class: "chat-text", "data-testid": "chat-text", text: message.text }));
    if (this.canModerate()) node.append(this.actions(message));
    return node;
  }

  actions(message) {
    const user = message.user;
    const roles = (user && user.roles) || [];
    const buttons = [el("button", { type: "button", class: "link-button", "data-action": "delete", "data-testid": "chat-delete", title: "Delete this message" }, "Delete")];
    const mine = user && this.me && user.id === this.me.id;
    // The owner is never banned; moderators leave each other to the owner.
    const untouchable = !user || mine || roles.includes("owner") || (this.role === "moderator" && roles.includes("moderator"));
    if (!untouchable) {
      buttons.push(
        el("button", { type: "button", class: "link-button", "data-action": "timeout", "data-testid": "chat-timeout", title: `No chat for ${formatDuration(TIMEOUT_SECONDS)}` }, "Timeout"),
        el("button", { type: "button", class: "link-button", "data-action": "ban", "data-testid": "chat-ban", title: "Ban from this channel's chat" }, "Ban"),
      );
    }
    return el("span", { class: "chat-actions" }, buttons);
  }

  append(messages) {
    const stick = this.list.scrollHeight - this.list.scrollTop - this.list.clientHeight < 40;
    const nodes = [];
    for (const message of messages) {
      if (this.stream && message.stream_id !== undefined && message.stream_id !== this.stream.id) continue;
      if (this.list.querySelector(`[data-message-id="${CSS.escape(String(message.id))}"]`)) continue;
      nodes.push(this.messageNode(message));
    }
    this.list.append(...nodes);
    while (this.list.childElementCount > MAX_MESSAGES) this.list.firstElementChild.remove();
    if (stick) this.list.scrollTop = this.list.scrollHeight;
  }

  remove(selector) {
    for (const node of this.list.querySelectorAll(selector)) node.remove();
  }

  redrawActions() {
    // The viewer's role became known (or changed): add or drop the moderation buttons.
    for (const node of this.list.querySelectorAll(".chat-actions")) node.remove();
    if (!this.canModerate()) return;
    for (const node of this.list.children) {
      const author = node.querySelector(".chat-author");
      const userId = node.dataset.userId ? Number(node.dataset.userId) : null;
      const roles = [...node.querySelectorAll(".chat-role")].map((badge) => (badge.textContent === "streamer" ? "owner" : "moderator"));
      const user = userId === null ? null : { id: userId, username: author.textContent, roles };
      node.append(this.actions({ id: node.dataset.messageId, user }));
    }
  }

  async moderate(button) {
    const node = button.closest(".chat-message");
    const action = button.dataset.action;
    const owner = this.stream.user.username;
    // A moderator acts on another channel than their own: name it (the owner needs not).
    const channel = this.role === "owner" ? "" : `?channel=${encodeURIComponent(owner)}`;
    const username = node.querySelector(".chat-author").textContent;
    button.disabled = true;
    try {
      if (action === "delete") {
        await api("DELETE", `/api/streams/${this.stream.id}/chat/messages/${encodeURIComponent(node.dataset.messageId)}`, undefined, { auth: "required" });
        node.remove();
      } else {
        const body = action === "timeout" ? { duration_seconds: TIMEOUT_SECONDS } : {};
        await api("PUT", `/api/channel/bans/${encodeURIComponent(username)}${channel}`, body, { auth: "required" });
        this.remove(`[data-user-id="${CSS.escape(node.dataset.userId)}"]`);
      }
    } catch (error) {
      this.showNotice({ code: "moderation_failed", message: `Could not ${action} (${username}): ${error.message}` });
      button.disabled = false;
    }
  }

  // --- settings, state and notices ------------------------------------------------------------

  showSettings(settings) {
    this.settings = settings;
    // Only the owner and the channel's moderators are sent the blocked terms: their presence
    // tells this viewer they moderate here.
    const wasModerator = this.canModerate();
    if (this.role !== "owner") this.role = Array.isArray(settings.blocked_terms) ? "moderator" : null;
    if (wasModerator !== this.canModerate()) this.redrawActions();
    this.showState();
  }

  showState() {
    const line = settingsLine(this.settings);
    const status = $("#chat-settings");
    status.textContent = this.connected || !this.stream ? line : "Connecting to chat…";
    status.dataset.enabled = this.settings ? String(Boolean(this.settings.enabled)) : "";
    const off = this.settings && !this.settings.enabled && !this.canModerate();
    const waiting = Boolean(this.pending) || this.waitingOutNotice();
    this.input.disabled = !this.connected || Boolean(off);
    this.input.placeholder = off ? "Chat is off" : this.role ? `Send a message (${this.role === "owner" ? "streamer" : "moderator"})` : "Send a message";
    this.form.querySelector("button[type=submit]").disabled = !this.connected || Boolean(off) || waiting;
  }

  showNotice(notice) {
    clearInterval(this.noticeTimer);
    this.noticeTimer = 0;
    this.notice.dataset.blocking = "false";
    if (!notice) {
      this.notice.hidden = true;
      this.notice.textContent = "";
      delete this.notice.dataset.code;
      this.showState();
      return;
    }
    const template = NOTICES[notice.code] ? NOTICES[notice.code](this.settings) : notice.message || notice.code;
    this.notice.dataset.code = notice.code;
    this.notice.hidden = false;
    const retryAfter = Number(notice.retry_after);
    if (!template.includes("{s}") || !(retryAfter > 0)) {
      this.notice.textContent = template.replace(" in {s}", "").replace(" for {s}", "");
      this.showState();
      return;
    }
    // Count down; slow mode and rate limits block the send button until the time is up.
    const until = Date.now() + retryAfter * 1000;
    const blocking = notice.code === "slow_mode" || notice.code === "rate_limited";
    this.notice.dataset.blocking = String(blocking);
    const tick = () => {
      const left = Math.ceil((until - Date.now()) / 1000);
      if (left <= 0) {
        this.showNotice(null);
        return;
      }
      this.notice.textContent = template.replace("{s}", formatDuration(left));
    };
    tick();
    if (!this.notice.hidden) this.noticeTimer = setInterval(tick, 1000);
    this.showState();
  }

  waitingOutNotice() {
    return Boolean(this.noticeTimer) && this.notice.dataset.blocking === "true";
  }

  submit() {
    const text = this.input.value.trim();
    if (!text || this.pending || !this.connected || this.waitingOutNotice()) return;
    const nonce = newNonce();
    if (!this.send({ type: "chat.send", text, nonce })) return;
    this.pending = {
      nonce,
      timer: setTimeout(() => {
        this.settlePending();
        this.showNotice({ code: "not_sent", message: "The message could not be sent; try again." });
      }, ACK_WAIT_MS),
    };
    this.showState();
  }

  settlePending() {
    if (this.pending) clearTimeout(this.pending.timer);
    this.pending = null;
    this.showState();
  }
}
