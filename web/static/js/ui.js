// DOM helpers shared by the pages. Text from users only ever goes in through `textContent`
// (the `el` helper) or attribute setters, never through innerHTML: it is safe by construction.

import { currentUser, signOut, storedPush, unsubscribePush } from "/static/js/api.js";
import { mountBell } from "/static/js/bell.js";

export function el(tag, attributes = {}, ...children) {
  /** A new element; string children become text nodes, never markup. */
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("on") && typeof value === "function") node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function $(selector, root = document) {
  return root.querySelector(selector);
}

export function setText(selector, text) {
  const node = typeof selector === "string" ? $(selector) : selector;
  if (node) node.textContent = text;
}

export function formatCount(value) {
  return new Intl.NumberFormat().format(value || 0);
}

export function formatDuration(seconds) {
  const total = Math.max(0, Math.round(seconds || 0));
  const hours = Math.floor(total / 3600);
  const minutes = Math.floor((total % 3600) / 60);
  const rest = total % 60;
  if (hours) return minutes ? `${hours} h ${minutes} min` : `${hours} h`;
  if (minutes) return rest ? `${minutes} min ${rest} s` : `${minutes} min`;
  return `${rest} s`;
}

export function viewersLabel(count) {
  return `${formatCount(count)} ${count === 1 ? "viewer" : "viewers"}`;
}

export function safeNext(value, fallback) {
  /** A same-origin path to go to after signing in (never another site: no "//host"). */
  return typeof value === "string" && /^\/(?![/\\])[A-Za-z0-9/_\-?=&.%]*$/.test(value) ? value : fallback;
}

export function showError(target, error) {
  /** An API error (or any error) as text in a role=alert box, with field messages if any. */
  const box = typeof target === "string" ? $(target) : target;
  if (!box) return;
  box.replaceChildren();
  if (!error) {
    box.hidden = true;
    return;
  }
  box.hidden = false;
  box.append(el("p", { text: error.message || String(error) }));
  const fields = error.fields || {};
  const items = Object.entries(fields).map(([name, messages]) => el("li", { text: `${name}: ${[].concat(messages).join(" ")}` }));
  if (items.length) box.append(el("ul", {}, items));
}

export function renderHeader() {
  /** The site header's account links: sign in, or the notification bell (bell.js), the user's
   * name, dashboard and sign out. */
  const nav = $("#account-nav");
  if (!nav) return;
  const user = currentUser();
  nav.replaceChildren();
  if (user) {
    nav.append(
      el("a", { href: "/dashboard", class: "nav-link", "data-testid": "nav-dashboard" }, "Dashboard"),
      el("span", { class: "nav-user", "data-testid": "nav-user", text: user.username }),
      el("button", {
        type: "button",
        class: "link-button",
        "data-testid": "sign-out",
        onclick: async () => {
          // A shared browser: the next person must not get this account's notifications.
          if (storedPush()) await unsubscribePush().catch(() => {});
          await signOut();
          location.assign("/");
        },
      }, "Sign out"),
    );
    mountBell(nav);
  } else {
    const next = location.pathname === "/login" ? null : location.pathname;
    const href = next && next !== "/" ? `/login?next=${encodeURIComponent(next)}` : "/login";
    nav.append(el("a", { href, class: "nav-link", "data-testid": "nav-sign-in" }, "Sign in"));
  }
}

export function thumbnailNode(url, alt) {
  /** A stream thumbnail, or a neutral placeholder while the stream has none yet. */
  if (url) return el("img", { src: url, alt, loading: "lazy", width: 320, height: 180 });
  return el("div", { class: "thumb-placeholder", role: "img", "aria-label": alt }, "No preview yet");
}

export function onSubmit(form, submit) {
  /** Validate in the page, then `submit(data)` with the button disabled while it runs. */
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = form.querySelector("button[type=submit]");
    const errorBox = form.querySelector(".error");
    showError(errorBox, null);
    if (!form.checkValidity()) {
      const invalid = form.querySelector(":invalid");
      showError(errorBox, new Error(`${invalid.labels[0].textContent.trim()}: ${invalid.validationMessage}`));
      invalid.focus();
      return;
    }
    button.disabled = true;
    try {
      await submit(new FormData(form));
    } catch (error) {
      showError(errorBox, error);
    } finally {
      button.disabled = false;
    }
  });
}
