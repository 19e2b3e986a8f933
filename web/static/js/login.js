// Sign in and sign up. On success the access token is stored (see api.js) and the browser
// goes back to where it came from (`?next=`, same-origin paths only) or to the dashboard.

import { privacyPolicy, signIn, signUp } from "/static/js/api.js";
import { $, renderHeader, safeNext, showError } from "/static/js/ui.js";

const next = safeNext(new URLSearchParams(location.search).get("next"), "/dashboard");

function selectTab(name) {
  for (const id of ["sign-in", "sign-up"]) {
    const selected = id === name;
    $(`#tab-${id}`).setAttribute("aria-selected", String(selected));
    $(`#${id}`).hidden = !selected;
  }
  $(`#${name} input`).focus();
}

function handle(form, submit) {
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
      location.assign(next);
    } catch (error) {
      showError(errorBox, error);
      button.disabled = false;
    }
  });
}

renderHeader();
$("#tab-sign-in").addEventListener("click", () => selectTab("sign-in"));
$("#tab-sign-up").addEventListener("click", () => selectTab("sign-up"));
handle($("#sign-in"), (data) => signIn(String(data.get("login")).trim(), String(data.get("password"))));
// The policy the checkbox accepts: fetched once, its text shown as text (never as HTML).
const policy = privacyPolicy().then((current) => {
  $("#policy-version").textContent = `(version ${current.version})`;
  $("#policy-text").textContent = current.text;
  return current;
}, (error) => {
  $("#policy-text").textContent = "The privacy policy could not be loaded; reload the page.";
  throw error;
});
policy.catch(() => {});
handle($("#sign-up"), async (data) => signUp(String(data.get("username")).trim(), String(data.get("email")).trim(),
  String(data.get("password")), (await policy).version));
if (location.hash === "#sign-up") selectTab("sign-up");
