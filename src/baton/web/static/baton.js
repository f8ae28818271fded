/* Baton dashboard: shared helpers (API calls, icons, time), schema forms and the launch dialog.
   Plain JavaScript, no build step, no dependencies. Everything agent-made is inserted as text
   (textContent) or as HTML the server already sanitized. */
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
    running: ["r", "M12 3a9 9 0 1 1-9 9"],
    waiting_for_input: ["M4 5h16v11H10l-4 4v-4H4z", "M8 10.5h.01M12 10.5h.01M16 10.5h.01"],
    waiting: ["M4 5h16v11H10l-4 4v-4H4z", "M8 10.5h.01M12 10.5h.01M16 10.5h.01"],
    succeeded: ["c", "M8 12.5l3 3 5-6"],
    failed: ["c", "M9 9l6 6M15 9l-6 6"],
    cancelled: ["c", "M6 6l12 12"],
    pending: ["c"],
    skipped: ["c", "M8 12h8"],
    retrying: ["r", "M12 3a9 9 0 1 1-9 9"],
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

  // --- forms from JSON Schema --------------------------------------------------------------------

  let formSeq = 0;

  function humanize(name) {
    const text = String(name).replace(/[_-]+/g, " ").trim();
    return text.charAt(0).toUpperCase() + text.slice(1);
  }

  function typeOf(schema) {
    let type = schema.type;
    if (Array.isArray(type)) type = type.find((t) => t !== "null") || "string";
    if (!type && schema.enum) type = typeof schema.enum[0] === "number" ? "number" : "string";
    if (!type && schema.properties) type = "object";
    return type || "string";
  }

  const LONG_TEXT = /(note|brief|text|body|description|prompt|question|content|message|summary|focus|task)/i;

  function kindOf(name, schema) {
    const type = typeOf(schema);
    if (schema.enum) return "enum";
    if (type === "boolean") return "boolean";
    if (type === "integer" || type === "number") return "number";
    if (type === "string") {
      const long =
        schema.format === "textarea" ||
        (schema.maxLength || 0) > 200 ||
        String(schema.default || "").length > 60 ||
        (LONG_TEXT.test(name) && !(schema.maxLength && schema.maxLength <= 120));
      return long ? "textarea" : "text";
    }
    if (type === "array") {
      const items = schema.items || {};
      if (items.enum) return "multi";
      if (["string", "number", "integer"].includes(typeOf(items))) return "lines";
    }
    return "json";
  }

  function makeField(prefix, name, schema, required) {
    const id = `${prefix}-${String(name).replace(/[^A-Za-z0-9_-]/g, "_")}`;
    const kind = kindOf(name, schema);
    const hintId = `${id}-hint`;
    const errorId = `${id}-error`;
    const wrap = el("div", { class: `field field-${kind}`, dataset: { field: name } });
    const label = el("label", { for: id }, schema.title || humanize(name));
    if (required && kind !== "boolean") label.append(el("span", { class: "req", "aria-hidden": "true" }, " *"));
    const hint = schema.description ? el("p", { class: "hint", id: hintId }, schema.description) : null;
    const error = el("p", { class: "field-error", id: errorId, hidden: true });
    const described = [hint ? hintId : null, errorId].filter(Boolean).join(" ");
    let input;
    const dflt = schema.default;
    if (kind === "enum") {
      input = el("select", { id, name, "aria-describedby": described });
      if (!required || dflt === undefined) input.append(el("option", { value: "" }, required ? "Choose…" : "(none)"));
      schema.enum.forEach((value, i) => {
        input.append(el("option", { value: String(i), selected: dflt !== undefined && value === dflt }, String(value)));
      });
    } else if (kind === "boolean") {
      input = el("input", { id, name, type: "checkbox", checked: dflt === true, "aria-describedby": described });
      wrap.classList.add("toggle");
      wrap.append(input, label, hint, error);
      return { name, kind, schema, required, wrap, input, error };
    } else if (kind === "number") {
      input = el("input", {
        id,
        name,
        type: "number",
        inputmode: typeOf(schema) === "integer" ? "numeric" : "decimal",
        step: typeOf(schema) === "integer" ? "1" : "any",
        min: schema.minimum,
        max: schema.maximum,
        value: dflt !== undefined ? String(dflt) : null,
        "aria-describedby": described,
      });
    } else if (kind === "text") {
      input = el("input", {
        id,
        name,
        type: "text",
        maxlength: schema.maxLength,
        value: dflt !== undefined ? String(dflt) : null,
        autocomplete: "off",
        "aria-describedby": described,
      });
    } else if (kind === "multi") {
      input = el("div", { class: "multi", id, role: "group", "aria-labelledby": `${id}-label` });
      label.id = `${id}-label`;
      label.removeAttribute("for");
      (schema.items.enum || []).forEach((value, i) => {
        const box = el("input", {
          type: "checkbox",
          id: `${id}-${i}`,
          value: String(i),
          checked: Array.isArray(dflt) && dflt.includes(value),
        });
        input.append(el("span", { class: "toggle" }, box, el("label", { for: `${id}-${i}` }, String(value))));
      });
    } else {
      let text = "";
      if (kind === "lines" && Array.isArray(dflt)) text = dflt.join("\n");
      else if (kind === "json" && dflt !== undefined) text = JSON.stringify(dflt, null, 2);
      else if (dflt !== undefined) text = String(dflt);
      input = el("textarea", {
        id,
        name,
        rows: kind === "json" ? 5 : 3,
        spellcheck: kind === "json" ? "false" : null,
        "aria-describedby": described,
      });
      input.value = text;
      if (kind === "lines") {
        wrap.classList.add("lines");
        label.append(el("span", { class: "muted" }, " (one per line)"));
      }
      if (kind === "json") label.append(el("span", { class: "muted" }, " (JSON)"));
    }
    wrap.append(label, hint, input, error);
    return { name, kind, schema, required, wrap, input, error };
  }

  function readField(field) {
    const { kind, input, schema } = field;
    if (kind === "boolean") return { value: input.checked };
    if (kind === "enum") return input.value === "" ? { empty: true } : { value: schema.enum[Number(input.value)] };
    if (kind === "multi") {
      const chosen = [...input.querySelectorAll("input:checked")].map((box) => schema.items.enum[Number(box.value)]);
      return chosen.length ? { value: chosen } : { empty: true };
    }
    const raw = input.value;
    if (raw.trim() === "") return { empty: true };
    if (kind === "number") {
      const n = Number(raw);
      if (!Number.isFinite(n)) return { error: "Enter a number." };
      if (typeOf(schema) === "integer" && !Number.isInteger(n)) return { error: "Enter a whole number." };
      return { value: n };
    }
    if (kind === "lines") {
      const itemType = typeOf(schema.items || {});
      const lines = raw.split("\n").map((line) => line.trim()).filter(Boolean);
      if (itemType === "string") return { value: lines };
      const numbers = lines.map(Number);
      if (numbers.some((n) => !Number.isFinite(n))) return { error: "Each line must be a number." };
      return { value: numbers };
    }
    if (kind === "json") {
      try {
        return { value: JSON.parse(raw) };
      } catch (error) {
        return { error: "This is not valid JSON." };
      }
    }
    return { value: raw };
  }

  function checkValue(schema, value) {
    const type = typeOf(schema);
    if (type === "string" && typeof value === "string") {
      if (schema.minLength && value.length < schema.minLength) return `At least ${schema.minLength} characters.`;
      if (schema.maxLength && value.length > schema.maxLength) return `At most ${schema.maxLength} characters.`;
      if (schema.pattern) {
        try {
          if (!new RegExp(schema.pattern, "u").test(value)) return `Must match ${schema.pattern}.`;
        } catch (error) {
          /* a pattern JavaScript cannot read: the server checks it */
        }
      }
    }
    if ((type === "number" || type === "integer") && typeof value === "number") {
      if (schema.minimum !== undefined && value < schema.minimum) return `At least ${schema.minimum}.`;
      if (schema.maximum !== undefined && value > schema.maximum) return `At most ${schema.maximum}.`;
      if (schema.exclusiveMinimum !== undefined && value <= schema.exclusiveMinimum)
        return `More than ${schema.exclusiveMinimum}.`;
      if (schema.exclusiveMaximum !== undefined && value >= schema.exclusiveMaximum)
        return `Less than ${schema.exclusiveMaximum}.`;
    }
    if (type === "array" && Array.isArray(value)) {
      if (schema.minItems && value.length < schema.minItems) return `At least ${schema.minItems} items.`;
      if (schema.maxItems && value.length > schema.maxItems) return `At most ${schema.maxItems} items.`;
    }
    if (type === "object" && (value === null || typeof value !== "object" || Array.isArray(value)))
      return "Must be a JSON object.";
    return "";
  }

  function showError(field, message) {
    field.error.textContent = message;
    field.error.hidden = !message;
    const target = field.kind === "multi" ? field.input : field.input;
    if (message) target.setAttribute("aria-invalid", "true");
    else target.removeAttribute("aria-invalid");
  }

  function validateField(field) {
    const read = readField(field);
    let message = read.error || "";
    if (!message && read.empty && field.required) message = "Required.";
    if (!message && !read.empty) message = checkValue(field.schema, read.value);
    showError(field, message);
    return !message;
  }

  /**
   * A form for a JSON Schema: an object's properties become fields (defaults filled in), any
   * other schema one field named `answer`. Fields validate as they are edited and on submit.
   */
  function schemaForm(container, schema, options) {
    const opts = options || {};
    const prefix = `${opts.prefix || "f"}${++formSeq}`;
    const isObject = typeOf(schema || {}) === "object";
    const properties = isObject ? (schema && schema.properties) || {} : { [opts.name || "answer"]: schema || {} };
    const required = new Set(isObject ? (schema && schema.required) || [] : [opts.name || "answer"]);
    const fields = Object.entries(properties).map(([name, sub]) => makeField(prefix, name, sub || {}, required.has(name)));
    container.replaceChildren(...fields.map((f) => f.wrap));
    if (!fields.length) container.append(el("p", { class: "muted" }, opts.emptyText || "Nothing to fill in."));
    for (const field of fields) {
      const target = field.input;
      const again = () => {
        if (field.touched) validateField(field);
      };
      target.addEventListener("input", again);
      target.addEventListener("change", () => {
        field.touched = true;
        validateField(field);
      });
      target.addEventListener("blur", () => {
        field.touched = true;
        validateField(field);
      }, true);
    }
    return {
      fields,
      validate() {
        let firstBad = null;
        for (const field of fields) {
          field.touched = true;
          if (!validateField(field) && !firstBad) firstBad = field;
        }
        if (firstBad) (firstBad.kind === "multi" ? firstBad.input.querySelector("input") : firstBad.input).focus();
        return !firstBad;
      },
      value() {
        if (!isObject) {
          const read = fields.length ? readField(fields[0]) : { empty: true };
          return read.empty ? null : read.value;
        }
        const out = {};
        for (const field of fields) {
          const read = readField(field);
          if (!read.empty && !read.error) out[field.name] = read.value;
        }
        return out;
      },
      /** Server-side problems (`errors: [{field, message}]`) shown at their fields. */
      showProblems(problems) {
        let shown = false;
        for (const problem of problems || []) {
          const name = String(problem.field || "").replace(/^(inputs|answer|body)\.?/, "").split(".")[0];
          const field = fields.find((f) => f.name === name) || (!isObject ? fields[0] : null);
          if (field) {
            showError(field, problem.message);
            shown = true;
          }
        }
        return shown;
      },
    };
  }

  /** The form answering a pending input request, built from its schema (run page and inbox). */
  function inputForm(request, options) {
    const container = el("div", { class: "schema-form" });
    const error = el("p", { class: "form-error", role: "alert", hidden: true });
    const submit = el("button", { type: "submit", class: "btn primary", "data-action": "answer" }, "Send answer");
    const form = el(
      "form",
      { class: "ask-form", novalidate: true, dataset: { request: request.id } },
      el("p", { class: "ask-prompt" }, request.prompt || "This run needs an answer."),
      container,
      error,
      options.mayAct ? submit : el("p", { class: "muted" }, "A project member can answer it.")
    );
    const fields = schemaForm(container, request.schema || {}, { prefix: "ask" });
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      if (!fields.validate()) return;
      submit.disabled = true;
      error.hidden = true;
      try {
        await api(`/v1/inputs/${encodeURIComponent(request.id)}/answer`, { method: "POST", body: { answer: fields.value() } });
        toast("Answer sent: the run moves on.");
        options.onAnswered();
        refreshInboxCount();
      } catch (failure) {
        fields.showProblems(failure.problem.errors);
        error.textContent = failure.message;
        error.hidden = false;
        submit.disabled = false;
      }
    });
    return form;
  }

  // --- the launch dialog -------------------------------------------------------------------------

  const launch = {
    dialog: null,
    category: null,
    flow: null,
    form: null,
    prefill: null,
  };

  function confirmationMode(flowName) {
    return (DATA.confirmation || {})[flowName] || "none";
  }

  function renderTabs(all) {
    const tabs = document.getElementById("launch-tabs");
    const categories = [...(DATA.categories || [])];
    for (const flow of all) if (!categories.includes(flow.category)) categories.push(flow.category);
    if (!launch.category || !categories.includes(launch.category)) {
      launch.category = categories.find((c) => all.some((f) => f.category === c)) || categories[0];
    }
    tabs.replaceChildren(
      ...categories.map((category) => {
        const count = all.filter((f) => f.category === category).length;
        const selected = category === launch.category;
        return el(
          "button",
          {
            type: "button",
            role: "tab",
            class: "tab",
            id: `tab-${category}`,
            "aria-selected": selected ? "true" : "false",
            "aria-controls": "launch-flows",
            tabindex: selected ? "0" : "-1",
            dataset: { category },
            onclick: () => {
              launch.category = category;
              renderTabs(all);
              pickInCategory(all);
              renderFlowList(all);
            },
          },
          category,
          el("span", { class: "count" }, String(count))
        );
      })
    );
    tabs.onkeydown = (event) => {
      if (!["ArrowLeft", "ArrowRight", "Home", "End"].includes(event.key)) return;
      const buttons = [...tabs.querySelectorAll('[role="tab"]')];
      const at = buttons.indexOf(document.activeElement);
      let next = at;
      if (event.key === "ArrowRight") next = (at + 1) % buttons.length;
      if (event.key === "ArrowLeft") next = (at - 1 + buttons.length) % buttons.length;
      if (event.key === "Home") next = 0;
      if (event.key === "End") next = buttons.length - 1;
      event.preventDefault();
      buttons[next].click();
      document.getElementById(`tab-${buttons[next].dataset.category}`).focus();
    };
  }

  /** Keep the chosen flow if it is in the shown category, else choose the category's first. */
  function pickInCategory(all) {
    if (launch.flow && launch.flow.category === launch.category) return;
    const first = all.find((f) => f.category === launch.category);
    if (first) selectFlow(first);
  }

  function renderFlowList(all) {
    const list = document.getElementById("launch-flows");
    list.setAttribute("aria-labelledby", `tab-${launch.category}`);
    const shown = all.filter((f) => f.category === launch.category);
    if (!shown.length) {
      list.replaceChildren(el("p", { class: "muted" }, `No ${launch.category} flows are loaded.`));
      return;
    }
    list.replaceChildren(
      ...shown.map((flow) => {
        const id = `flow-${flow.name}`;
        const input = el("input", {
          type: "radio",
          name: "flow",
          id,
          value: flow.name,
          checked: launch.flow && launch.flow.name === flow.name,
          onchange: () => selectFlow(flow),
        });
        return el(
          "label",
          { class: "flow-card", for: id, dataset: { flow: flow.name } },
          input,
          el("span", { class: "flow-card-title" }, flow.title || flow.name, " ", el("code", {}, flow.name)),
          el("span", { class: "flow-card-desc" }, flow.description || "")
        );
      })
    );
  }

  function bandSummary(flow, band) {
    const details = (flow.band_details || {})[band] || {};
    if (Array.isArray(details.steps) && details.steps.length) return `${details.steps.length} steps`;
    if (details.max_attempts) return `up to ${details.max_attempts} attempts`;
    return flow.steps && flow.steps.length ? `${flow.steps.length} steps` : "";
  }

  function selectFlow(flow) {
    launch.flow = flow;
    document.getElementById("launch-hint").hidden = true;
    document.getElementById("launch-fields").hidden = false;
    document.getElementById("launch-flow-title").textContent = flow.title || flow.name;
    document.getElementById("launch-flow-desc").textContent = flow.description || "";
    const chips = document.getElementById("launch-flow-steps");
    chips.replaceChildren(
      el("span", { class: "muted" }, "Steps: "),
      ...(flow.steps || []).map((s) => el("span", { class: `chip kind-${s.kind}` }, s.label || s.key))
    );
    const bands = document.getElementById("launch-band-options");
    const names = flow.bands && flow.bands.length ? flow.bands : ["small", "medium", "large"];
    const preferred = names.includes("medium") ? "medium" : names[0];
    bands.replaceChildren(
      ...names.map((band) => {
        const id = `band-${band}`;
        return el(
          "span",
          { class: "band" },
          el("input", { type: "radio", name: "band", id, value: band, checked: band === preferred }),
          el("label", { for: id }, el("strong", {}, band), el("span", { class: "muted" }, bandSummary(flow, band)))
        );
      })
    );
    const prefill = launch.prefill && launch.prefill.flow === flow.name ? launch.prefill.inputs || {} : {};
    const schema = JSON.parse(JSON.stringify(flow.input_schema || { type: "object" }));
    for (const [key, value] of Object.entries(prefill)) {
      if (schema.properties && schema.properties[key]) schema.properties[key].default = value;
    }
    launch.form = schemaForm(document.getElementById("launch-inputs"), schema, {
      prefix: "in",
      emptyText: "This flow takes no inputs.",
    });
    const mode = confirmationMode(flow.name);
    const skipWrap = document.getElementById("launch-skip-wrap");
    const note = document.getElementById("launch-confirm-note");
    skipWrap.hidden = mode !== "optional";
    document.getElementById("launch-skip").checked = false;
    note.hidden = mode === "optional";
    note.textContent =
      mode === "required"
        ? "The policy requires a confirmation: the run waits for a go-ahead after you launch it."
        : "Runs of this flow start as soon as you launch them.";
    const submit = document.getElementById("launch-submit");
    submit.disabled = !DATA.can_launch;
    submit.title = DATA.can_launch ? "" : "Your role in this project is viewer: you cannot start runs.";
    setLaunchError("");
  }

  function setLaunchError(message) {
    const node = document.getElementById("launch-error");
    node.textContent = message;
    node.hidden = !message;
  }

  async function openLaunch(prefill) {
    launch.dialog = launch.dialog || document.getElementById("launch");
    if (!launch.dialog) return;
    launch.prefill = prefill || null;
    if (!launch.dialog.open) launch.dialog.showModal();
    try {
      const all = await flows();
      if (prefill && prefill.flow) {
        const chosen = all.find((f) => f.name === prefill.flow);
        if (chosen) {
          launch.category = chosen.category;
          launch.flow = chosen;
        }
      }
      renderTabs(all);
      if (launch.flow && launch.flow.category === launch.category) selectFlow(launch.flow);
      else pickInCategory(all);
      renderFlowList(all);
      const focus = launch.dialog.querySelector('[role="tab"][aria-selected="true"]');
      if (focus) focus.focus();
    } catch (error) {
      setLaunchError(`The flows could not be loaded: ${error.message}`);
    }
  }

  async function submitLaunch(event) {
    event.preventDefault();
    const flow = launch.flow;
    if (!flow || !launch.form) return;
    if (!launch.form.validate()) {
      setLaunchError("Some inputs need attention.");
      return;
    }
    const band = (document.querySelector('input[name="band"]:checked') || {}).value || null;
    const body = {
      flow: flow.name,
      project_id: DATA.project || null,
      inputs: launch.form.value(),
      title: document.getElementById("launch-run-title").value.trim(),
      band,
      confirm: confirmationMode(flow.name) === "optional" && document.getElementById("launch-skip").checked,
      source: { screen: location.pathname, action: "dashboard.launch" },
    };
    const submit = document.getElementById("launch-submit");
    submit.disabled = true;
    submit.textContent = "Launching…";
    setLaunchError("");
    try {
      const run = await api("/v1/runs", { method: "POST", body });
      location.assign(runUrl(run.id));
    } catch (error) {
      if (!launch.form.showProblems(error.problem.errors)) setLaunchError(error.message);
      else setLaunchError(error.message);
      submit.disabled = false;
      submit.textContent = "Launch";
    }
  }

  function setUpLaunch() {
    const dialog = document.getElementById("launch");
    if (!dialog) return;
    document.getElementById("launch-form").addEventListener("submit", submitLaunch);
    for (const button of dialog.querySelectorAll("[data-close]")) {
      button.addEventListener("click", () => dialog.close());
    }
    dialog.addEventListener("click", (event) => {
      if (event.target === dialog) dialog.close(); // a click on the backdrop
    });
    document.addEventListener("click", (event) => {
      const opener = event.target.closest("[data-launch]");
      if (opener) {
        event.preventDefault();
        openLaunch(opener.dataset.launchFlow ? { flow: opener.dataset.launchFlow } : null);
      }
    });
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
    setUpLaunch();
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
    schemaForm,
    inputForm,
    openLaunch,
    refreshInboxCount,
  };

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", setUpChrome);
  else setUpChrome();
})();
