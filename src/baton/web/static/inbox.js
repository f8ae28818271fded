/* The inbox: plans to confirm and questions to answer across the viewer's projects, live. */
(function () {
  "use strict";
  const B = window.Baton;
  const confirmations = document.getElementById("confirmations");
  const questions = document.getElementById("questions");
  const runs = new Map(); // run id -> promise of the run (titles, plan steps)
  const cards = new Map(); // item key -> card, kept across refreshes so typing survives

  function runOf(id) {
    if (!runs.has(id)) {
      runs.set(
        id,
        B.api(`/v1/runs/${encodeURIComponent(id)}`).catch((error) => {
          runs.delete(id);
          throw error;
        })
      );
    }
    return runs.get(id);
  }

  function projectName(id) {
    if (!id) return "no project";
    const found = (B.data.projects || []).find((p) => p.id === id);
    return found ? found.name || found.id : id;
  }

  function runLine(run) {
    return B.el(
      "p",
      { class: "inbox-run" },
      B.el("a", { href: B.runUrl(run.id) }, run.title || run.flow),
      " ",
      B.el("code", {}, run.flow),
      B.el("span", { class: "muted" }, ` · ${projectName(run.project_id)} · `),
      B.timeEl(run.created_at)
    );
  }

  function removeCard(key, message) {
    const card = cards.get(key);
    if (!card) return;
    cards.delete(key);
    card.remove();
    if (message) B.toast(message);
    counts();
  }

  function confirmationCard(run) {
    const actions = B.el("div", { class: "run-actions" });
    const act = async (action, button) => {
      button.disabled = true;
      try {
        await B.api(`/v1/runs/${encodeURIComponent(run.id)}/${action}`, { method: "POST", body: { reason: "" } });
        runs.delete(run.id);
        removeCard(`run:${run.id}`, action === "confirm" ? "Confirmed: the run is on its way." : "Run cancelled.");
        B.refreshInboxCount();
        load();
      } catch (error) {
        B.toast(error.message, "error");
        button.disabled = false;
      }
    };
    if (B.mayAct(run)) {
      actions.append(
        B.el("button", { type: "button", class: "btn primary", "data-action": "confirm", onclick: (e) => act("confirm", e.currentTarget) }, "Confirm"),
        B.el("button", { type: "button", class: "btn danger-outline", "data-action": "cancel", onclick: (e) => act("cancel", e.currentTarget) }, "Cancel run")
      );
    } else {
      actions.append(B.el("p", { class: "muted" }, "A project member can confirm it."));
    }
    const steps = (run.steps || []).map((s) => B.el("span", { class: `chip kind-${s.kind}` }, s.label || s.key));
    return B.el(
      "li",
      { class: "card inbox-item", dataset: { run: run.id, kind: "confirmation" } },
      B.el("div", { class: "inbox-kind" }, B.statusBadge("needs_confirmation", "plan to confirm")),
      runLine(run),
      steps.length ? B.el("p", { class: "chips" }, B.el("span", { class: "muted" }, "Will run: "), steps) : null,
      actions
    );
  }

  function questionCard(request, run) {
    const key = `input:${request.id}`;
    return B.el(
      "li",
      { class: "card inbox-item", dataset: { request: request.id, kind: "question" } },
      B.el("div", { class: "inbox-kind" }, B.statusBadge("waiting_for_input", "question"), " ", B.el("code", {}, request.step_key)),
      runLine(run),
      B.inputForm(request, {
        mayAct: B.mayAct(run),
        onAnswered: () => {
          runs.delete(run.id);
          removeCard(key);
          load();
        },
      })
    );
  }

  function counts() {
    const c = confirmations.querySelectorAll(".inbox-item").length;
    const q = questions.querySelectorAll(".inbox-item").length;
    document.getElementById("confirm-count").textContent = String(c);
    document.getElementById("question-count").textContent = String(q);
    document.getElementById("inbox-empty").hidden = c + q > 0;
    for (const [list, n, text] of [
      [confirmations, c, "No plan is waiting for a go-ahead."],
      [questions, q, "No run is waiting for an answer."],
    ]) {
      let note = list.querySelector(".none");
      if (n === 0 && !note) list.append(B.el("li", { class: "none muted" }, text));
      if (n > 0 && note) note.remove();
    }
  }

  let loading = null;
  async function load() {
    if (loading) return loading;
    loading = (async () => {
      try {
        const [waiting, requests] = await Promise.all([
          B.api("/v1/runs?status=needs_confirmation&limit=100"),
          B.api("/v1/inputs?status=pending"),
        ]);
        const wanted = new Map();
        const confirmRuns = await Promise.all(waiting.runs.map((r) => runOf(r.id).catch(() => null)));
        for (const run of confirmRuns) {
          if (run && run.status === "needs_confirmation") wanted.set(`run:${run.id}`, () => confirmationCard(run));
        }
        const askRuns = await Promise.all(requests.map((r) => runOf(r.run_id).catch(() => null)));
        requests.forEach((request, i) => {
          if (askRuns[i]) wanted.set(`input:${request.id}`, () => questionCard(request, askRuns[i]));
        });
        for (const key of [...cards.keys()]) if (!wanted.has(key)) removeCard(key);
        for (const [key, make] of wanted) {
          if (cards.has(key)) continue;
          const card = make();
          cards.set(key, card);
          (key.startsWith("run:") ? confirmations : questions).append(card);
        }
        for (const skeleton of document.querySelectorAll(".inbox .skeleton")) skeleton.remove();
        confirmations.setAttribute("aria-busy", "false");
        questions.setAttribute("aria-busy", "false");
        counts();
      } catch (error) {
        B.toast(`The inbox could not be loaded: ${error.message}`, "error");
      } finally {
        loading = null;
      }
    })();
    return loading;
  }

  let timer = null;
  function loadSoon() {
    clearTimeout(timer);
    timer = setTimeout(() => {
      runs.clear();
      load();
    }, 300);
  }

  function connect() {
    const after = B.data.stream_from ? `?after=${encodeURIComponent(B.data.stream_from)}` : "";
    const source = new EventSource(`/v1/stream${after}`);
    source.onopen = () => B.live(true);
    source.onmessage = (message) => {
      let event;
      try {
        event = JSON.parse(message.data);
      } catch (error) {
        return;
      }
      if (/^(input\.|run\.(created|confirmed|cancelled|succeeded|failed|waiting|started))/.test(event.type)) {
        loadSoon();
        B.refreshInboxCount();
      }
    };
    source.onerror = () => {
      B.live(false);
      if (source.readyState === EventSource.CLOSED) setTimeout(connect, 3000);
    };
  }

  load();
  connect();
})();
