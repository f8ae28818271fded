/* The runs list: filters, sort, pagination through the API cursor, live through the project stream. */
(function () {
  "use strict";
  const B = window.Baton;
  const D = B.data;
  const PAGE = 20;
  const list = document.getElementById("runs");
  const form = document.getElementById("filters");
  const state = { runs: [], cursor: null, loaded: false, generation: 0 };

  const STATUS_ORDER = [
    "needs_confirmation",
    "waiting_for_input",
    "running",
    "queued",
    "failed",
    "cancelled",
    "succeeded",
  ];

  function filters() {
    return {
      q: form.q.value.trim(),
      status: form.status.value,
      flow: form.flow.value,
      sort: form.sort.value,
    };
  }

  function restoreFilters() {
    const params = new URLSearchParams(location.search);
    for (const name of ["q", "status", "flow", "sort"]) {
      if (!params.has(name)) continue;
      const value = params.get(name);
      if (name === "flow" && ![...form.flow.options].some((o) => o.value === value)) {
        form.flow.append(B.el("option", { value }, value)); // named properly once the catalog loads
      }
      form[name].value = value;
    }
  }

  function remember() {
    const params = new URLSearchParams(location.search);
    for (const [name, value] of Object.entries(filters())) {
      if (value && !(name === "sort" && value === "newest")) params.set(name, value);
      else params.delete(name);
    }
    const query = params.toString();
    history.replaceState(null, "", location.pathname + (query ? `?${query}` : ""));
  }

  function apiQuery(limit, cursor) {
    const f = filters();
    const params = new URLSearchParams();
    if (D.project) params.set("project_id", D.project);
    if (f.status) params.set("status", f.status);
    if (f.flow) params.set("flow", f.flow);
    if (f.q) params.set("q", f.q);
    params.set("limit", String(limit));
    if (cursor) params.set("cursor", cursor);
    return `/v1/runs?${params}`;
  }

  function older(a, b) {
    // The API's order: newest first by (created_at, id).
    const ta = Date.parse(a.created_at);
    const tb = Date.parse(b.created_at);
    return ta < tb || (ta === tb && a.id < b.id);
  }

  /**
   * `more` appends the next page (the API cursor); `quiet` is a live refresh of what is shown,
   * merged so that older pages loaded meanwhile stay; otherwise the filters changed: start over.
   */
  async function load({ more = false, quiet = false } = {}) {
    const generation = more || quiet ? state.generation : ++state.generation;
    const button = document.getElementById("load-more");
    if (more) {
      button.disabled = true;
      button.textContent = "Loading…";
    } else if (!quiet) {
      list.setAttribute("aria-busy", "true");
    }
    try {
      const limit = quiet ? Math.min(200, Math.max(PAGE, state.runs.length)) : PAGE;
      const page = await B.api(apiQuery(limit, more ? state.cursor : null));
      if (generation !== state.generation) return; // the filters changed meanwhile
      if (more) {
        const known = new Set(state.runs.map((r) => r.id));
        state.runs = state.runs.concat(page.runs.filter((r) => !known.has(r.id)));
        state.cursor = page.next_cursor;
      } else if (quiet && page.runs.length) {
        const fresh = new Set(page.runs.map((r) => r.id));
        const last = page.runs[page.runs.length - 1];
        const tail = state.runs.filter((r) => !fresh.has(r.id) && older(r, last));
        state.runs = page.runs.concat(tail);
        if (!tail.length) state.cursor = page.next_cursor;
      } else {
        state.runs = page.runs;
        state.cursor = page.next_cursor;
      }
      state.loaded = true;
      document.getElementById("runs-error").hidden = true;
      render();
    } catch (error) {
      const box = document.getElementById("runs-error");
      box.textContent = `The runs could not be loaded: ${error.message}`;
      box.hidden = false;
    } finally {
      list.setAttribute("aria-busy", "false");
      button.disabled = false;
      button.textContent = "Load older runs";
    }
  }

  function sorted(runs) {
    const order = filters().sort;
    const copy = runs.slice();
    const created = (r) => Date.parse(r.created_at);
    const length = (r) => (r.started_at ? (r.finished_at ? Date.parse(r.finished_at) : Date.now()) - Date.parse(r.started_at) : -1);
    if (order === "oldest") copy.sort((a, b) => created(a) - created(b));
    else if (order === "longest") copy.sort((a, b) => length(b) - length(a));
    else if (order === "status")
      copy.sort((a, b) => STATUS_ORDER.indexOf(a.status) - STATUS_ORDER.indexOf(b.status) || created(b) - created(a));
    else if (order === "title") copy.sort((a, b) => (a.title || a.flow).localeCompare(b.title || b.flow));
    return copy;
  }

  function progressOf(run) {
    const p = run.progress || {};
    const parts = [];
    if (p.stage && p.stage !== "done" && !B.TERMINAL.has(run.status)) parts.push(B.el("span", { class: "stage" }, p.stage));
    const attempt = p.current_attempt || p.attempt;
    if (attempt && p.max_attempts) parts.push(B.el("span", { class: "attempt" }, `attempt ${attempt}/${p.max_attempts}`));
    if (typeof p.score === "number") {
      const passed = typeof p.pass_threshold === "number" ? p.score >= p.pass_threshold : null;
      parts.push(
        B.el(
          "span",
          { class: `score ${passed === true ? "pass" : passed === false ? "below" : ""}`, title: p.pass_threshold !== undefined ? `pass at ${p.pass_threshold}` : null },
          `score ${p.score.toFixed(2)}`
        )
      );
    }
    return parts;
  }

  function row(run) {
    const flags = [];
    if (run.stalled) flags.push(B.el("span", { class: "flag warn", title: "running, but no step has sent a heartbeat for the stall threshold" }, B.icon("warn"), "stalled"));
    if (run.cancel_requested && !B.TERMINAL.has(run.status)) flags.push(B.el("span", { class: "flag" }, "cancelling"));
    if (run.retry_of) flags.push(B.el("span", { class: "flag muted" }, "retry"));
    if (run.schedule_id) flags.push(B.el("span", { class: "flag muted", title: `made by schedule ${run.schedule_id}` }, "scheduled"));
    const by = B.who(run.created_by);
    return B.el(
      "li",
      { class: `run-row status-row-${run.status}`, dataset: { runId: run.id, status: run.status } },
      B.el(
        "a",
        { class: "run-link", href: B.runUrl(run.id) },
        B.el("span", { class: "cell cell-status" }, B.statusBadge(run.status)),
        B.el(
          "span",
          { class: "cell cell-main" },
          B.el("span", { class: "run-title" }, run.title || run.flow),
          B.el(
            "span",
            { class: "run-sub" },
            B.el("code", { class: "flow" }, run.flow),
            run.band ? B.el("span", {}, run.band) : null,
            by ? B.el("span", { class: "by" }, `by ${by}`) : null,
            flags
          )
        ),
        B.el("span", { class: "cell cell-progress" }, progressOf(run)),
        B.el("span", { class: "cell cell-duration" }, B.durationEl(run.started_at, run.finished_at)),
        B.el("span", { class: "cell cell-when" }, B.timeEl(run.created_at))
      )
    );
  }

  function render() {
    const f = filters();
    const filtered = Boolean(f.q || f.status || f.flow);
    const previous = new Map([...list.querySelectorAll("[data-run-id]")].map((li) => [li.dataset.runId, li.dataset.status]));
    const rows = sorted(state.runs).map(row);
    for (const li of rows) {
      const before = previous.get(li.dataset.runId);
      if (previous.size && before !== li.dataset.status) li.classList.add("changed");
    }
    list.replaceChildren(...rows);
    list.hidden = rows.length === 0;
    document.querySelector(".runs-head").hidden = rows.length === 0;
    document.getElementById("runs-empty").hidden = !(state.loaded && !rows.length && !filtered);
    document.getElementById("runs-nomatch").hidden = !(state.loaded && !rows.length && filtered);
    document.getElementById("load-more").hidden = !state.cursor;
  }

  let refreshTimer = null;
  function refreshSoon() {
    clearTimeout(refreshTimer);
    refreshTimer = setTimeout(() => load({ quiet: true }), 300);
  }

  function connect() {
    const params = new URLSearchParams();
    if (D.project) params.set("project_id", D.project);
    // Start where the page was rendered (a reconnect sends Last-Event-ID, which wins over it).
    if (D.stream_from) params.set("after", D.stream_from);
    const source = new EventSource(`/v1/stream?${params}`);
    source.onopen = () => B.live(true);
    source.onmessage = (message) => {
      let event;
      try {
        event = JSON.parse(message.data);
      } catch (error) {
        return;
      }
      if (event.type === "log") return;
      refreshSoon();
      if (event.type.startsWith("input.") || event.type === "run.created" || B.TERMINAL.has(event.type.slice(4))) {
        B.refreshInboxCount();
      }
    };
    source.onerror = () => {
      B.live(false);
      if (source.readyState === EventSource.CLOSED) {
        setTimeout(connect, 3000); // refused (not a dropped line): try again from scratch
      }
    };
  }

  async function fillFlows() {
    try {
      const flows = await B.flows();
      const select = form.flow;
      const chosen = select.value;
      for (const flow of flows) {
        const label = flow.title ? `${flow.title} (${flow.name})` : flow.name;
        const existing = [...select.options].find((o) => o.value === flow.name);
        if (existing) existing.textContent = label;
        else select.append(B.el("option", { value: flow.name }, label));
      }
      select.value = chosen;
    } catch (error) {
      /* the list still works without the flow filter's names */
    }
  }

  let typing = null;
  form.addEventListener("submit", (event) => event.preventDefault());
  form.q.addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(() => {
      remember();
      load();
    }, 250);
  });
  for (const name of ["status", "flow"]) {
    form[name].addEventListener("change", () => {
      remember();
      load();
    });
  }
  form.sort.addEventListener("change", () => {
    remember();
    render();
  });
  document.getElementById("load-more").addEventListener("click", () => load({ more: true }));
  document.getElementById("clear-filters").addEventListener("click", () => {
    form.q.value = "";
    form.status.value = "";
    form.flow.value = "";
    remember();
    load();
  });

  restoreFilters();
  fillFlows();
  load();
  connect();
})();
