// Baton console: live updates over Server-Sent Events, countdowns, and the
// time slider. Works without it: every page is complete server-rendered HTML.
(function () {
  "use strict";
  function fmt(ms) {
    if (ms <= 0) return "passed";
    var s = Math.floor(ms / 1000), h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
    return (h > 0 ? h + " h " : "") + m + " min " + (s % 60) + " s";
  }
  function tick() {
    var now = Date.now();
    document.querySelectorAll("[data-deadline]").forEach(function (el) {
      var left = Number(el.getAttribute("data-deadline")) - now;
      el.textContent = fmt(left);
      el.title = el.getAttribute("datetime");
    });
  }
  tick();
  setInterval(tick, 1000);

  // Live thread rows and the thread page's state.
  var status = document.querySelector("[data-live-status]");
  if (window.EventSource && (document.querySelector("[data-live]") || document.querySelector("[data-live-thread]"))) {
    var source = new EventSource("/console/live");
    source.onopen = function () { if (status) status.textContent = "Live: updates appear as they happen."; };
    source.onerror = function () { if (status) status.textContent = "Live updates interrupted; reconnecting…"; };
    source.addEventListener("thread", function (e) {
      var d = JSON.parse(e.data);
      document.querySelectorAll('tr[data-thread="' + d.thread + '"]').forEach(function (row) {
        set(row, "state", d.state);
        set(row, "owner", d.owner || "—");
        var w = row.querySelector('[data-field="window"]');
        if (w) {
          w.innerHTML = "";
          if (d.window_closes_at) {
            var t = document.createElement("time");
            t.className = "countdown";
            t.setAttribute("datetime", d.window_closes_at_text);
            t.setAttribute("data-deadline", d.window_closes_at);
            w.appendChild(t);
          } else { w.textContent = "—"; }
        }
        set(row, "activity", d.last_activity || "—");
        row.classList.remove("flash"); void row.offsetWidth; row.classList.add("flash");
      });
      var panel = document.querySelector('[data-live-thread="' + d.thread + '"]');
      if (panel && !slid) { refreshState(null); }
      tick();
    });
  }
  function set(row, field, text) {
    var cell = row.querySelector('[data-field="' + field + '"]');
    if (cell) cell.textContent = text;
  }

  // The time slider: the state at the chosen time, without a reload.
  var slider = document.querySelector("form.slider");
  var slid = false;
  function refreshState(at) {
    if (!slider) return;
    var url = slider.getAttribute("data-state-url") + (at === null ? "" : "?at=" + at);
    fetch(url, { credentials: "same-origin" }).then(function (r) { return r.ok ? r.text() : null; }).then(function (html) {
      if (!html) return;
      var panel = document.querySelector("[data-live-thread]");
      if (panel) panel.innerHTML = html;
    });
  }
  if (slider) {
    var input = slider.querySelector('input[type="range"]');
    var label = slider.querySelector("output");
    var items = document.querySelectorAll("ol.timeline li[data-time]");
    function mark(at) {
      items.forEach(function (li) { li.classList.toggle("later", Number(li.getAttribute("data-time")) > at); });
    }
    input.addEventListener("input", function () {
      var at = Number(input.value);
      slid = true;
      var text = new Date(at).toISOString();
      label.textContent = text;
      input.setAttribute("aria-valuetext", text);
      mark(at);
      refreshState(at);
    });
    mark(Number(input.value));
  }
})();
