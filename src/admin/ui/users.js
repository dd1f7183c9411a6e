// tokengate admin page: the Users section (the admin role only).
// Served as the end of /assets/app.js (src/admin/ui.rs), whose helpers ($, api, state, showAlert, announce,
// handleError, fmtTime, cell, copyField) it uses. User data is only ever
// inserted with textContent, never as HTML.
"use strict";

// An account name as the gateway accepts it; checked here first only to
// say so sooner.
const USER_NAME = /^[A-Za-z0-9._@-]{1,64}$/;
const MIN_PASSWORD_CHARS = 12;

async function refreshUsers() {
  if (!may("users")) { $("users-view").hidden = true; return; }
  try {
    state.users = await api("GET", "/api/users");
    renderUsers();
  } catch (e) { handleError(e); }
}

function renderUsers() {
  const rows = $("user-rows");
  rows.replaceChildren();
  const byName = [...state.users].sort((a, b) => a.name.localeCompare(b.name));
  for (const u of byName) {
    const tr = document.createElement("tr");
    tr.dataset.name = u.name;
    const name = document.createElement("th");
    name.scope = "row";
    name.textContent = u.name;
    tr.append(name);
    tr.append(cell(u.role, { className: "role" }));
    tr.append(cell(u.source === "oidc" ? "Single sign-on" : "Password", { className: "opt" }));
    tr.append(cell(u.last_login_at ? fmtTime(u.last_login_at) : "Never", { className: "opt2", title: u.last_login_at || "" }));
    const status = u.disabled ? cell("Disabled", { className: "status-disabled" })
      : cell("Enabled", { className: "status-active" });
    const actions = document.createElement("div");
    actions.className = "row-actions";
    const buttons = [
      ["Change role", "role-user", () => openRole(u)],
      u.disabled ? ["Enable", "enable-user", () => setDisabled(u, false)]
        : ["Disable", "disable-user", () => setDisabled(u, true)],
      ["Delete", "delete-user", () => openUserDelete(u)],
    ];
    for (const [label, className, action] of buttons) {
      const b = document.createElement("button");
      b.type = "button";
      b.textContent = label;
      b.className = className;
      b.setAttribute("aria-label", `${label} ${u.name}`);
      b.addEventListener("click", action);
      actions.append(b);
    }
    status.append(actions);
    tr.append(status);
    rows.append(tr);
  }
}

// After a change: the list again, and the session too, since the change
// may have been to the signed-in user's own role.
async function afterUserChange() {
  await syncSession();
}

// ---- add ----------------------------------------------------------------

function openAddUser() {
  showAlert("");
  $("user-form").reset();
  $("user-form").hidden = false;
  $("user-created").hidden = true;
  $("user-error").hidden = true;
  $("user-dialog").showModal();
  $("user-name").focus();
}

async function addUser(ev) {
  ev.preventDefault();
  const err = $("user-error");
  err.hidden = true;
  const fail = (text, field) => { err.textContent = text; err.hidden = false; (field || err).focus(); };
  const name = $("user-name").value.trim();
  if (!name) return fail("Give the user a name.", $("user-name"));
  if (!USER_NAME.test(name)) return fail("A name is 1 to 64 letters, digits and . _ - @ (no spaces).", $("user-name"));
  const role = $("user-role").value;
  const password = $("user-password").value;
  if (password && password.length < MIN_PASSWORD_CHARS) {
    return fail(`A password needs at least ${MIN_PASSWORD_CHARS} characters. Leave it empty to have one generated.`, $("user-password"));
  }
  const body = { name, role };
  if (password) body.password = password;
  $("user-submit").disabled = true;
  try {
    const u = await api("POST", "/api/users", body);
    $("user-password").value = "";
    if (u.password) {
      $("user-created-name").textContent = u.name;
      $("user-created-password").value = u.password;
      $("user-copy-status").textContent = "";
      $("user-form").hidden = true;
      $("user-created").hidden = false;
      $("user-created-password").focus();
      $("user-created-password").select();
      announce(`User ${u.name} added. Copy the generated password now; it cannot be shown again.`);
    } else {
      $("user-dialog").close();
      showAlert(`Added ${u.name} (${u.role}).`, "info");
      announce(`User ${u.name} added.`);
    }
  } catch (e) {
    if (e.status === 401) { $("user-dialog").close(); return handleError(e); }
    fail(e.message);
  } finally {
    $("user-submit").disabled = false;
  }
}

function closeUserDialog() {
  $("user-created-password").value = "";   // gone from the page once closed
  $("user-dialog").close();
}

// ---- change role --------------------------------------------------------

function openRole(u) {
  showAlert("");
  state.roleEditing = u;
  $("role-title").textContent = `Change the role of “${u.name}”`;
  $("role-select").value = u.role;
  $("role-error").hidden = true;
  $("role-dialog").showModal();
  $("role-select").focus();
}

async function saveRole(ev) {
  ev.preventDefault();
  const u = state.roleEditing;
  const role = $("role-select").value;
  $("role-submit").disabled = true;
  try {
    const saved = await api("PATCH", `/api/users/${encodeURIComponent(u.name)}`, { role });
    $("role-dialog").close();
    showAlert(`${saved.name} is now ${saved.role}, from their next request.`, "info");
    announce(`${saved.name} is now ${saved.role}.`);
    await afterUserChange();
    focusUserButton(saved.name, "role-user") || $("user-add-open").focus();
  } catch (e) {
    if (e.status === 401) { $("role-dialog").close(); return handleError(e); }
    handleError(e, $("role-error"));
  } finally {
    $("role-submit").disabled = false;
  }
}

// ---- disable / enable ---------------------------------------------------

async function setDisabled(u, disabled) {
  showAlert("");
  try {
    const saved = await api("PATCH", `/api/users/${encodeURIComponent(u.name)}`, { disabled });
    showAlert(disabled ? `Disabled ${saved.name}: they cannot sign in, and their sessions have ended.`
      : `Enabled ${saved.name}: they can sign in again.`, "info");
    announce(`${saved.name} ${disabled ? "disabled" : "enabled"}.`);
    await afterUserChange();
    // Keep the keyboard where it was: on the same row's button, now the other way.
    focusUserButton(saved.name, disabled ? "enable-user" : "disable-user");
  } catch (e) { handleError(e); }
}

// Focuses one of a user's row buttons, if the row is still there.
function focusUserButton(name, className) {
  const row = [...$("user-rows").children].find((tr) => tr.dataset.name === name);
  const b = row && row.querySelector(`button.${className}`);
  if (b) b.focus();
  return !!b;
}

// ---- delete -------------------------------------------------------------

function openUserDelete(u) {
  showAlert("");
  state.userDeleting = u;
  $("user-delete-title").textContent = `Delete “${u.name}”?`;
  $("user-delete-error").hidden = true;
  $("user-delete-dialog").showModal();
  $("user-delete-cancel").focus();
}

async function confirmUserDelete() {
  const u = state.userDeleting;
  $("user-delete-confirm").disabled = true;
  try {
    await api("DELETE", `/api/users/${encodeURIComponent(u.name)}`);
    $("user-delete-dialog").close();
    showAlert(`Deleted ${u.name}.`, "info");
    announce(`User ${u.name} deleted.`);
    await afterUserChange();
    if (!$("users-view").hidden) $("user-add-open").focus();
  } catch (e) {
    if (e.status === 401) { $("user-delete-dialog").close(); return handleError(e); }
    handleError(e, $("user-delete-error"));
  } finally {
    $("user-delete-confirm").disabled = false;
  }
}

// ---- wiring (called once by app.js) --------------------------------------

function wireUsers() {
  $("user-add-open").addEventListener("click", openAddUser);
  $("user-form").addEventListener("submit", addUser);
  $("user-cancel").addEventListener("click", () => $("user-dialog").close());
  $("user-copy").addEventListener("click", () => copyField("user-created-password", "user-copy-status"));
  $("user-created-close").addEventListener("click", closeUserDialog);
  $("user-dialog").addEventListener("close", async () => {
    $("user-created-password").value = "";
    await refreshUsers();
    $("user-add-open").focus();
  });
  $("role-form").addEventListener("submit", saveRole);
  $("role-cancel").addEventListener("click", () => $("role-dialog").close());
  $("user-delete-cancel").addEventListener("click", () => $("user-delete-dialog").close());
  $("user-delete-confirm").addEventListener("click", confirmUserDelete);
}
