// tokengate admin page: API Refresh Token Management.
// Plain JavaScript, no build step, no external resources. User data is only
// ever inserted with textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { tokens: [], sort: { key: "name", dir: 1 }, csrf: null, defaultDays: 90, selected: new Set(),
                editing: null, rotating: null, suspending: null, user: null, role: null, via: null, users: [],
                roleEditing: null, userDeleting: null };

// What each role may do here. The server decides (a refusal is a 403
// naming the role needed); the page only leaves out what would be refused.
const MAY = {
  write: new Set(["admin", "manager", "creator"]),   // create, edit, rotate and delete tokens
  users: new Set(["admin"]),                         // the Users section
};
const may = (what) => MAY[what].has(state.role);

// ---- talking to the API -------------------------------------------------

class ApiError extends Error {
  constructor(status, message, code, description) {
    super(message); this.status = status; this.code = code; this.description = description;
  }
}

// The API's lower-case description as a sentence.
function sentence(text) {
  return text.charAt(0).toUpperCase() + text.slice(1) + (text.endsWith(".") ? "" : ".");
}

function friendly(status, body) {
  const d = body && body.error_description;
  if (status === 401) return "Your session has ended. Please log in again.";
  // A role's refusal says which role it needs; any other 403 is the
  // cross-site or CSRF check, which a stale page fails.
  if (status === 403 && body && body.error === "forbidden") return d || "Your role may not do this.";
  if (status === 403) return "This page is out of date. Reload it and try again.";
  if (status === 429) return d || "Too many failed logins. Wait a little and try again.";
  if (status >= 500) return "tokengate could not complete the request. Nothing was changed; try again.";
  return d || `The request failed (HTTP ${status}).`;
}

async function api(method, path, body) {
  const headers = { "X-Requested-With": "tokengate-ui" };
  // Every POST is JSON, with or without a body: the API refuses other types.
  if (body !== undefined || method === "POST") headers["Content-Type"] = "application/json";
  if (state.csrf && method !== "GET") headers["X-CSRF-Token"] = state.csrf;
  let res;
  try {
    res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body),
                              credentials: "same-origin", cache: "no-store" });
  } catch (e) {
    throw new ApiError(0, "Cannot reach tokengate. Check that it is running and try again.");
  }
  let data = null;
  const text = await res.text();
  if (text) { try { data = JSON.parse(text); } catch (e) { data = null; } }
  if (!res.ok) throw new ApiError(res.status, friendly(res.status, data), data && data.error, data && data.error_description);
  return data;
}

// ---- messages -----------------------------------------------------------

function showAlert(message, kind) {
  const el = $("alert");
  el.textContent = message;
  el.className = kind === "info" ? "alert info" : "alert";
  el.hidden = !message;
}

function announce(message) {
  $("status").textContent = message;
}

function handleError(e, where) {
  if (e.status === 401 && state.csrf !== null) { return showLogin(e.message); }
  if (where) { where.textContent = e.message; where.hidden = false; where.focus && where.focus(); }
  else showAlert(e.message);
  // Refused for the role: it may have changed since the page loaded.
  if (e.code === "forbidden") syncSession();
}

// ---- views --------------------------------------------------------------

function showLogin(message) {
  state.csrf = null;
  state.role = null;
  $("tokens-view").hidden = true;
  $("users-view").hidden = true;
  $("logout").hidden = true;
  $("who").hidden = true;
  $("login-view").hidden = false;
  showAlert(message || "");
  $("password").value = "";
  $("password").focus();
}

// Takes in who is signed in (`GET /api/session`, or a login's answer) and
// shows what their role may do.
function applySession(info) {
  state.csrf = info.csrf;
  state.defaultDays = info.default_refresh_ttl_days;
  state.user = info.user;
  state.role = info.role;
  state.via = info.via;
  const who = $("who");
  who.textContent = `Signed in as ${info.user} (${info.role})` + (info.via === "oidc" ? " with single sign-on" : "");
  who.hidden = false;
  $("logout").hidden = false;
  const write = may("write");
  $("create-open").hidden = !write;
  $("delete-open").hidden = !write;
  $("tokens").classList.toggle("readonly", !write);
  const hint = $("role-hint");
  hint.textContent = info.role === "creator" ? "As a creator you see and manage the refresh tokens you created."
    : info.role === "viewer" ? "As a viewer you can read this list; creating or changing tokens needs the creator, manager or admin role."
    : "";
  hint.hidden = !hint.textContent;
  $("users-view").hidden = !may("users") || !$("login-view").hidden;
}

// Reads the session again (after a refusal, or a change to accounts that
// may have changed the signed-in user's own role) and redraws.
async function syncSession() {
  // One at a time: a refusal while re-reading must not start another.
  if (state.syncing) return;
  state.syncing = true;
  try {
    applySession(await api("GET", "/api/session"));
    await refresh();
    if (may("users")) await refreshUsers();
  } catch (e) {
    if (e.status === 401) showLogin(e.message);
  } finally {
    state.syncing = false;
  }
}

async function showTokens() {
  $("login-view").hidden = true;
  $("tokens-view").hidden = false;
  $("users-view").hidden = !may("users");
  await refresh();
  if (may("users")) await refreshUsers();
}

function fmtTime(iso) {
  if (!iso) return null;
  const d = new Date(iso);
  return isNaN(d) ? iso : d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

function cell(text, opts = {}) {
  const td = document.createElement("td");
  if (opts.className) td.className = opts.className;
  td.textContent = text;
  if (opts.title) td.title = opts.title;
  return td;
}

// What a token may do, at a glance: "Full access", or a tag per restriction.
function accessCell(t) {
  const td = document.createElement("td");
  td.className = "access";
  const tags = [];
  if (t.read_only) tags.push("Read-only");
  for (const r of t.scopes || []) tags.push(`${r.methods.join(",")} ${r.path}`);
  if ((t.networks || []).length) tags.push(`From ${t.networks.join(", ")}`);
  if (t.rate_limit) tags.push(`${t.rate_limit.per_second}/s, burst ${t.rate_limit.burst}`);
  if (tags.length === 0) {
    const s = document.createElement("span");
    s.className = "tag full";
    s.textContent = "Full access";
    td.append(s);
  }
  for (const text of tags) {
    const s = document.createElement("span");
    s.className = "tag";
    s.textContent = text;
    td.append(s);
  }
  // A grant, not a limit: shown beside whatever the token may do.
  if (t.introspect) {
    const s = document.createElement("span");
    s.className = "tag introspect";
    s.textContent = "May introspect";
    td.append(s);
  }
  return td;
}

function sortedTokens() {
  const { key, dir } = state.sort;
  const value = (t) => key === "name" ? t.name.toLocaleLowerCase()
    : (t.expires_at ? Date.parse(t.expires_at) : Number.POSITIVE_INFINITY);
  return [...state.tokens].sort((a, b) => {
    const va = value(a), vb = value(b);
    return (va < vb ? -1 : va > vb ? 1 : a.id - b.id) * dir;
  });
}

function render() {
  const rows = $("token-rows");
  rows.replaceChildren();
  const write = may("write");
  for (const t of sortedTokens()) {
    const tr = document.createElement("tr");
    tr.dataset.id = t.id;
    if (state.selected.has(t.id)) tr.classList.add("selected");
    const check = document.createElement("td");
    check.className = "check";
    const box = document.createElement("input");
    box.type = "checkbox";
    box.checked = state.selected.has(t.id);
    box.setAttribute("aria-label", `Select ${t.name}`);
    box.addEventListener("change", () => {
      if (box.checked) state.selected.add(t.id); else state.selected.delete(t.id);
      tr.classList.toggle("selected", box.checked);
      updateSelection();
    });
    check.append(box);
    tr.append(check);
    const name = document.createElement("th");
    name.scope = "row";
    name.textContent = t.name;
    tr.append(name);
    tr.append(accessCell(t));
    tr.append(cell(fmtTime(t.created_at), { className: "opt", title: t.created_at }));
    tr.append(cell(t.created_by || "—", { className: "opt created-by",
      title: t.created_by ? "" : "Created before named accounts existed" }));
    tr.append(cell(t.expires_at ? fmtTime(t.expires_at) : "Never", { className: "opt3", title: t.expires_at || "never expires" }));
    tr.append(cell(t.last_used_at ? fmtTime(t.last_used_at) : "Never used", { className: "opt2", title: t.last_used_at || "" }));
    const uses = cell(String(t.use_count ?? 0), { className: "opt uses" });
    if (t.uses_left !== null && t.uses_left !== undefined) {
      const left = document.createElement("span");
      left.className = "small uses-left";
      left.textContent = `${t.uses_left} of ${t.max_uses} left`;
      uses.append(left);
    }
    tr.append(uses);
    const client = cell(t.last_client_ip || "—", { className: "opt" });
    if (t.last_user_agent) {
      const ua = document.createElement("span");
      ua.className = "small";
      ua.textContent = t.last_user_agent;
      client.append(ua);
    }
    tr.append(client);
    // The status, and under it what can be done with the token (one
    // column, so the table fits a phone).
    const notYet = t.not_before && Date.parse(t.not_before) > Date.now();
    const status = t.suspended ? cell("Suspended", { className: "status-suspended", title: t.suspended_reason || "Suspended: resume it to let it exchange again" })
      : t.status === "expired" ? cell("Expired", { className: "status-expired" })
      : notYet ? cell("Not yet valid", { className: "status-pending", title: `Exchanges from ${t.not_before}` })
      : t.expiring_soon ? cell("Expires soon", { className: "status-expiring", title: "Expires within 7 days: rotate it or extend its expiry" })
      : cell("Active", { className: "status-active" });
    if (t.suspended && t.suspended_reason) {
      const why = document.createElement("span");
      why.className = "small suspended-reason";
      why.textContent = t.suspended_reason;
      status.append(why);
    }
    if (notYet) {
      const from = document.createElement("span");
      from.className = "small";
      from.textContent = `from ${fmtTime(t.not_before)}`;
      status.append(from);
    }
    for (const v of t.violations || []) {
      const tag = document.createElement("span");
      tag.className = "violation";
      tag.textContent = v === "max_lifetime" ? "Breaks the maximum lifetime" : `Breaks ${v}`;
      tag.title = "Its expiry lies beyond tokens.max_lifetime (or it never expires): edit its expiry";
      status.append(tag);
    }
    if (t.revoke_unused_at) {
      const due = document.createElement("span");
      due.className = "small revoke-unused";
      due.textContent = `Deleted if unused by ${fmtTime(t.revoke_unused_at)}`;
      status.append(due);
    }
    const actions = document.createElement("div");
    actions.className = "row-actions";
    const suspendOrResume = t.suspended ? ["Resume", resumeToken] : ["Suspend", openSuspend];
    for (const [label, action] of write ? [["Edit", openEdit], ["Rotate", openRotate], suspendOrResume] : []) {
      const b = document.createElement("button");
      b.type = "button";
      b.textContent = label;
      b.className = `${label.toLowerCase()}-token`;
      b.setAttribute("aria-label", `${label} ${t.name}`);
      b.addEventListener("click", () => action(t));
      actions.append(b);
    }
    status.append(actions);
    tr.append(status);
    rows.append(tr);
  }
  $("empty").hidden = state.tokens.length !== 0 || !write;
  $("empty-readonly").hidden = state.tokens.length !== 0 || write;
  $("tokens").hidden = state.tokens.length === 0;
  for (const th of document.querySelectorAll("th[data-key]")) {
    th.setAttribute("aria-sort", th.dataset.key === state.sort.key ? (state.sort.dir > 0 ? "ascending" : "descending") : "none");
  }
  updateSelection();
}

function updateSelection() {
  const n = state.selected.size;
  const del = $("delete-open");
  del.disabled = n === 0;
  del.textContent = n > 1 ? `Delete (${n})` : "Delete";
  const all = $("select-all");
  all.checked = n > 0 && n === state.tokens.length;
  all.indeterminate = n > 0 && n < state.tokens.length;
}

async function refresh() {
  try {
    state.tokens = await api("GET", "/api/refresh-tokens");
    const ids = new Set(state.tokens.map((t) => t.id));
    for (const id of [...state.selected]) if (!ids.has(id)) state.selected.delete(id);
    render();
  } catch (e) { handleError(e); }
}

// ---- login / logout -----------------------------------------------------

async function login(ev) {
  ev.preventDefault();
  const username = $("username").value.trim();
  const password = $("password").value;
  if (!password) { showAlert("Enter your password."); $("password").focus(); return; }
  $("login-button").disabled = true;
  try {
    const info = await api("POST", "/api/login", { username, password });
    applySession(info);
    showAlert("");
    await showTokens();
    (may("write") ? $("create-open") : $("tokens-title")).focus();
  } catch (e) {
    // A refused login says why in the gateway's words: a wrong name or
    // password (never which), or an account locked for a while.
    showAlert(e.status === 401 ? sentence(e.description || "wrong user name or password") : e.message);
    $("password").select();
  } finally {
    $("login-button").disabled = false;
  }
}

async function logout() {
  try { await api("POST", "/api/logout"); } catch (e) { /* the session is gone either way */ }
  showLogin("You are logged out.");
}

// ---- create -------------------------------------------------------------

function isoDate(d) {
  return d.toISOString().slice(0, 10);
}

function openCreate() {
  openTokenForm(null);
}

function openEdit(t) {
  openTokenForm(t);
}

// The create dialog, empty (create) or filled with token `t` (edit).
function openTokenForm(t) {
  showAlert("");
  state.editing = t;
  const today = new Date();
  const preset = new Date(today.getTime() + state.defaultDays * 86400000);
  const min = new Date(today.getTime() + 86400000);
  $("create-form").reset();
  $("create-form").hidden = false;
  $("created").hidden = true;
  $("create-error").hidden = true;
  $("create-title").textContent = t ? `Edit “${t.name}”` : "Create refresh token";
  $("create-submit").textContent = t ? "Save" : "Create";
  $("expires-date").min = isoDate(min);
  if (t) {
    $("token-name").value = t.name;
    $("expiry-never").checked = !t.expires_at;
    $("expiry-date").checked = !!t.expires_at;
    $("expires-date").value = t.expires_at ? t.expires_at.slice(0, 10) : isoDate(preset);
    const custom = (t.scopes || []).length > 0;
    $("access-custom").checked = custom;
    $("access-read").checked = !custom && t.read_only;
    $("access-full").checked = !custom && !t.read_only;
    $("token-rules").value = (t.scopes || []).map((r) => `${r.methods.join(",")} ${r.path}`).join("\n");
    $("token-networks").value = (t.networks || []).join(", ");
    $("token-rate").value = t.rate_limit ? t.rate_limit.per_second : "";
    $("token-burst").value = t.rate_limit ? t.rate_limit.burst : "";
    $("token-introspect").checked = !!t.introspect;
    $("token-max-uses").value = t.max_uses ?? "";
  } else {
    $("expires-date").value = isoDate(preset);
  }
  // Only an expiry the administrator changes is sent on edit: the date
  // field cannot show the time of day the token expires at.
  $("expires-date").dataset.initial = $("expires-date").value;
  $("expiry-never").dataset.initial = String($("expiry-never").checked);
  expiryChanged();
  accessChanged();
  $("create-dialog").showModal();
  $("token-name").focus();
}

function expiryChanged() {
  const never = $("expiry-never").checked;
  $("never-warning").hidden = !never;
  $("expires-date").disabled = never;
}

function accessChanged() {
  $("rules-box").hidden = !$("access-custom").checked;
}

// The restriction fields of the form, as the API takes them; a string is
// a problem to show instead.
function restrictionsFromForm() {
  let scopes = [];
  if ($("access-custom").checked) {
    for (const line of $("token-rules").value.split("\n")) {
      const l = line.trim();
      if (!l) continue;
      const space = l.search(/\s/);
      if (space < 0 && !l.startsWith("/")) return `“${l}”: write a rule as methods, a space and a path, like GET /reports/**.`;
      const methods = space < 0 ? ["*"] : l.slice(0, space).split(",").map((m) => m.trim().toUpperCase()).filter(Boolean);
      const path = space < 0 ? l : l.slice(space).trim();
      scopes.push({ methods, path });
    }
    if (scopes.length === 0) return "Add at least one rule, or choose Full access or Read-only.";
  }
  const networks = $("token-networks").value.split(/[\s,]+/).filter(Boolean);
  const rate = $("token-rate").value.trim();
  const burst = $("token-burst").value.trim();
  let rate_limit = null;
  if (rate) {
    rate_limit = { per_second: Number(rate), burst: Number(burst || rate) };
  } else if (burst) {
    return "A burst needs a rate: set requests per second too.";
  }
  return { scopes, read_only: $("access-read").checked, networks, rate_limit, introspect: $("token-introspect").checked };
}

async function create(ev) {
  ev.preventDefault();
  const err = $("create-error");
  err.hidden = true;
  const fail = (text, field) => { err.textContent = text; err.hidden = false; if (field) field.focus(); };
  const name = $("token-name").value.trim();
  if (!name) return fail("Give the token a name.", $("token-name"));
  let expires = "never";
  if ($("expiry-date").checked) {
    expires = $("expires-date").value;
    if (!expires) return fail("Choose an expiry date, or “Never expires”.", $("expires-date"));
  }
  const restrictions = restrictionsFromForm();
  if (typeof restrictions === "string") return fail(restrictions);
  const maxUsesText = $("token-max-uses").value.trim();
  const max_uses = maxUsesText ? Number(maxUsesText) : null;
  if (maxUsesText && !(Number.isInteger(max_uses) && max_uses >= 1)) {
    return fail("A usage limit is a whole number of exchanges, at least 1.", $("token-max-uses"));
  }
  const editing = state.editing;
  $("create-submit").disabled = true;
  try {
    if (editing) {
      const body = { name, ...restrictions };
      const expiryTouched = $("expires-date").value !== $("expires-date").dataset.initial
        || String($("expiry-never").checked) !== $("expiry-never").dataset.initial;
      if (expiryTouched) body.expires = expires;
      // Only a changed limit is sent: a new one counts from now.
      if (max_uses !== (editing.max_uses ?? null)) body.max_uses = max_uses;
      const t = await api("PATCH", `/api/refresh-tokens/${editing.id}`, body);
      $("create-dialog").close();
      showAlert(`Saved “${t.name}”. Its access tokens follow the change from their next request.`, "info");
      announce(`Token ${t.name} saved.`);
      return;
    }
    const t = await api("POST", "/api/refresh-tokens", { name, expires, ...restrictions, max_uses });
    showSecret(t.name, t.token, "Token created");
    announce(`Token ${t.name} created. Copy it now; it cannot be shown again.`);
  } catch (e) {
    if (e.status === 401) { $("create-dialog").close(); return showLogin(e.message); }
    fail(e.message);
  } finally {
    $("create-submit").disabled = false;
  }
}

// Shows a token string once, in the create dialog's second panel.
function showSecret(name, token, title) {
  $("created-title").textContent = title;
  $("created-name").textContent = name;
  $("created-token").value = token;
  $("copy-status").textContent = "";
  $("create-form").hidden = true;
  $("created").hidden = false;
  if (!$("create-dialog").open) $("create-dialog").showModal();
  $("created-token").focus();
  $("created-token").select();
}

// ---- rotate -------------------------------------------------------------

function openRotate(t) {
  showAlert("");
  state.rotating = t;
  $("rotate-title").textContent = `Rotate “${t.name}”?`;
  $("rotate-grace").value = "0";
  $("rotate-error").hidden = true;
  $("rotate-dialog").showModal();
  $("rotate-grace").focus();
}

async function confirmRotate() {
  const t = state.rotating;
  const grace_seconds = Number($("rotate-grace").value);
  $("rotate-confirm").disabled = true;
  try {
    const r = await api("POST", `/api/refresh-tokens/${t.id}/rotate`, { grace_seconds });
    $("rotate-dialog").close();
    showSecret(r.name, r.token, r.previous_token_valid_until
      ? `Token rotated; the old one works until ${fmtTime(r.previous_token_valid_until)}`
      : "Token rotated; the old one no longer works");
    announce(`Token ${r.name} rotated. Copy the new one now; it cannot be shown again.`);
  } catch (e) {
    if (e.status === 401) { $("rotate-dialog").close(); return showLogin(e.message); }
    $("rotate-error").textContent = e.message;
    $("rotate-error").hidden = false;
  } finally {
    $("rotate-confirm").disabled = false;
  }
}

// Copies a secret shown once (a token, a generated password) and says so.
// ---- suspend and resume ----------------------------------------------

function openSuspend(t) {
  showAlert("");
  state.suspending = t;
  $("suspend-title").textContent = `Suspend “${t.name}”?`;
  $("suspend-reason").value = "";
  $("suspend-error").hidden = true;
  $("suspend-dialog").showModal();
  $("suspend-reason").focus();
}

async function confirmSuspend() {
  const t = state.suspending;
  const reason = $("suspend-reason").value.trim();
  $("suspend-confirm").disabled = true;
  try {
    await api("POST", `/api/refresh-tokens/${t.id}/suspend`, reason ? { reason } : {});
    $("suspend-dialog").close();
    showAlert(`Suspended “${t.name}”: its exchanges are refused and its access tokens ended.`, "info");
    announce(`Token ${t.name} suspended.`);
  } catch (e) {
    if (e.status === 401) { $("suspend-dialog").close(); return showLogin(e.message); }
    $("suspend-error").textContent = e.message;
    $("suspend-error").hidden = false;
  } finally {
    $("suspend-confirm").disabled = false;
  }
}

async function resumeToken(t) {
  showAlert("");
  try {
    await api("POST", `/api/refresh-tokens/${t.id}/resume`, {});
    showAlert(`Resumed “${t.name}”: it exchanges again. Access tokens from before the suspension stay ended.`, "info");
    announce(`Token ${t.name} resumed.`);
  } catch (e) {
    handleError(e);
  }
  await refresh();
}

async function copyField(fieldId, statusId) {
  const field = $(fieldId);
  try {
    await navigator.clipboard.writeText(field.value);
  } catch (e) {
    field.select();
    document.execCommand && document.execCommand("copy");
  }
  $(statusId).textContent = "Copied.";
}

function closeCreated() {
  $("created-token").value = "";   // gone from the page once closed
  $("create-dialog").close();
}

// ---- delete -------------------------------------------------------------

function openDelete() {
  const chosen = state.tokens.filter((t) => state.selected.has(t.id));
  if (chosen.length === 0) return;
  const list = $("delete-list");
  list.replaceChildren(...chosen.map((t) => { const li = document.createElement("li"); li.textContent = t.name; return li; }));
  $("delete-title").textContent = chosen.length === 1 ? `Delete “${chosen[0].name}”?` : `Delete ${chosen.length} refresh tokens?`;
  $("delete-confirm").textContent = chosen.length === 1 ? "Delete token" : `Delete ${chosen.length} tokens`;
  $("delete-dialog").showModal();
  $("delete-cancel").focus();
}

async function confirmDelete() {
  const ids = [...state.selected];
  $("delete-confirm").disabled = true;
  try {
    const res = await api("POST", "/api/refresh-tokens/delete", { ids });
    $("delete-dialog").close();
    state.selected.clear();
    const names = res.deleted.map((d) => d.name).join(", ");
    showAlert(res.deleted.length === 1 ? `Deleted ${names}.` : `Deleted ${res.deleted.length} tokens: ${names}.`, "info");
    await refresh();
    $("create-open").focus();
  } catch (e) {
    $("delete-dialog").close();
    handleError(e);
  } finally {
    $("delete-confirm").disabled = false;
  }
}

// ---- single sign-on ------------------------------------------------------

// With [admin.oidc] configured, the login form also offers "Sign in with …":
// a top-level navigation to the gateway, which redirects to the provider.
// Not configured: /auth/oidc/info answers 404 and the button stays hidden.
async function offerSso() {
  let info;
  try { info = await api("GET", "/auth/oidc/info"); } catch (e) { return; }
  if (!info || typeof info.login_url !== "string" || !info.login_url.startsWith("/auth/oidc/")) return;
  const b = $("sso-button");
  b.textContent = "Sign in with " + info.display_name;
  b.addEventListener("click", () => window.location.assign(info.login_url));
  b.hidden = false;
}

// ---- wiring -------------------------------------------------------------

function sortBy(key) {
  state.sort = state.sort.key === key ? { key, dir: -state.sort.dir } : { key, dir: 1 };
  render();
}

document.addEventListener("DOMContentLoaded", async () => {
  $("login-form").addEventListener("submit", login);
  $("logout").addEventListener("click", logout);
  $("create-open").addEventListener("click", openCreate);
  $("create-form").addEventListener("submit", create);
  $("create-cancel").addEventListener("click", () => $("create-dialog").close());
  $("expiry-date").addEventListener("change", expiryChanged);
  $("expiry-never").addEventListener("change", expiryChanged);
  for (const id of ["access-full", "access-read", "access-custom"]) $(id).addEventListener("change", accessChanged);
  $("rotate-cancel").addEventListener("click", () => $("rotate-dialog").close());
  $("rotate-confirm").addEventListener("click", confirmRotate);
  $("rotate-dialog").addEventListener("close", () => refresh());
  $("suspend-cancel").addEventListener("click", () => $("suspend-dialog").close());
  $("suspend-confirm").addEventListener("click", confirmSuspend);
  $("suspend-dialog").addEventListener("close", () => refresh());
  $("copy").addEventListener("click", () => copyField("created-token", "copy-status"));
  $("created-close").addEventListener("click", closeCreated);
  $("create-dialog").addEventListener("close", async () => {
    $("created-token").value = "";
    await refresh();
    $("create-open").focus();
  });
  $("delete-open").addEventListener("click", openDelete);
  $("delete-cancel").addEventListener("click", () => $("delete-dialog").close());
  $("delete-confirm").addEventListener("click", confirmDelete);
  $("select-all").addEventListener("change", (ev) => {
    state.selected = ev.target.checked ? new Set(state.tokens.map((t) => t.id)) : new Set();
    render();
  });
  for (const b of document.querySelectorAll("button.sort")) b.addEventListener("click", () => sortBy(b.dataset.key));
  offerSso();

  wireUsers();

  try {
    const info = await api("GET", "/api/session");
    $("login-view").hidden = true;
    applySession(info);
    await showTokens();
  } catch (e) {
    showLogin(e.status === 401 ? "" : e.message);
  }
});
