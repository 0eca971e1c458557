// The dashboard's only script: every few seconds, /status into the [data-field] elements and /history into
// the charts. Formatting matches the server's first render (dashboard.rs: `format`).
"use strict";
(function () {
  var EVERY_MS = 4000;
  var NS = "http://www.w3.org/2000/svg";

  function format(v) {
    if (v === null || v === undefined) return "\u2014";
    if (v === true) return "yes";
    if (v === false) return "no";
    if (Array.isArray(v)) return v.length ? v.join(", ") : "none";
    return String(v);
  }

  function showStatus(s) {
    var els = document.querySelectorAll("[data-field]");
    for (var i = 0; i < els.length; i++) {
      var el = els[i], name = el.getAttribute("data-field");
      if (!(name in s)) continue;
      var text = format(s[name]);
      if (el.textContent !== text) el.textContent = text;
      if (el.hasAttribute("data-value")) el.setAttribute("data-value", JSON.stringify(s[name]));
    }
  }

  function node(tag, attrs) {
    var el = document.createElementNS(NS, tag);
    for (var k in attrs) el.setAttribute(k, attrs[k]);
    return el;
  }

  function chart(svg, cycles, key, line) {
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    var W = 600, H = 110, top = 14, n = cycles.length;
    if (!n) { var t = node("text", { x: 6, y: 60 }); t.textContent = "no cycle yet"; svg.appendChild(t); return; }
    var max = 0;
    cycles.forEach(function (c) { max = Math.max(max, c[key]); });
    var step = W / Math.max(n, 1), scale = max > 0 ? (H - top - 2) / max : 0, pts = [];
    cycles.forEach(function (c, i) {
      var x = i * step, h = c[key] * scale;
      if (!c.success) svg.appendChild(node("rect", { "class": "f", x: x, y: 0, width: Math.max(step, 1.5), height: H }));
      if (line) pts.push((x + step / 2).toFixed(1) + "," + (H - 1 - h).toFixed(1));
      else if (h > 0) svg.appendChild(node("rect", { "class": "v", x: x, y: H - h, width: Math.max(step - 0.5, 0.8), height: h }));
    });
    if (line) svg.appendChild(node("polyline", { "class": "v", points: pts.join(" ") }));
    var label = node("text", { x: 4, y: 11 });
    label.textContent = "max " + max + " \u00b7 " + n + " cycles";
    svg.appendChild(label);
  }

  function showHistory(cycles) {
    chart(document.getElementById("chart-queueSize"), cycles, "queueSize", true);
    chart(document.getElementById("chart-recordsUploaded"), cycles, "recordsUploaded", false);
    chart(document.getElementById("chart-durationMs"), cycles, "durationMs", false);
    var failed = cycles.filter(function (c) { return !c.success; }).length;
    var range = document.getElementById("range");
    range.textContent = cycles.length
      ? cycles.length + " cycles from " + cycles[0].timestamp + " to " + cycles[cycles.length - 1].timestamp + ", " + failed + " failed"
      : "No cycle has run yet.";
  }

  function get(path) {
    return fetch(path, { cache: "no-store" }).then(function (r) {
      if (!r.ok) throw new Error(path + ": HTTP " + r.status);
      return r.json();
    });
  }

  function refresh() {
    var updated = document.getElementById("updated");
    Promise.all([get("/status"), get("/history")]).then(function (got) {
      showStatus(got[0]);
      showHistory(got[1]);
      document.body.setAttribute("data-refreshed", new Date().toISOString());
      updated.textContent = "updated " + new Date().toLocaleTimeString();
    }).catch(function (e) {
      updated.textContent = "not updated: " + e.message;
    });
  }

  refresh();
  setInterval(refresh, EVERY_MS);
})();
