// The console's little JavaScript: live refresh, labels, rules and lists.
// Writes go to the API with the session cookie; the API records the signed-in key's name as their author.
"use strict";

const body = document.body;
const BASE = body.dataset.base;
const ROOT = body.dataset.root;
function flash(message, kind) {
  const box = document.getElementById("flash");
  box.textContent = message;
  box.className = kind || "ok";
  box.hidden = false;
}

function describeError(status, data) {
  const detail = data && data.detail;
  if (Array.isArray(detail)) {
    return detail.map((e) => `${(e.loc || []).slice(1).join(".") || "body"}: ${e.msg}`).join("; ");
  }
  return detail ? String(detail) : `HTTP ${status}`;
}

// A JSON request to the API; resolves to the answer's JSON, or throws an Error saying what failed.
async function call(method, path, payload) {
  const headers = { Accept: "application/json" };
  if (payload !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(ROOT + path, {
    method,
    headers,
    body: payload === undefined ? undefined : JSON.stringify(payload),
    credentials: "same-origin",
  });
  const text = await resp.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch (_) {
    data = { detail: text.slice(0, 300) };
  }
  if (!resp.ok) throw new Error(describeError(resp.status, data));
  return data;
}

// A form's named control (form.id, form.action and the like would be the form's own properties).
function field(form, name) {
  return form.elements.namedItem(name);
}

function isoOrNull(local) {
  return local ? new Date(local).toISOString() : null;
}

// --- live: the section reloads itself ------------------------------------------------------------
(function refreshLive() {
  const section = document.querySelector("[data-refresh]");
  if (!section) return;
  const stamp = () => section.querySelectorAll(".js-now").forEach((el) => (el.textContent = new Date().toLocaleTimeString()));
  stamp();
  setInterval(async () => {
    try {
      const resp = await fetch(section.dataset.refresh, { credentials: "same-origin" });
      if (resp.ok) {
        section.innerHTML = await resp.text(); // server-rendered and escaped by the templates
        stamp();
      }
    } catch (_) {
      /* the next tick tries again */
    }
  }, 2000);
})();

// --- a review case: fraud or genuine --------------------------------------------------------------
(function labelButtons() {
  const box = document.getElementById("verdict");
  if (!box) return;
  box.querySelectorAll("button[data-label]").forEach((button) =>
    button.addEventListener("click", async () => {
      const isFraud = button.dataset.label === "true";
      box.querySelectorAll("button").forEach((b) => (b.disabled = true));
      try {
        const out = await call("POST", "/console/review/label", { transaction_id: box.dataset.tx, is_fraud: isFraud });
        const p = out.published;
        flash(
          `Labelled ${isFraud ? "fraud" : "genuine"} by ${out.label.labelled_by} at ${out.label.labelled_at}: ` +
            `${p.topic} partition ${p.partition} offset ${p.offset}.`,
          "ok"
        );
        box.classList.add("done");
        box.dataset.labelled = isFraud ? "fraud" : "genuine";
        const next = document.createElement("a");
        next.id = "next-case";
        next.href = out.next_case ? `${BASE}/review/case?id=${encodeURIComponent(out.next_case)}` : `${BASE}/review`;
        next.textContent = out.next_case ? "Next case →" : "Back to the queue";
        box.appendChild(next);
      } catch (err) {
        flash(`The label was not published: ${err.message}`, "error");
        box.querySelectorAll("button").forEach((b) => (b.disabled = false));
      }
    })
  );
})();

// --- rules ---------------------------------------------------------------------------------------
function ruleBody(form) {
  return {
    expression: field(form, "expression").value.trim(),
    action: field(form, "action").value,
    mode: field(form, "mode").value,
    description: field(form, "description").value.trim(),
    enabled: field(form, "enabled").checked,
  };
}

async function saved(promise, message) {
  try {
    await promise;
    flash(message, "ok");
    setTimeout(() => location.reload(), 400);
  } catch (err) {
    flash(err.message, "error");
  }
}

(function rules() {
  const form = document.getElementById("rule-form");
  if (!form) return;
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const id = field(form, "id").value.trim();
    saved(call("PUT", `/admin/rules/${encodeURIComponent(id)}`, ruleBody(form)), `Rule ${id} saved.`);
  });
  form.addEventListener("reset", () => {
    field(form, "id").readOnly = false;
    document.getElementById("rule-form-title").textContent = "Add a rule";
  });
  document.getElementById("rule-backtest").addEventListener("click", () => {
    const target = document.getElementById("bt-expression");
    if (!target) {
      flash("Backtests need FRAUD_BACKTEST_DATA (see below).", "error");
      return;
    }
    target.value = field(form, "expression").value;
    document.getElementById("backtest-form").requestSubmit();
  });
  document.querySelectorAll("#rules tr[data-rule]").forEach((row) => {
    const rule = JSON.parse(row.dataset.rule);
    row.querySelector('[data-act="edit"]').addEventListener("click", () => {
      field(form, "id").value = rule.id;
      field(form, "id").readOnly = true;
      field(form, "expression").value = rule.expression;
      field(form, "action").value = rule.action;
      field(form, "mode").value = rule.mode;
      field(form, "description").value = rule.description;
      field(form, "enabled").checked = rule.enabled;
      document.getElementById("rule-form-title").textContent = `Edit rule ${rule.id}`;
      form.scrollIntoView({ behavior: "smooth" });
    });
    row.querySelector('[data-act="toggle"]').addEventListener("click", () => {
      const { id, ...rest } = rule;
      const next = { ...rest, enabled: !rule.enabled };
      saved(call("PUT", `/admin/rules/${encodeURIComponent(id)}`, next), `Rule ${id} ${next.enabled ? "enabled" : "disabled"}.`);
    });
    row.querySelector('[data-act="delete"]').addEventListener("click", () => {
      if (!confirm(`Delete rule ${rule.id}?`)) return;
      saved(call("DELETE", `/admin/rules/${encodeURIComponent(rule.id)}`), `Rule ${rule.id} deleted.`);
    });
  });
})();

(function backtest() {
  const form = document.getElementById("backtest-form");
  if (!form) return;
  const out = document.getElementById("backtest-result");
  const rows = [
    ["rows", "Transactions tested"],
    ["hits", "Hits"],
    ["share_of_traffic", "Share of traffic", "pct"],
    ["frauds", "Frauds in the range"],
    ["frauds_caught", "Frauds hit"],
    ["precision", "Precision", "ratio"],
    ["recall", "Recall", "ratio"],
    ["frauds_caught_model_missed", "Frauds hit that the model allowed"],
    ["genuine_hit", "Genuine transactions hit"],
    ["genuine_hit_model_allowed", "Genuine hit that the model allowed"],
    ["model_version", "Model"],
  ];
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    out.textContent = "Running the backtest …";
    try {
      const report = await call("POST", "/admin/rules/backtest", {
        expression: field(form, "expression").value.trim(),
        start: isoOrNull(field(form, "start").value),
        end: isoOrNull(field(form, "end").value),
      });
      const table = document.createElement("table");
      table.id = "backtest-table";
      for (const [key, label, kind] of rows) {
        const tr = table.insertRow();
        tr.insertCell().textContent = label;
        const value = report[key];
        const cell = tr.insertCell();
        cell.className = "n";
        if (value === null || value === undefined) cell.textContent = "-";
        else if (kind === "pct") cell.textContent = `${(100 * value).toFixed(2)}%`;
        else if (kind === "ratio") cell.textContent = value.toFixed(3);
        else cell.textContent = typeof value === "number" ? value.toLocaleString() : String(value);
      }
      out.replaceChildren(table);
    } catch (err) {
      out.textContent = "";
      flash(`Backtest failed: ${err.message}`, "error");
    }
  });
})();

// --- allow and block lists -----------------------------------------------------------------------
(function lists() {
  const form = document.getElementById("entry-form");
  if (!form) return;
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const path = ["", "admin", "lists", field(form, "list").value, field(form, "kind").value, field(form, "value").value.trim()]
      .map(encodeURIComponent)
      .join("/");
    const payload = { note: field(form, "note").value.trim(), expires_at: isoOrNull(field(form, "expires_at").value) };
    saved(call("PUT", path, payload), `${field(form, "value").value.trim()} added to the ${field(form, "list").value} list.`);
  });
  document.querySelectorAll("#entries tr[data-list]").forEach((row) => {
    row.querySelector('[data-act="remove"]').addEventListener("click", () => {
      const { list, kind, value } = row.dataset;
      if (!confirm(`Remove ${value} from the ${list} list?`)) return;
      const path = ["", "admin", "lists", list, kind, value].map(encodeURIComponent).join("/");
      saved(call("DELETE", path), `${value} removed from the ${list} list.`);
    });
  });
})();
