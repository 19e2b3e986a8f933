// The dashboard's Webhooks section (API.md "Notifications and webhooks"): the account's
// webhooks, a form to add one (its signing secret is in the answer to that request only: shown
// once, with a copy button, never stored by the page), enable/disable, delete, and per webhook
// its deliveries (status, attempts, response code, times) with a redeliver button. While a
// delivery shown is pending or being sent, the list refreshes itself. URLs and errors are
// user or remote text: `textContent` only (ui.js `el`).

import { api } from "/static/js/api.js";
import { $, el, onSubmit, setText, showError } from "/static/js/ui.js";

const DELIVERIES_PAGE = 20;
const DELIVERIES_POLL_MS = 2000;
const EVENT_NAMES = { "stream.online": "stream online", "stream.offline": "stream offline", "follow.created": "new follower" };

// The webhooks whose deliveries are shown (kept over a reload of the list), and per shown
// webhook its deliveries' cursor, refresh timer and panel.
const state = { open: new Set(), deliveries: new Map() };

function when(value) {
  return value ? new Date(value).toLocaleString() : "—";
}

// --- the secret, once ---------------------------------------------------------------------------

function showSecret(webhook) {
  const box = $("#webhook-secret");
  const input = $("#webhook-secret-value");
  setText("#webhook-secret-url", webhook.url);
  setText("#webhook-secret-status", "");
  input.value = webhook.secret;
  box.hidden = false;
  input.focus();
  input.select();
}

function hideSecret() {
  $("#webhook-secret-value").value = "";
  $("#webhook-secret").hidden = true;
}

function setUpSecret() {
  $("#webhook-secret-copy").addEventListener("click", async () => {
    const input = $("#webhook-secret-value");
    try {
      await navigator.clipboard.writeText(input.value);
      setText("#webhook-secret-status", "Copied.");
    } catch {
      input.select();
      setText("#webhook-secret-status", "Press Ctrl+C to copy.");
    }
  });
  $("#webhook-secret-done").addEventListener("click", hideSecret);
}

// --- deliveries ---------------------------------------------------------------------------------

function deliveryRow(webhook, delivery) {
  const redeliver = el("button", {
    type: "button", class: "link-button", "data-testid": "delivery-redeliver",
    disabled: !webhook.enabled || delivery.status === "sending",
    title: webhook.enabled ? null : "Enable the webhook to send again",
  }, "Redeliver");
  redeliver.addEventListener("click", async () => {
    const box = row.closest(".deliveries").querySelector(".deliveries-error");
    showError(box, null);
    redeliver.disabled = true;
    try {
      const queued = await api("POST", `/api/webhooks/${webhook.id}/deliveries/${delivery.id}/redeliver`, undefined, { auth: "required" });
      row.replaceWith(deliveryRow(webhook, queued));
      watchDeliveries(webhook);
    } catch (error) {
      showError(box, error);
      redeliver.disabled = false;
    }
  });
  const last = delivery.status === "delivered" ? `delivered ${when(delivery.delivered_at)}`
    : delivery.next_attempt_at ? `next ${when(delivery.next_attempt_at)}` : "";
  const row = el("tr", { "data-delivery-id": delivery.id, "data-status": delivery.status, "data-testid": "delivery" },
    el("td", { text: delivery.type }),
    el("td", {}, el("span", { class: `badge delivery-${delivery.status}`, "data-testid": "delivery-status", text: delivery.status })),
    el("td", { "data-testid": "delivery-attempts", text: String(delivery.attempts) }),
    el("td", { "data-testid": "delivery-code", text: delivery.response_code === null || delivery.response_code === undefined ? "—" : String(delivery.response_code) }),
    el("td", { text: when(delivery.created_at) }),
    el("td", { text: when(delivery.last_attempt_at) }),
    el("td", { text: last }),
    el("td", { class: "delivery-error", text: delivery.last_error || "" }),
    el("td", {}, redeliver));
  return row;
}

function watchDeliveries(webhook) {
  /** Refresh the first page while a delivery on it is still on its way. */
  const entry = state.deliveries.get(webhook.id);
  if (!entry) return;
  clearTimeout(entry.timer);
  entry.timer = setTimeout(() => loadDeliveries(webhook, true).catch(() => {}), DELIVERIES_POLL_MS);
}

async function loadDeliveries(webhook, reset) {
  const entry = state.deliveries.get(webhook.id);
  if (!entry) return;
  const container = entry.panel;
  clearTimeout(entry.timer);
  if (reset) entry.cursor = null;
  const query = new URLSearchParams({ limit: String(DELIVERIES_PAGE) });
  if (entry.cursor) query.set("cursor", entry.cursor);
  const { data, pagination } = await api("GET", `/api/webhooks/${webhook.id}/deliveries?${query}`, undefined, { auth: "required" });
  const body = container.querySelector("tbody");
  const rows = data.map((delivery) => deliveryRow(webhook, delivery));
  if (reset) body.replaceChildren(...rows);
  else body.append(...rows);
  entry.cursor = pagination ? pagination.next_cursor : null;
  container.querySelector(".deliveries-more").hidden = !entry.cursor;
  container.querySelector(".deliveries-empty").hidden = body.children.length > 0;
  if (data.some((delivery) => delivery.status === "pending" || delivery.status === "sending")) watchDeliveries(webhook);
}

function deliveriesPanel(webhook) {
  const more = el("button", { type: "button", class: "button deliveries-more", hidden: true, "data-testid": "deliveries-more" }, "Older deliveries");
  more.addEventListener("click", () => loadDeliveries(webhook, false)
    .catch((error) => showError(more.parentElement.querySelector(".deliveries-error"), error)));
  const refresh = el("button", { type: "button", class: "button", "data-testid": "deliveries-refresh" }, "Refresh");
  refresh.addEventListener("click", () => loadDeliveries(webhook, true)
    .catch((error) => showError(refresh.parentElement.querySelector(".deliveries-error"), error)));
  return el("div", { class: "deliveries", hidden: true, "data-testid": "deliveries" },
    el("div", { class: "table-wrap" },
      el("table", { class: "deliveries-table" },
        el("caption", { class: "visually-hidden", text: `Deliveries to ${webhook.url}` }),
        el("thead", {}, el("tr", {}, ["Event", "Status", "Attempts", "Response", "Made", "Last attempt", "Delivered / next", "Error", ""]
          .map((name) => el("th", { scope: "col", text: name })))),
        el("tbody"))),
    el("p", { class: "status deliveries-empty", hidden: true, text: "No deliveries yet: they come with the next event." }),
    el("div", { class: "error deliveries-error", role: "alert", hidden: true }),
    refresh, " ", more);
}

// --- webhooks -----------------------------------------------------------------------------------

function webhookItem(webhook) {
  const errorBox = el("div", { class: "error", role: "alert", hidden: true });
  const toggle = el("button", { type: "button", class: "button", "data-testid": "webhook-toggle" }, webhook.enabled ? "Disable" : "Enable");
  toggle.addEventListener("click", async () => {
    showError(errorBox, null);
    toggle.disabled = true;
    try {
      await api("PUT", `/api/webhooks/${webhook.id}`, { enabled: !webhook.enabled }, { auth: "required" });
      await loadWebhooks();
    } catch (error) {
      showError(errorBox, error);
      toggle.disabled = false;
    }
  });
  const panel = deliveriesPanel(webhook);
  const show = el("button", {
    type: "button", class: "button", "aria-expanded": "false", "data-testid": "webhook-deliveries",
  }, "Deliveries");
  const setShown = (open) => {
    panel.hidden = !open;
    show.setAttribute("aria-expanded", String(open));
    if (open) {
      state.open.add(webhook.id);
      state.deliveries.set(webhook.id, { cursor: null, timer: 0, panel });
      loadDeliveries(webhook, true).catch((error) => showError(panel.querySelector(".deliveries-error"), error));
    } else {
      state.open.delete(webhook.id);
      const entry = state.deliveries.get(webhook.id);
      if (entry) clearTimeout(entry.timer);
      state.deliveries.delete(webhook.id);
    }
  };
  show.addEventListener("click", () => setShown(panel.hidden));
  const remove = el("button", { type: "button", class: "button danger", "data-testid": "webhook-delete" }, "Delete");
  let armed = 0;
  remove.addEventListener("click", async () => {
    if (!armed) {
      remove.textContent = "Click again to delete it and its deliveries";
      armed = setTimeout(() => {
        armed = 0;
        remove.textContent = "Delete";
      }, 5000);
      return;
    }
    clearTimeout(armed);
    armed = 0;
    showError(errorBox, null);
    remove.disabled = true;
    try {
      await api("DELETE", `/api/webhooks/${webhook.id}`, undefined, { auth: "required" });
      await loadWebhooks();
    } catch (error) {
      showError(errorBox, error);
      remove.disabled = false;
      remove.textContent = "Delete";
    }
  });
  const stateText = webhook.enabled ? "enabled"
    : `disabled${webhook.disabled_reason ? `: ${webhook.disabled_reason}` : ""}`;
  const item = el("li", {
    class: "webhook card", "data-webhook-id": webhook.id, "data-enabled": String(webhook.enabled), "data-testid": "webhook",
  },
  el("p", { class: "webhook-head" },
    el("code", { class: "webhook-url", "data-testid": "webhook-url-text", text: webhook.url }),
    el("span", { class: webhook.enabled ? "badge" : "badge danger", "data-testid": "webhook-state", text: stateText })),
  el("p", { class: "status" }, `Events: ${webhook.events.map((name) => EVENT_NAMES[name] || name).join(", ")}`,
    webhook.consecutive_failures ? ` · ${webhook.consecutive_failures} failed deliveries in a row` : "",
    ` · added ${when(webhook.created_at)}`),
  el("p", { class: "copy-row" }, toggle, show, remove),
  errorBox,
  panel);
  if (state.open.has(webhook.id)) setShown(true);
  return item;
}

async function loadWebhooks() {
  const { data } = await api("GET", "/api/webhooks", undefined, { auth: "required" });
  for (const entry of state.deliveries.values()) clearTimeout(entry.timer);
  state.deliveries.clear();
  const known = new Set(data.map((webhook) => webhook.id));
  for (const id of [...state.open]) if (!known.has(id)) state.open.delete(id);
  const list = $("#webhooks-list");
  list.replaceChildren(...data.map(webhookItem));
  if (!data.length) list.append(el("li", { class: "status", text: "No webhooks yet." }));
}

function setUpForm() {
  const form = $("#webhook-form");
  onSubmit(form, async (data) => {
    const events = data.getAll("events").map(String);
    if (!events.length) throw new Error("Events: choose at least one.");
    const created = await api("POST", "/api/webhooks", { url: String(data.get("url")).trim(), events }, { auth: "required" });
    form.reset();
    showSecret(created);
    await loadWebhooks();
  });
}

export async function setUpWebhooksSection() {
  setUpSecret();
  setUpForm();
  await loadWebhooks().catch((error) => showError("#webhooks-error", error));
}
