// The admin console's only script (the CSP allows no inline one): the Events page's live tail.
// Events arrive from the console's own relay (/events/stream) as plain SSE messages whose data is
// the event's JSON; each becomes a row at the top of the table, built with DOM calls (never HTML
// from the stream). The browser's EventSource reconnects by itself with Last-Event-ID.
(function () {
  "use strict";

  var UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
  var MAX_ROWS = 500;

  function pad(n) {
    return n < 10 ? "0" + n : String(n);
  }

  function when(text) {
    var moment = new Date(text);
    if (isNaN(moment.getTime())) return text || "";
    return moment.getUTCFullYear() + "-" + pad(moment.getUTCMonth() + 1) + "-" + pad(moment.getUTCDate()) +
      " " + pad(moment.getUTCHours()) + ":" + pad(moment.getUTCMinutes()) + ":" + pad(moment.getUTCSeconds()) + " UTC";
  }

  function cell(row, build) {
    var td = document.createElement("td");
    build(td);
    row.appendChild(td);
  }

  function code(text, className) {
    var element = document.createElement("code");
    if (className) element.className = className;
    element.textContent = text;
    return element;
  }

  function link(base, id) {
    if (!id || !UUID.test(id)) return null;
    var a = document.createElement("a");
    a.href = base + id;
    a.appendChild(code(id.slice(0, 8)));
    return a;
  }

  function compact(payload) {
    var text = JSON.stringify(payload === undefined ? {} : payload);
    return text.length <= 300 ? text : text.slice(0, 299) + "\u2026";
  }

  function row(event) {
    var tr = document.createElement("tr");
    tr.id = "event-" + event.seq;
    tr.dataset.type = event.type;
    tr.className = "fresh";
    cell(tr, function (td) { td.textContent = String(event.seq); });
    cell(tr, function (td) { td.appendChild(code(event.type)); });
    cell(tr, function (td) { td.textContent = when(event.occurred_at); });
    cell(tr, function (td) { var a = link("/users/", event.user_id); if (a) td.appendChild(a); });
    cell(tr, function (td) { var a = link("/tenants/", event.tenant_id); if (a) td.appendChild(a); });
    cell(tr, function (td) { td.appendChild(code(compact(event.payload), "payload")); });
    return tr;
  }

  function startLiveTail() {
    var status = document.getElementById("live-status");
    var rows = document.getElementById("event-rows");
    if (!status || !rows || !window.EventSource) return;
    var source = new EventSource(status.dataset.stream);
    function say(text, state) {
      status.textContent = text;
      status.dataset.state = state;
    }
    source.onopen = function () { say("Live: connected", "open"); };
    source.onmessage = function (message) {
      var event;
      try { event = JSON.parse(message.data); } catch (e) { return; }
      if (typeof event.seq !== "number" || document.getElementById("event-" + event.seq)) return;
      rows.insertBefore(row(event), rows.firstChild);
      var empty = document.getElementById("no-events");
      if (empty) empty.remove();
      while (rows.children.length > MAX_ROWS) rows.removeChild(rows.lastChild);
    };
    source.addEventListener("signed-out", function () {
      source.close();
      say("Live: your session was signed out. Sign in again to keep watching.", "closed");
    });
    source.onerror = function () {
      if (source.readyState === EventSource.CLOSED) {
        say("Live: disconnected. Reload the page to reconnect.", "closed");
      } else {
        say("Live: reconnecting\u2026", "connecting");
      }
    };
    window.addEventListener("pagehide", function () { source.close(); });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", startLiveTail);
  } else {
    startLiveTail();
  }
})();
