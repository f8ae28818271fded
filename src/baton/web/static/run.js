/* One run, live: header and actions, plan preview, report, roster with token streams, the input
   form where the run waits, artifacts, inputs and timeline.

   The run's SSE stream carries every event with its dense sequence number as the SSE id. The
   browser's EventSource reconnects after a dropped line with Last-Event-ID, so the server resends
   exactly what was missed; the page also ignores any id it has already applied. Structural changes
   (statuses, new steps, requests) re-read GET /v1/runs/{id}; token deltas are appended as text. */
(function () {
  "use strict";
  const B = window.Baton;
  const D = B.data;
  const RUN_ID = D.run_id;
  const RUN_PATH = `/v1/runs/${encodeURIComponent(RUN_ID)}`;
  const STREAM_CAP = 400000;
  const TIMELINE_CAP = 1500;

  const S = {
    run: null,
    lastSeq: 0,
    streams: {}, // step key -> streamed text
    expanded: null,
    follow: true,
    source: null,
    ended: false, // the stream delivered the run's final event
    refreshTimer: null,
    artifactsTimer: null,
    artifacts: new Map(), // id -> <details>
    forms: new Map(), // input request id -> {node, form}
    reportFor: null,
    retriedAs: null,
    stepNodes: new Map(),
    engines: {}, // step key -> the engine its step.engine event named
  };

  const $ = (id) => document.getElementById(id);

  // --- reading -----------------------------------------------------------------------------------

  async function refresh() {
    try {
      const run = await B.api(RUN_PATH);
      S.run = run;
      render(run);
    } catch (error) {
      if (error.status === 404) location.reload(); // the run went away (or access did): show the page
      else B.toast(`Could not refresh the run: ${error.message}`, "error");
    }
  }

  function refreshSoon() {
    clearTimeout(S.refreshTimer);
    S.refreshTimer = setTimeout(refresh, 120);
  }

  async function loadArtifacts() {
    try {
      renderArtifacts(await B.api(`${RUN_PATH}/artifacts`));
    } catch (error) {
      B.toast(`Could not load the artifacts: ${error.message}`, "error");
    }
  }

  function artifactsSoon() {
    clearTimeout(S.artifactsTimer);
    S.artifactsTimer = setTimeout(loadArtifacts, 200);
  }

  // --- header and actions ------------------------------------------------------------------------

  /** What engine a step ran on (its row, once done), runs on (its step.engine event), or names. */
  function engineOf(step) {
    const done = ["succeeded", "failed", "cancelled"].includes(step.status);
    if (done && step.engine) return step.engine;
    if (S.engines[step.key]) return S.engines[step.key];
    return step.engine && step.engine !== "default" ? step.engine : null;
  }

  function engineChip(engine) {
    const offline = /offline/.test(engine);
    return B.el(
      "span",
      {
        class: `chip engine ${offline ? "offline" : ""}`,
        title: offline ? "offline engine: deterministic text written without a model" : `engine ${engine}`,
      },
      offline && engine !== "offline" ? `offline (${engine.replace(/^offline\W*/, "").replace(/\)$/, "") || engine})` : engine
    );
  }

  function engineChips(run) {
    const engines = [...new Set(run.steps.map(engineOf).filter(Boolean))];
    return engines.map(engineChip);
  }

  function progressBits(run) {
    const p = run.progress || {};
    const bits = [];
    if (p.stage) bits.push(B.el("span", { class: "meta-item" }, B.el("span", { class: "muted" }, "stage "), p.stage));
    const attempt = p.current_attempt || p.attempt;
    if (attempt && p.max_attempts) {
      bits.push(B.el("span", { class: "meta-item" }, B.el("span", { class: "muted" }, "attempt "), `${attempt}/${p.max_attempts}`));
    }
    if (typeof p.score === "number") {
      const threshold = typeof p.pass_threshold === "number" ? p.pass_threshold : null;
      const cls = threshold === null ? "" : p.score >= threshold ? "pass" : "below";
      bits.push(
        B.el(
          "span",
          { class: `meta-item score ${cls}` },
          B.el("span", { class: "muted" }, "score "),
          p.score.toFixed(2),
          threshold !== null ? B.el("span", { class: "muted" }, ` (passes at ${threshold})`) : null
        )
      );
    }
    return bits;
  }

  function renderHeader(run) {
    document.title = `${run.title || run.flow} · Baton`;
    $("run-title").textContent = run.title || run.flow;
    $("run-status-icon").replaceChildren(B.icon(run.status, `big status-${run.status}`));
    const by = D.created_by_name || B.who(run.created_by);
    const meta = [
      B.statusBadge(run.status),
      run.status_reason && run.status_reason !== run.status
        ? B.el("span", { class: "meta-item reason" }, run.status_reason)
        : null,
      B.el("span", { class: "meta-item" }, B.el("span", { class: "muted" }, "flow "), B.el("code", {}, run.flow)),
      run.schedule_id
        ? B.el(
            "span",
            { class: "meta-item schedule", title: `made by schedule ${run.schedule_id}` },
            B.el("span", { class: "muted" }, "scheduled by "),
            B.el("code", {}, run.schedule_id)
          )
        : null,
      run.band ? B.el("span", { class: "meta-item" }, B.el("span", { class: "muted" }, "band "), run.band) : null,
      ...progressBits(run),
      B.el("span", { class: "meta-item" }, B.el("span", { class: "muted" }, "created "), B.timeEl(run.created_at), by ? ` by ${by}` : ""),
      run.started_at
        ? B.el("span", { class: "meta-item" }, B.el("span", { class: "muted" }, "ran "), B.durationEl(run.started_at, run.finished_at))
        : null,
      run.finished_at ? B.el("span", { class: "meta-item" }, B.el("span", { class: "muted" }, "finished "), B.timeEl(run.finished_at)) : null,
      run.cancel_requested && !B.TERMINAL.has(run.status) ? B.el("span", { class: "flag" }, "cancel requested") : null,
      ...engineChips(run),
    ];
    $("run-meta").replaceChildren(...meta.filter(Boolean));
    $("stalled").hidden = !run.stalled;
    const lineage = [];
    if (run.retry_of) lineage.push(B.el("span", {}, "Retry of ", B.el("a", { href: B.runUrl(run.retry_of) }, run.retry_of), ". "));
    if (run.forked_from) {
      lineage.push(B.el("span", {}, "Forked from ", B.el("a", { href: B.runUrl(run.forked_from) }, run.forked_from), ` at ${run.fork_step || "a step"}. `));
    }
    if (S.retriedAs) lineage.push(B.el("span", {}, "Retried as ", B.el("a", { href: B.runUrl(S.retriedAs), id: "retried-link" }, S.retriedAs), "."));
    $("lineage").replaceChildren(...lineage);
    $("lineage").hidden = lineage.length === 0;
    renderActions(run);
  }

  function actionButton(label, cls, handler, attrs) {
    return B.el("button", { type: "button", class: `btn ${cls || ""}`, onclick: handler, ...(attrs || {}) }, label);
  }

  async function transition(action, button) {
    button.disabled = true;
    try {
      const result = await B.api(`${RUN_PATH}/${action}`, { method: "POST", body: { reason: "" } });
      if (action === "retry") {
        location.assign(B.runUrl(result.id));
        return;
      }
      S.run = result;
      render(result);
      B.toast({ confirm: "Confirmed: the run is on its way.", cancel: "Cancel requested.", resume: "Resumed." }[action] || "Done.");
      if (action === "resume" && S.ended) {
        S.ended = false;
        connect();
      }
      B.refreshInboxCount();
    } catch (error) {
      B.toast(error.message, "error");
      refreshSoon();
    } finally {
      button.disabled = false;
    }
  }

  function cancelControl(run) {
    const wrap = B.el("span", { class: "cancel-control" });
    const ask = actionButton(run.cancel_requested ? "Cancelling…" : "Cancel run", "danger-outline", () => {
      wrap.replaceChildren(
        B.el("span", { class: "muted" }, "Cancel this run? "),
        actionButton("Yes, cancel it", "danger", (event) => transition("cancel", event.currentTarget), { "data-action": "cancel-yes" }),
        actionButton("Keep it", "", () => wrap.replaceChildren(ask))
      );
      wrap.querySelector("[data-action=cancel-yes]").focus();
    }, { "data-action": "cancel", disabled: run.cancel_requested || null });
    wrap.append(ask);
    return wrap;
  }

  function exportLinks() {
    const base = `${RUN_PATH}/export`;
    return [
      B.el("a", { class: "btn small", href: `${base}?format=md`, download: `${RUN_ID}.md`, "data-action": "export-md" }, "Export Markdown"),
      B.el("a", { class: "btn small", href: `${base}?format=json`, download: `${RUN_ID}.json`, "data-action": "export-json" }, "Export JSON"),
    ];
  }

  function renderActions(run) {
    const buttons = [];
    if (D.may_act) {
      if (run.status === "needs_confirmation") {
        buttons.push(actionButton("Confirm", "primary", (e) => transition("confirm", e.currentTarget), { "data-action": "confirm" }));
      }
      if (!B.TERMINAL.has(run.status)) buttons.push(cancelControl(run));
      if (run.status === "failed") {
        buttons.push(actionButton("Resume", "primary", (e) => transition("resume", e.currentTarget), { "data-action": "resume", title: "re-run the failed steps; succeeded steps are kept" }));
      }
      if (B.TERMINAL.has(run.status)) {
        buttons.push(actionButton("Retry", run.status === "succeeded" ? "" : "primary", (e) => transition("retry", e.currentTarget), { "data-action": "retry", title: "a new run with the same flow and inputs" }));
      }
    }
    buttons.push(...exportLinks());
    $("run-actions").replaceChildren(...buttons);
    $("report-export").replaceChildren(...exportLinks());
  }

  // --- plan preview ------------------------------------------------------------------------------

  function policyView(policy) {
    const effective = policy.effective || {};
    const layers = policy.layers || {};
    const rows = Object.entries(effective).map(([key, value]) => {
      const setBy = Object.entries(layers)
        .filter(([, layer]) => layer && Object.prototype.hasOwnProperty.call(layer, key))
        .map(([name]) => name);
      let shown = value;
      if (value === null || value === undefined) shown = key === "allowed_engines" ? "any" : "no limit";
      else if (typeof value === "boolean") shown = value ? "yes" : "no";
      else if (Array.isArray(value)) shown = value.join(", ") || "none";
      return [
        B.el("dt", {}, key.replace(/_/g, " ")),
        B.el("dd", {}, String(shown), setBy.length ? B.el("span", { class: "muted" }, ` (set by ${setBy.join(", ")})`) : null),
      ];
    });
    const notices = (policy.overrides || []).map((notice) => B.el("p", { class: "banner warn" }, notice));
    return [B.el("dl", { class: "kv" }, rows), ...notices];
  }

  function renderConfirm(run) {
    const panel = $("confirm-panel");
    panel.hidden = run.status !== "needs_confirmation";
    if (panel.hidden) return;
    $("plan-steps").replaceChildren(
      ...run.steps.map((step) =>
        B.el(
          "li",
          {},
          B.el("strong", {}, step.label || step.key),
          " ",
          B.el("code", {}, step.key),
          B.el("span", { class: `chip kind-${step.kind}` }, step.kind),
          step.needs.length ? B.el("span", { class: "muted" }, ` after ${step.needs.join(", ")}`) : null
        )
      )
    );
    $("policy").replaceChildren(...policyView(run.policy || {}));
    const actions = [];
    if (D.may_act) {
      actions.push(actionButton("Confirm and start", "primary", (e) => transition("confirm", e.currentTarget), { "data-action": "confirm-plan" }));
      actions.push(cancelControl(run));
    } else {
      actions.push(B.el("p", { class: "muted" }, "A project member can confirm or cancel it."));
    }
    $("confirm-actions").replaceChildren(...actions);
  }

  // --- report ------------------------------------------------------------------------------------

  async function renderReport(run) {
    const section = $("report");
    const done = B.TERMINAL.has(run.status) && run.report;
    if (!done) {
      section.hidden = true;
      return;
    }
    const key = `${run.status}:${run.finished_at}`;
    if (S.reportFor === key) return;
    S.reportFor = key;
    try {
      const response = await fetch(`/runs/${encodeURIComponent(RUN_ID)}/report`, { credentials: "same-origin" });
      if (!response.ok) throw new Error(`status ${response.status}`);
      const body = $("report-body");
      body.innerHTML = await response.text(); // sanitized on the server (baton.web.render)
      section.hidden = false;
      // A long report is shown in part, so the steps stay in sight; one click shows it all.
      const long = body.scrollHeight > 640;
      body.classList.toggle("clamped", long);
      $("report-more").hidden = !long;
      $("report-more").setAttribute("aria-expanded", "false");
      $("report-more").textContent = "Show the whole report";
    } catch (error) {
      S.reportFor = null;
      B.toast(`Could not load the report: ${error.message}`, "error");
    }
  }

  // --- roster ------------------------------------------------------------------------------------

  function activeStep(run) {
    const running = run.steps.filter((s) => s.status === "running");
    if (running.length) {
      running.sort((a, b) => Date.parse(b.started_at || 0) - Date.parse(a.started_at || 0));
      return running[0].key;
    }
    const waiting = run.steps.find((s) => s.status === "waiting") || run.pending_inputs.find(() => true);
    if (waiting) return waiting.key || waiting.step_key;
    if (B.TERMINAL.has(run.status)) {
      const failed = run.steps.find((s) => s.status === "failed");
      if (failed) return failed.key;
    }
    const queued = run.steps.find((s) => s.status === "queued");
    return queued ? queued.key : null;
  }

  function stepNode(step) {
    let node = S.stepNodes.get(step.key);
    if (node) return node;
    const bodyId = `step-body-${step.key}`;
    const head = B.el("button", {
      type: "button",
      class: "step-head",
      "aria-expanded": "false",
      "aria-controls": bodyId,
      onclick: () => {
        const opening = S.expanded !== step.key;
        setFollow(false);
        expand(opening ? step.key : null);
      },
    });
    const stream = B.el("pre", { class: "stream", tabindex: "0", "aria-label": `output of ${step.key}`, dataset: { mode: "empty" } });
    const body = B.el(
      "div",
      { class: "step-body", id: bodyId, hidden: true },
      B.el("p", { class: "step-error form-error", hidden: true }),
      B.el("div", { class: "step-ask" }),
      B.el("div", { class: "step-answer", hidden: true }),
      stream
    );
    node = B.el("li", { class: "step", dataset: { key: step.key } }, head, body);
    node._parts = { head, body, stream, error: body.querySelector(".step-error"), ask: body.querySelector(".step-ask"), answer: body.querySelector(".step-answer") };
    S.stepNodes.set(step.key, node);
    return node;
  }

  function fillStream(step, node) {
    const { stream } = node._parts;
    const streamed = S.streams[step.key];
    if (streamed) {
      if (stream.dataset.mode !== "stream") {
        stream.textContent = streamed;
        stream.dataset.mode = "stream";
      }
      return;
    }
    let fallback = "";
    if (step.output_text) fallback = step.output_text;
    else if (step.output !== null && step.output !== undefined && step.kind !== "input") {
      fallback = typeof step.output === "string" ? step.output : JSON.stringify(step.output, null, 2);
    }
    if (!fallback) {
      fallback = { pending: "Not started yet.", queued: "Waiting for a worker…", running: "Working…", skipped: "Skipped." }[step.status] || "";
    }
    stream.textContent = fallback;
    stream.dataset.mode = fallback ? "fallback" : "empty";
  }

  function updateStep(step, run) {
    const node = stepNode(step);
    const { head, error, answer } = node._parts;
    node.dataset.status = step.status;
    node.className = `step step-${step.status}`;
    const engineName = engineOf(step);
    const engine = engineName ? engineChip(engineName) : null;
    const attempt = step.attempt > 1 || (step.max_attempts > 1 && step.status === "failed") ? `attempt ${step.attempt}/${step.max_attempts}` : null;
    head.replaceChildren(
      B.el("span", { class: `dot dot-${step.status}`, title: B.statusLabel(step.status) }, B.icon(step.status)),
      B.el("span", { class: "step-name" }, B.el("span", { class: "step-label" }, step.label || step.key), step.label && step.label !== step.key ? B.el("code", {}, step.key) : null),
      B.el("span", { class: "step-info" },
        B.el("span", { class: "step-status" }, B.statusLabel(step.status)),
        step.kind !== "agent" ? B.el("span", { class: `chip kind-${step.kind}` }, step.kind) : null,
        engine,
        attempt ? B.el("span", { class: "muted" }, attempt) : null,
        step.started_at ? B.durationEl(step.started_at, step.finished_at, { class: "muted" }) : null
      )
    );
    error.textContent = step.error || "";
    error.hidden = !step.error;
    if (step.kind === "input" && step.status === "succeeded" && step.output !== null && step.output !== undefined) {
      answer.replaceChildren(B.el("strong", {}, "Answer: "), B.el("code", {}, JSON.stringify(step.output)));
      answer.hidden = false;
    } else {
      answer.hidden = true;
    }
    renderAsk(step, run, node);
    fillStream(step, node);
    return node;
  }

  function renderAsk(step, run, node) {
    const { ask } = node._parts;
    const request = run.pending_inputs.find((r) => r.step_key === step.key && r.status === "pending");
    if (!request) {
      ask.replaceChildren();
      return;
    }
    if (ask.dataset.request === request.id) return; // keep what the person is typing
    ask.dataset.request = request.id;
    ask.replaceChildren(B.inputForm(request, { mayAct: D.may_act, onAnswered: () => refreshSoon() }));
  }


  function expand(key) {
    S.expanded = key;
    for (const [stepKey, node] of S.stepNodes) {
      const open = stepKey === key;
      node._parts.head.setAttribute("aria-expanded", open ? "true" : "false");
      node._parts.body.hidden = !open;
      node.classList.toggle("expanded", open);
      if (open) {
        const stream = node._parts.stream;
        stream.scrollTop = stream.scrollHeight;
      }
    }
  }

  function setFollow(on) {
    S.follow = on;
    const button = $("follow");
    button.setAttribute("aria-pressed", on ? "true" : "false");
    button.textContent = on ? "Following the active step" : "Follow the active step";
    if (on && S.run) {
      const active = activeStep(S.run);
      if (active) expand(active);
    }
  }

  function renderRoster(run) {
    const roster = $("roster");
    for (const skeleton of roster.querySelectorAll(".skeleton")) skeleton.remove();
    const nodes = run.steps.map((step) => updateStep(step, run));
    const keys = new Set(run.steps.map((s) => s.key));
    for (const [key, node] of S.stepNodes) {
      if (!keys.has(key)) {
        node.remove();
        S.stepNodes.delete(key);
      }
    }
    nodes.forEach((node, i) => {
      if (roster.children[i] !== node) roster.insertBefore(node, roster.children[i] || null);
    });
    const active = activeStep(run);
    if (S.follow && active && active !== S.expanded) expand(active);
    else if (S.expanded === null && !S.follow) expand(null);
    else expand(S.expanded);
    const waiting = run.pending_inputs.length > 0 && D.may_act;
    $("waiting-banner").hidden = !waiting;
  }

  // --- inputs and artifacts ----------------------------------------------------------------------

  function valueNode(value) {
    if (value !== null && typeof value === "object") return B.el("pre", { class: "json" }, JSON.stringify(value, null, 2));
    return B.el("span", {}, String(value));
  }

  function renderInputs(run) {
    const entries = Object.entries(run.inputs || {});
    const rows = entries.map(([key, value]) => [B.el("dt", {}, key), B.el("dd", {}, valueNode(value))]);
    const blocks = [entries.length ? B.el("dl", { class: "kv" }, rows) : B.el("p", { class: "muted" }, "No inputs.")];
    if (run.source && Object.keys(run.source).length) {
      blocks.push(B.el("h3", {}, "Source"), B.el("dl", { class: "kv" }, Object.entries(run.source).map(([k, v]) => [B.el("dt", {}, k), B.el("dd", {}, valueNode(v))])));
    }
    if (run.usage && Object.keys(run.usage).length) {
      blocks.push(B.el("h3", {}, "Token usage"), B.el("dl", { class: "kv" }, Object.entries(run.usage).map(([k, v]) => [B.el("dt", {}, k.replace(/_/g, " ")), B.el("dd", {}, String(v))])));
    }
    $("inputs").replaceChildren(...blocks);
  }

  function formatSize(bytes) {
    if (bytes < 1024) return `${bytes} B`;
    if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
    return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
  }

  async function loadArtifactBody(artifact, holder) {
    if (holder.dataset.loaded) return;
    holder.dataset.loaded = "1";
    try {
      const response = await fetch(`/runs/${encodeURIComponent(RUN_ID)}/artifacts/${encodeURIComponent(artifact.id)}`, {
        credentials: "same-origin",
      });
      if (!response.ok) throw new Error(`status ${response.status}`);
      holder.innerHTML = await response.text(); // rendered and sanitized on the server
    } catch (error) {
      delete holder.dataset.loaded;
      holder.textContent = `Could not show this artifact: ${error.message}`;
    }
  }

  function renderArtifacts(list) {
    const box = $("artifacts");
    if (!list.length) {
      box.replaceChildren(B.el("p", { class: "muted" }, "None yet."));
      return;
    }
    const fresh = list.filter((a) => !S.artifacts.has(a.id));
    // The newest artifact is open; once the report is on top, they all start closed.
    const reportShown = S.run && B.TERMINAL.has(S.run.status) && S.run.report;
    const openByDefault = new Set(reportShown ? [] : [list[list.length - 1].id]);
    for (const artifact of fresh) {
      const holder = B.el("div", { class: "artifact-body" }, B.el("span", { class: "sk sk-title" }));
      const download = B.el(
        "a",
        {
          class: "btn small",
          href: `${RUN_PATH}/artifacts/${encodeURIComponent(artifact.id)}`,
          download: artifact.name,
          title: `download ${artifact.name}`,
        },
        "Download"
      );
      const details = B.el(
        "details",
        { class: "artifact", dataset: { artifact: artifact.name } },
        B.el(
          "summary",
          {},
          B.el("span", { class: "artifact-name" }, artifact.name),
          B.el(
            "span",
            { class: "muted" },
            [artifact.step_key, artifact.attempt ? `attempt ${artifact.attempt}` : null, artifact.media_type, formatSize(artifact.size)]
              .filter(Boolean)
              .join(" · ")
          )
        ),
        B.el("div", { class: "artifact-tools" }, download),
        holder
      );
      details.addEventListener("toggle", () => {
        if (details.open) loadArtifactBody(artifact, holder);
      });
      if (openByDefault.has(artifact.id)) {
        details.open = true;
        loadArtifactBody(artifact, holder);
      }
      S.artifacts.set(artifact.id, details);
    }
    box.replaceChildren(...list.map((a) => S.artifacts.get(a.id)));
  }

  // --- timeline ----------------------------------------------------------------------------------

  function summary(event) {
    const p = event.payload || {};
    if (event.type === "score.updated") {
      return `attempt ${p.attempt}: score ${typeof p.score === "number" ? p.score.toFixed(2) : p.score}${p.passed ? " (passes)" : ""}`;
    }
    if (event.type === "run.retried" && p.new_run_id) return `as ${p.new_run_id}`;
    if (event.type === "artifact.created") return p.name || "";
    for (const key of ["message", "reason", "error", "prompt", "notice", "by", "engine"]) {
      if (p[key]) return String(p[key]);
    }
    return "";
  }

  function addTimeline(event) {
    const list = $("timeline");
    const kind = event.type.split(".")[0];
    const text = summary(event);
    list.append(
      B.el(
        "li",
        { class: `tl tl-${kind} tl-${event.type.replace(/\./g, "-")}`, dataset: { seq: String(event.id), type: event.type } },
        B.el("time", { datetime: event.timestamp, title: B.absTime(event.timestamp) }, B.clock(event.timestamp)),
        B.el(
          "span",
          { class: "tl-body" },
          B.el("span", { class: "tl-type" }, event.type),
          event.payload && event.payload.step_key ? B.el("code", { class: "tl-step" }, event.payload.step_key) : null,
          text ? B.el("span", { class: "tl-text" }, text) : null
        )
      )
    );
    while (list.children.length > TIMELINE_CAP) list.firstElementChild.remove();
    const side = list.parentElement;
    if (side && list.scrollHeight - list.scrollTop - list.clientHeight < 80) list.scrollTop = list.scrollHeight;
  }

  // --- the stream --------------------------------------------------------------------------------

  function appendDelta(key, text) {
    if (!key || !text) return;
    const before = S.streams[key] || "";
    S.streams[key] = (before + text).slice(-STREAM_CAP);
    const node = S.stepNodes.get(key);
    if (!node) return;
    const stream = node._parts.stream;
    const atBottom = stream.scrollHeight - stream.scrollTop - stream.clientHeight < 40;
    if (stream.dataset.mode === "stream" && S.streams[key].length === before.length + text.length) {
      stream.append(text);
    } else {
      stream.textContent = S.streams[key];
      stream.dataset.mode = "stream";
    }
    if (atBottom) stream.scrollTop = stream.scrollHeight;
  }

  function apply(event) {
    const p = event.payload || {};
    if (event.type === "step.delta") {
      appendDelta(p.step_key, p.text);
      return;
    }
    addTimeline(event);
    if (event.type === "log") return;
    if (event.type === "run.retried" && p.new_run_id) S.retriedAs = p.new_run_id;
    if (event.type === "step.engine" && p.step_key && p.engine) S.engines[p.step_key] = String(p.engine);
    if (event.type === "artifact.created") artifactsSoon();
    if (event.type === "step.started" && p.step_key) {
      delete S.streams[p.step_key]; // a new attempt streams afresh
      const node = S.stepNodes.get(p.step_key);
      if (node) node._parts.stream.dataset.mode = "empty";
    }
    if (event.type === "run.resumed" || event.type === "run.started") S.ended = false;
    if (event.type.startsWith("input.") || event.type === "run.confirmed" || B.TERMINAL.has(event.type.slice(4))) {
      B.refreshInboxCount();
    }
    refreshSoon();
  }

  let retryTimer = null;
  function connect() {
    if (S.source) S.source.close();
    clearTimeout(retryTimer);
    // A fresh connection starts after what this page already applied; the browser's own
    // reconnects send Last-Event-ID instead.
    const source = new EventSource(`${RUN_PATH}/stream${S.lastSeq ? `?after=${S.lastSeq}` : ""}`);
    S.source = source;
    source.onopen = () => B.live(true);
    source.onmessage = (message) => {
      const seq = Number(message.lastEventId);
      if (seq && seq <= S.lastSeq) return; // already applied: never twice
      let event;
      try {
        event = JSON.parse(message.data);
      } catch (error) {
        return;
      }
      if (seq) S.lastSeq = seq;
      if (["run.succeeded", "run.failed", "run.cancelled"].includes(event.type)) S.ended = true;
      apply(event);
    };
    source.onerror = () => {
      if (S.ended) {
        // The server ends the stream after the run's last event: nothing more will come.
        source.close();
        S.source = null;
        B.live("done");
        return;
      }
      B.live(false);
      if (source.readyState === EventSource.CLOSED) {
        // Refused rather than dropped (the browser gives up on those): retry from our last id.
        S.source = null;
        retryTimer = setTimeout(connect, 3000);
      }
    };
  }

  // --- page --------------------------------------------------------------------------------------

  function render(run) {
    $("run").setAttribute("aria-busy", "false");
    renderHeader(run);
    renderConfirm(run);
    renderRoster(run);
    renderInputs(run);
    renderReport(run);
  }

  $("follow").addEventListener("click", () => setFollow(!S.follow));
  $("report-more").addEventListener("click", (event) => {
    const open = $("report-body").classList.toggle("clamped") === false;
    event.currentTarget.setAttribute("aria-expanded", open ? "true" : "false");
    event.currentTarget.textContent = open ? "Show less" : "Show the whole report";
  });
  $("waiting-link").addEventListener("click", (event) => {
    event.preventDefault();
    const form = document.querySelector(".ask-form");
    if (!form) return;
    form.scrollIntoView({ block: "center" });
    const first = form.querySelector("input, textarea, select");
    if (first) first.focus();
  });

  (async () => {
    const artifacts = B.api(`${RUN_PATH}/artifacts`).catch(() => []);
    await refresh();
    renderArtifacts(await artifacts);
    connect();
  })();
  window.BatonRun = { state: S }; // for debugging and the browser tests
})();
