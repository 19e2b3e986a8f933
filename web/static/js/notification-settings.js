// The dashboard's Notifications section (API.md "Notifications and webhooks"): the channels of
// go-live notices (in SF, e-mail, browser push; each box saves when it changes), the channels
// muted (unmute; muting is done from the bell's list, bell.js), and browser notifications for
// this browser: the permission, the service worker (/sw.js, registered then), a Push API
// subscription made with SF's VAPID key and handed to SF, and the subscriptions of every
// browser of the account.

import { api, currentUser, rememberPush, storedPush, unsubscribePush } from "/static/js/api.js";
import { $, el, setText, showError } from "/static/js/ui.js";

const TYPE = "stream.online";
const CHANNELS = ["in_app", "email", "push"];
const MUTES_PAGE = 50;
// A browser whose push service cannot be reached (no network, a browser without one) may never
// settle pushManager.subscribe(): the page says so instead of waiting for ever.
const SUBSCRIBE_TIMEOUT_MS = 20_000;

const state = { mutesCursor: null, registration: null };

// --- channels -----------------------------------------------------------------------------------

function fillChannels(form, channels) {
  for (const name of CHANNELS) form.elements[name].checked = Boolean(channels && channels[name]);
}

async function setUpChannels() {
  const form = $("#notify-form");
  form.addEventListener("submit", (event) => event.preventDefault());
  const status = form.querySelector(".status[role=status]");
  fillChannels(form, (await api("GET", "/api/notifications/settings", undefined, { auth: "required" }))[TYPE]);
  for (const name of CHANNELS) {
    const box = form.elements[name];
    box.addEventListener("change", async () => {
      showError(form.querySelector(".error"), null);
      setText(status, "");
      box.disabled = true;
      try {
        const saved = await api("PUT", "/api/notifications/settings", { [TYPE]: { [name]: box.checked } }, { auth: "required" });
        fillChannels(form, saved[TYPE]);
        setText(status, "Saved.");
      } catch (error) {
        box.checked = !box.checked;
        showError(form.querySelector(".error"), error);
      } finally {
        box.disabled = false;
      }
    });
  }
}

export function showEmailNote(me) {
  /** Where go-live e-mails go, or why they do not. */
  const verified = Boolean(me.email_verified && !me.pending_email);
  setText("#notify-email-note", verified
    ? `E-mails go to ${me.email}, each with a link to stop them.`
    : "E-mails go only to a verified address: yours is not verified yet (see Account and privacy).");
  $("#notify-email-note").dataset.verified = String(verified);
}

// --- muted channels -----------------------------------------------------------------------------

async function loadMutes(reset = false) {
  if (reset) state.mutesCursor = null;
  const query = new URLSearchParams({ limit: String(MUTES_PAGE) });
  if (state.mutesCursor) query.set("cursor", state.mutesCursor);
  const { data, pagination } = await api("GET", `/api/notifications/mutes?${query}`, undefined, { auth: "required" });
  const list = $("#mutes");
  const items = data.map((user) => {
    const unmute = el("button", { type: "button", class: "link-button", "data-testid": "mute-remove" }, "Unmute");
    unmute.addEventListener("click", async () => {
      showError("#mutes-error", null);
      unmute.disabled = true;
      try {
        await api("DELETE", `/api/notifications/mutes/${encodeURIComponent(user.username)}`, undefined, { auth: "required" });
        document.dispatchEvent(new CustomEvent("sf:mutes-changed", { detail: { username: user.username, muted: false, from: "dashboard" } }));
        await loadMutes(true);
      } catch (error) {
        showError("#mutes-error", error);
        unmute.disabled = false;
      }
    });
    return el("li", { "data-username": user.username, "data-testid": "mute" }, el("span", { text: user.username }), unmute);
  });
  if (reset) list.replaceChildren(...items);
  else list.append(...items);
  if (reset && !data.length) list.append(el("li", { class: "status", text: "No muted channels." }));
  state.mutesCursor = pagination ? pagination.next_cursor : null;
  $("#mutes-more").hidden = !state.mutesCursor;
}

function setUpMutes() {
  const more = $("#mutes-more");
  more.addEventListener("click", () => loadMutes().catch((error) => showError("#mutes-error", error)));
  // Muted from the bell on this page: the list follows.
  document.addEventListener("sf:mutes-changed", (event) => {
    if (event.detail && event.detail.from === "bell") loadMutes(true).catch((error) => showError("#mutes-error", error));
  });
  return loadMutes(true).catch((error) => showError("#mutes-error", error));
}

// --- browser notifications (Web Push) -----------------------------------------------------------

function pushSupported() {
  return "serviceWorker" in navigator && "PushManager" in window && "Notification" in window;
}

function keyBytes(base64url) {
  const base64 = base64url.replace(/-/g, "+").replace(/_/g, "/");
  const binary = atob(base64 + "=".repeat((4 - (base64.length % 4)) % 4));
  return Uint8Array.from(binary, (char) => char.charCodeAt(0));
}

function sameKey(buffer, bytes) {
  if (!buffer) return false;
  const other = new Uint8Array(buffer);
  return other.length === bytes.length && other.every((byte, index) => byte === bytes[index]);
}

function withTimeout(promise, ms, message) {
  let timer = 0;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(message)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

async function thisBrowser() {
  /** This browser's push subscription when SF has it for the signed-in account, or null. */
  if (!state.registration) return null;
  const subscription = await state.registration.pushManager.getSubscription();
  const stored = storedPush();
  const user = currentUser();
  return subscription && stored && user && stored.user === user.id && stored.endpoint === subscription.endpoint
    ? subscription : null;
}

async function showPush() {
  const enable = $("#push-enable");
  const disable = $("#push-disable");
  const stateLine = $("#push-state");
  const on = Boolean(await thisBrowser());
  const blocked = Notification.permission === "denied";
  let text;
  if (on) text = "On for this browser: go-live notices show here even when no SF page is open.";
  else if (blocked) text = "Notifications from SF are blocked in this browser’s settings for the site.";
  else text = "Off for this browser.";
  setText(stateLine, text);
  stateLine.dataset.state = on ? "on" : blocked ? "blocked" : "off";
  enable.hidden = on || blocked;
  disable.hidden = !on;
}

function pushError(error) {
  if (error && error.name && error.name !== "Error" && !("status" in error)) {
    // A DOMException of the Push API (AbortError: no push service, NotAllowedError, …).
    return new Error(`This browser could not subscribe to notifications: ${error.message || error.name}`);
  }
  return error;
}

async function enablePush() {
  const button = $("#push-enable");
  showError("#push-error", null);
  button.disabled = true;
  try {
    const permission = await Notification.requestPermission();
    if (permission !== "granted") {
      throw new Error(permission === "denied"
        ? "Notifications are blocked for SF in this browser’s settings."
        : "Notifications were not allowed: click again and choose Allow.");
    }
    // Registered only now, by those who want browser notifications (scope "/": a click on
    // one may open any page of the site).
    state.registration = await navigator.serviceWorker.register("/sw.js", { scope: "/" });
    const registration = await navigator.serviceWorker.ready;
    const { public_key: publicKey } = await api("GET", "/api/notifications/push/key", undefined, { auth: "none" });
    const key = keyBytes(publicKey);
    let subscription = await registration.pushManager.getSubscription();
    if (subscription && !sameKey(subscription.options.applicationServerKey, key)) {
      await subscription.unsubscribe(); // made with a key SF no longer signs with
      subscription = null;
    }
    if (!subscription) {
      subscription = await withTimeout(
        registration.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: key }),
        SUBSCRIBE_TIMEOUT_MS, "This browser’s push service did not answer: try again later.");
    }
    const { id } = await api("POST", "/api/notifications/push/subscriptions", subscription.toJSON(), { auth: "required" });
    rememberPush(id, subscription.endpoint);
  } catch (error) {
    showError("#push-error", pushError(error));
  } finally {
    button.disabled = false;
    await showPush().catch(() => {});
    await loadSubscriptions().catch((error) => showError("#push-error", error));
  }
}

async function disablePush() {
  const button = $("#push-disable");
  showError("#push-error", null);
  button.disabled = true;
  try {
    await unsubscribePush();
  } catch (error) {
    showError("#push-error", error);
  } finally {
    button.disabled = false;
    await showPush().catch(() => {});
    await loadSubscriptions().catch((error) => showError("#push-error", error));
  }
}

async function loadSubscriptions() {
  /** Every browser the account gets pushes on (the push service's origin, never the
   * endpoint), each removable. */
  const { data } = await api("GET", "/api/notifications/push/subscriptions", undefined, { auth: "required" });
  const stored = storedPush();
  const list = $("#push-subscriptions");
  list.replaceChildren(...data.map((item) => {
    const here = Boolean(stored && stored.id === item.id);
    const remove = el("button", { type: "button", class: "link-button", "data-testid": "push-subscription-remove" }, "Remove");
    remove.addEventListener("click", async () => {
      showError("#push-error", null);
      remove.disabled = true;
      try {
        if (here) await unsubscribePush();
        else await api("DELETE", `/api/notifications/push/subscriptions/${item.id}`, undefined, { auth: "required" });
      } catch (error) {
        showError("#push-error", error);
      }
      await showPush().catch(() => {});
      await loadSubscriptions().catch((error) => showError("#push-error", error));
    });
    return el("li", { "data-id": item.id, "data-testid": "push-subscription" },
      el("span", { text: `${here ? "This browser" : "A browser"} (${item.origin}), since ${new Date(item.created_at).toLocaleDateString()}` }),
      remove);
  }));
}

async function setUpPush() {
  const stateLine = $("#push-state");
  if (!pushSupported()) {
    setText(stateLine, "This browser cannot show notifications from SF (it needs a page served over https).");
    stateLine.dataset.state = "unsupported";
    return;
  }
  $("#push-enable").addEventListener("click", enablePush);
  $("#push-disable").addEventListener("click", disablePush);
  try {
    // The service worker of an earlier "Enable", if any (none is registered before that).
    state.registration = (await navigator.serviceWorker.getRegistration("/")) || null;
    await showPush();
  } catch (error) {
    setText(stateLine, "Browser notifications are not available here.");
    stateLine.dataset.state = "unsupported";
    showError("#push-error", error);
  }
  await loadSubscriptions().catch((error) => showError("#push-error", error));
}

export async function setUpNotificationsSection(me) {
  /** Fill the Notifications section and wire it; each part reports its own errors. */
  showEmailNote(me);
  await Promise.all([
    setUpChannels().catch((error) => showError("#notify-form .error", error)),
    setUpMutes(),
    setUpPush(),
  ]);
}
