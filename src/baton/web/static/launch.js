/* The launch dialog, reachable from every page: flow catalog by category, band, inputs form,
   the skip-confirmation toggle where the policy allows it. Needs baton.js and forms.js. */
(function () {
  "use strict";
  const B = window.Baton;
  const DATA = B.data;
  const { el, api, flows, runUrl, schemaForm } = B;

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

  B.openLaunch = openLaunch;
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", setUpLaunch);
  else setUpLaunch();
})();
