// Hyperdrive dashboard: live updates without a library. The page names its event stream
// (main[data-live]); on each event it fetches itself again and swaps in the regions marked
// data-region, keeping focus and a followed log's scroll. No event data is put in the page.
(function () {
  "use strict";
  var main = document.querySelector("main[data-live]");
  var status = document.getElementById("live-status");
  if (!main || !window.EventSource || !window.fetch) { return; }
  var timer = null, busy = false, again = false;

  function say(text) { if (status) { status.textContent = text; } }

  function atBottom(el) { return el.scrollHeight - el.scrollTop - el.clientHeight < 24; }

  function swap(html) {
    var fresh = new DOMParser().parseFromString(html, "text/html");
    var focused = document.activeElement && document.activeElement.id;
    document.querySelectorAll("[data-region]").forEach(function (old) {
      var next = fresh.getElementById(old.id);
      if (!next) { return; }
      var follow = Array.prototype.map.call(old.querySelectorAll("pre.log"), atBottom);
      old.replaceWith(next);
      next.querySelectorAll("pre.log").forEach(function (pre, i) {
        if (follow[i] !== false) { pre.scrollTop = pre.scrollHeight; }
      });
    });
    if (focused && document.getElementById(focused)) { document.getElementById(focused).focus(); }
  }

  function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    fetch(location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) {
        if (r.redirected || !r.ok) { location.reload(); return null; }
        return r.text();
      })
      .then(function (html) { if (html) { swap(html); say("Live updates: on"); } })
      .catch(function () { say("Live updates: page refresh failed; retrying"); })
      .then(function () { busy = false; if (again) { again = false; schedule(); } });
  }

  function schedule() { clearTimeout(timer); timer = setTimeout(refresh, 150); }

  var source = new EventSource(main.getAttribute("data-live"));
  // "on" once the page is current: events between its render and the stream's start count
  source.onopen = function () { schedule(); };
  source.onmessage = schedule;
  // the stream ends when the session does: the refresh then lands on the sign-in page
  source.onerror = function () { say("Live updates: reconnecting…"); schedule(); };
  document.querySelectorAll("pre.log").forEach(function (pre) { pre.scrollTop = pre.scrollHeight; });
})();
