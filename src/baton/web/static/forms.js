/* Forms generated from JSON Schema (launch inputs, answers to input requests), with inline
   validation; and the form that answers a pending input request. Needs baton.js. */
(function () {
  "use strict";
  const B = window.Baton;
  const { el, api, toast } = B;

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
        B.refreshInboxCount();
      } catch (failure) {
        fields.showProblems(failure.problem.errors);
        error.textContent = failure.message;
        error.hidden = false;
        submit.disabled = false;
      }
    });
    return form;
  }

  B.schemaForm = schemaForm;
  B.inputForm = inputForm;
})();
