/* Baton dashboard: shared helpers (DOM, icons, time, API calls, toasts) as window.Baton.
   Plain JavaScript, no build step, no dependencies. Everything agent-made is inserted as text
   (textContent) or as HTML the server already sanitized. forms.js and launch.js build on it. */
(function () {
  "use strict";

  const dataNode = document.getElementById("baton-data");
  const DATA = dataNode ? JSON.parse(dataNode.textContent) : {};
  const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

  // --- DOM ---------------------------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key === "dataset") Object.assign(node.dataset, value);
      else if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    append(node, children);
    return node;
  }

  function append(node, children) {
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  const SVG_NS = "http://www.w3.org/2000/svg";
  const ICONS = {
    needs_confirmation: ["c", "M9.6 9.2a2.5 2.5 0 1 1 3.4 2.4c-.6.3-1 .8-1 1.5v.6", "M12 16.8v.2"],
    queued: ["c", "M12 7.5V12l3 2"],
    running: ["r"],
    waiting_for_input: ["M4 5h16v11H10l-4 4v-4H4z", "M8 10.5h.01M12 10.5h.01M16 10.5h.01"],
    waiting: ["M4 5h16v11H10l-4 4v-4H4z", "M8 10.5h.01M12 10.5h.01M16 10.5h.01"],
    succeeded: ["c", "M8 12.5l3 3 5-6"],
    failed: ["c", "M9 9l6 6M15 9l-6 6"],
    cancelled: ["c", "M6 6l12 12"],
    pending: ["c"],
    skipped: ["c", "M8 12h8"],
    retrying: ["r"],
    warn: ["M12 3l10 18H2z", "M12 10v4M12 17.5v.2"],
  };

  function icon(name, extraClass) {
    const svg = document.createElementNS(SVG_NS, "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("aria-hidden", "true");
    svg.setAttribute("class", "icon status-icon " + (extraClass || ""));
    for (const part of ICONS[name] || ICONS.pending) {
      let shape;
      if (part === "c" || part === "r") {
        shape = document.createElementNS(SVG_NS, "circle");
        shape.setAttribute("cx", "12");
        shape.setAttribute("cy", "12");
        shape.setAttribute("r", "9");
        if (part === "r") shape.setAttribute("class", "track");
      } else {
        shape = document.createElementNS(SVG_NS, "path");
        shape.setAttribute("d", part);
      }
      svg.append(shape);
    }
    return svg;
  }

  const STATUS_LABELS = {
    needs_confirmation: "needs confirmation",
    waiting_for_input: "waiting for input",
  };

  function statusLabel(status) {
    return STATUS_LABELS[status] || String(status || "").replace(/_/g, " ");
  }

  function statusBadge(status, extra) {
    return el("span", { class: `status status-${status}` }, icon(status), el("span", { text: extra || statusLabel(status) }));
  }

  // --- time --------------------------------------------------------------------------------------

  function ms(iso) {
    return iso ? Date.parse(iso) : NaN;
  }

  function relTime(iso) {
    const t = ms(iso);
    if (Number.isNaN(t)) return "";
    const s = Math.max(0, (Date.now() - t) / 1000);
    if (s < 10) return "just now";
    if (s < 60) return `${Math.floor(s)} s ago`;
    if (s < 3600) return `${Math.floor(s / 60)} min ago`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
    if (s < 86400 * 30) return `${Math.floor(s / 86400)} d ago`;
    return new Date(t).toLocaleDateString();
  }

  function absTime(iso) {
    const t = ms(iso);
    return Number.isNaN(t) ? "" : new Date(t).toLocaleString();
  }

  function clock(iso) {
    const t = ms(iso);
    return Number.isNaN(t) ? "" : new Date(t).toLocaleTimeString([], { hour12: false });
  }

  function formatSeconds(seconds) {
    if (!Number.isFinite(seconds) || seconds < 0) return "";
    if (seconds < 10) return `${seconds.toFixed(1)} s`;
    if (seconds < 60) return `${Math.round(seconds)} s`;
    const m = Math.floor(seconds / 60);
    if (m < 60) return `${m} min ${String(Math.floor(seconds % 60)).padStart(2, "0")} s`;
    return `${Math.floor(m / 60)} h ${String(m % 60).padStart(2, "0")} min`;
  }

  function span(startIso, endIso) {
    const start = ms(startIso);
    if (Number.isNaN(start)) return "";
    const end = endIso ? ms(endIso) : Date.now();
    return formatSeconds((end - start) / 1000);
  }

  /** Elements with data-since (and data-until) show a live duration; data-rel a relative time. */
  function tick(root) {
    for (const node of (root || document).querySelectorAll("[data-since]")) {
      node.textContent = span(node.dataset.since, node.dataset.until || null);
    }
    for (const node of (root || document).querySelectorAll("[data-rel]")) {
      node.textContent = relTime(node.dataset.rel);
    }
  }
  setInterval(tick, 1000);

  function runDuration(run) {
    return run.started_at ? span(run.started_at, run.finished_at) : "";
  }

  function timeEl(iso, attrs) {
    return el("time", { datetime: iso, title: absTime(iso), dataset: { rel: iso }, ...(attrs || {}) }, relTime(iso));
  }

  function durationEl(startIso, endIso, attrs) {
    if (!startIso) return el("span", { class: "muted", ...(attrs || {}) }, "–");
    const data = { since: startIso };
    if (endIso) data.until = endIso;
    return el("span", { dataset: data, ...(attrs || {}) }, span(startIso, endIso));
  }

  // --- API ---------------------------------------------------------------------------------------

  function csrf() {
    for (const part of document.cookie.split(";")) {
      const [name, ...rest] = part.trim().split("=");
      if (name === "baton_csrf") return decodeURIComponent(rest.join("="));
    }
    return "";
  }

  class ApiError extends Error {
    constructor(status, problem) {
      super((problem && (problem.detail || problem.title)) || `request failed (${status})`);
      this.status = status;
      this.problem = problem || {};
    }
  }

  async function api(path, options) {
    const opts = options || {};
    const method = opts.method || "GET";
    const headers = { Accept: "application/json" };
    let body;
    if (method !== "GET") headers["X-Baton-CSRF"] = csrf();
    if (opts.body !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(opts.body);
    }
    let response;
    try {
      response = await fetch(path, { method, headers, body, credentials: "same-origin" });
    } catch (error) {
      throw new ApiError(0, { detail: "The server cannot be reached; check your connection and try again." });
    }
    if (response.status === 401) {
      location.assign("/login?next=" + encodeURIComponent(location.pathname + location.search));
      throw new ApiError(401, { detail: "Your session ended; sign in again." });
    }
    const type = response.headers.get("content-type") || "";
    const payload = type.includes("json") ? await response.json() : await response.text();
    if (!response.ok) {
      throw new ApiError(response.status, typeof payload === "object" ? payload : { detail: String(payload) });
    }
    return payload;
  }

  function runUrl(id) {
    return `/runs/${encodeURIComponent(id)}`;
  }

  let flowsPromise = null;
  function flows() {
    if (!flowsPromise) {
      flowsPromise = api("/v1/flows").catch((error) => {
        flowsPromise = null;
        throw error;
      });
    }
    return flowsPromise;
  }

  function projectRole(projectId) {
    const found = (DATA.projects || []).find((p) => p.id === projectId);
    return found ? found.role : null;
  }

  function mayAct(run) {
    if (!run.project_id) return run.created_by === (DATA.user || {}).id;
    return ["member", "admin"].includes(projectRole(run.project_id));
  }

  function who(userId) {
    if (!userId) return "";
    return (DATA.members || {})[userId] || userId;
  }

  // --- feedback ----------------------------------------------------------------------------------

  function toast(message, kind) {
    const box = document.getElementById("toasts");
    if (!box) return;
    const note = el("div", { class: `toast ${kind || ""}` }, message);
    box.append(note);
    setTimeout(() => note.remove(), kind === "error" ? 8000 : 4000);
  }

  function live(state) {
    const node = document.getElementById("live-state");
    if (!node) return;
    const text = { true: "live", false: "reconnecting…", done: "finished" }[String(state)];
    node.textContent = text;
    node.dataset.state = String(state);
  }

  // --- page chrome -------------------------------------------------------------------------------

  async function refreshInboxCount() {
    const badge = document.getElementById("inbox-count");
    if (!badge) return;
    try {
      const [runs, inputs] = await Promise.all([
        api("/v1/runs?status=needs_confirmation&limit=100"),
        api("/v1/inputs?status=pending"),
      ]);
      const count = runs.runs.length + inputs.length;
      badge.textContent = String(count);
      badge.hidden = count === 0;
      badge.setAttribute("aria-label", `${count} waiting`);
    } catch (error) {
      badge.hidden = true;
    }
  }

  function setUpChrome() {
    const select = document.getElementById("project-select");
    if (select) select.addEventListener("change", () => select.form.submit());
    if (DATA.user) {
      refreshInboxCount();
      setInterval(refreshInboxCount, 30000); // other projects' requests too, not only this page's
    }
  }

  window.Baton = {
    data: DATA,
    TERMINAL,
    el,
    append,
    icon,
    statusBadge,
    statusLabel,
    relTime,
    absTime,
    clock,
    span,
    runDuration,
    formatSeconds,
    timeEl,
    durationEl,
    tick,
    api,
    ApiError,
    flows,
    runUrl,
    mayAct,
    who,
    toast,
    live,
    refreshInboxCount,
  };

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", setUpChrome);
  else setUpChrome();
})();
