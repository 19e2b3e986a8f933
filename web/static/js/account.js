// The pages the account mails link to: /account/verify-email#token=… confirms an address,
// /account/reset-password#token=… sets a new password, /account/reset-password without a
// token asks for a reset link, and /account/unsubscribe#token=… (the go-live mails' link)
// stops those e-mails, only once its button is clicked: mail scanners open links. The token rides in the fragment (never sent to a server, never
// in a Referer); it is read once and taken out of the address bar, so it stays out of the
// history, bookmarks and screenshots of the page.

import { api, forgetSession } from "/static/js/api.js";
import { $, el, onSubmit, renderHeader, setText, showError } from "/static/js/ui.js";

function takeToken() {
  const token = new URLSearchParams(location.hash.slice(1)).get("token");
  if (location.hash) history.replaceState(null, "", location.pathname + location.search);
  return token || "";
}

function badLinkError(error) {
  /** The API's error, plus what to do when the link itself is the problem. */
  if (error && error.fields && error.fields.token) {
    return new Error(`This link ${[].concat(error.fields.token).join(" ")}.`);
  }
  return error;
}

async function verifyEmail(token) {
  const section = $("#verify");
  section.hidden = false;
  const status = section.querySelector(".status");
  if (!token) {
    setText(status, "This link has no token: open the whole link from the mail.");
    return;
  }
  try {
    await api("POST", "/api/auth/verify-email", { token }, { auth: "none" });
    setText(status, "Your e-mail address is confirmed. Thank you!");
    section.dataset.state = "verified";
    section.querySelector(".next").hidden = false;
  } catch (error) {
    setText(status, "The address could not be confirmed.");
    section.dataset.state = "failed";
    showError(section.querySelector(".error"), badLinkError(error));
    if (error && error.fields && error.fields.token) {
      section.querySelector(".error").append(el("p", {
        text: "Sign in and send a new link from your dashboard (Account and privacy)." }));
    }
  }
}

function unsubscribe(token) {
  const section = $("#unsubscribe");
  section.hidden = false;
  const status = section.querySelector(".status");
  const button = $("#unsubscribe-confirm");
  if (!token) {
    setText(status, "This link has no token: open the whole link from the mail.");
    button.hidden = true;
    return;
  }
  button.addEventListener("click", async () => {
    showError(section.querySelector(".error"), null);
    setText(status, "");
    button.disabled = true;
    try {
      await api("POST", "/api/notifications/unsubscribe", { token }, { auth: "none" });
      button.hidden = true;
      section.dataset.state = "unsubscribed";
      setText(status, "Done: SF sends you no more go-live e-mails.");
      section.querySelector(".next").hidden = false;
    } catch (error) {
      section.dataset.state = "failed";
      showError(section.querySelector(".error"), badLinkError(error));
      button.disabled = false;
    }
  });
}

function resetPassword(token) {
  const form = $("#reset-confirm");
  form.hidden = false;
  form.elements.new_password.focus();
  onSubmit(form, async (data) => {
    const password = String(data.get("new_password"));
    if (password !== String(data.get("repeat"))) throw new Error("The two passwords differ.");
    try {
      await api("POST", "/api/auth/password-reset/confirm", { token, new_password: password }, { auth: "none" });
    } catch (error) {
      if (error && error.fields && error.fields.token) form.querySelector(".next").hidden = false;
      throw badLinkError(error);
    }
    // Every session of the account ended, this browser's too.
    forgetSession();
    setText(form.querySelector(".status"), "Your password is changed. Sign in with it…");
    location.assign("/login?password=changed");
  });
}

function requestReset() {
  const form = $("#reset-request");
  form.hidden = false;
  form.elements.email.focus();
  onSubmit(form, async (data) => {
    setText(form.querySelector(".status"), "");
    await api("POST", "/api/auth/password-reset", { email: String(data.get("email")).trim() }, { auth: "none" });
    // Always 202: the answer never tells whether an account has the address.
    setText(form.querySelector(".status"),
      "If an account has this address, a link to choose a new password is on its way. It works once, for a limited time.");
  });
}

renderHeader();
// A mailed link pasted into this page's own tab differs only in its fragment: no page load.
window.addEventListener("hashchange", () => {
  if (new URLSearchParams(location.hash.slice(1)).has("token")) location.reload();
});
const token = takeToken();
if (location.pathname === "/account/verify-email") verifyEmail(token);
else if (location.pathname === "/account/unsubscribe") unsubscribe(token);
else if (token) resetPassword(token);
else requestReset();
