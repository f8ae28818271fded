/* Workers: each process, its host, in-flight steps and last heartbeat, refreshed every 5 s. */
(function () {
  "use strict";
  const B = window.Baton;
  const body = document.getElementById("workers");
  const SILENT_AFTER_S = 60;

  function state(worker) {
    if (worker.stopped_at) return ["stopped", "stopped", "cancelled"];
    if (worker.heartbeat_age_s > SILENT_AFTER_S) return ["silent", "no heartbeat for a while", "failed"];
    return ["alive", "alive", "succeeded"];
  }

  /** A cell with one child, so the phone layout (label, then value) stays two columns. */
  function cell(label, ...children) {
    return B.el("td", { "data-label": label }, B.el("div", {}, children));
  }

  function row(worker) {
    const [name, label, iconName] = state(worker);
    const steps = worker.steps.map((s) =>
      B.el("li", {}, B.el("a", { href: B.runUrl(s.run_id) }, s.run_id), " ", B.el("code", {}, s.step_key), s.attempt > 1 ? ` (attempt ${s.attempt})` : "")
    );
    return B.el(
      "tr",
      { class: `worker worker-${name}`, dataset: { worker: worker.id } },
      cell("State", B.el("span", { class: `status status-${iconName}` }, B.icon(iconName), B.el("span", {}, label))),
      cell("Worker", B.el("code", {}, worker.id)),
      cell("Host", worker.host, B.el("span", { class: "muted" }, ` pid ${worker.pid}`)),
      cell(
        "In flight",
        `${worker.stopped_at ? 0 : worker.in_flight} of ${worker.concurrency}`,
        steps.length ? B.el("ul", { class: "inflight" }, steps) : null
      ),
      cell("Last heartbeat", worker.stopped_at ? B.el("span", { class: "muted" }, "–") : B.timeEl(worker.heartbeat_at)),
      cell("Started", B.timeEl(worker.started_at))
    );
  }

  async function load() {
    try {
      const workers = await B.api("/v1/workers");
      body.replaceChildren(...workers.map(row));
      body.setAttribute("aria-busy", "false");
      document.getElementById("workers-empty").hidden = workers.length > 0;
    } catch (error) {
      B.toast(`The workers could not be loaded: ${error.message}`, "error");
    }
  }

  load();
  setInterval(load, 5000);
})();
