// The console's only script: local times, copy buttons, confirmations, and live updates from
// the server's event streams. Everything it inserts is either text (textContent) or HTML the
// console rendered and escaped on the server. No third-party code.
(function () {
  "use strict";

  function localTimes(root) {
    root.querySelectorAll("time[datetime]").forEach(function (t) {
      var d = new Date(t.getAttribute("datetime"));
      if (!isNaN(d)) {
        t.title = t.textContent;
        t.textContent = d.toLocaleString(document.documentElement.lang);
      }
    });
  }

  function fetchHtml(url) {
    return fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" } }).then(
      function (r) {
        if (!r.ok) throw new Error(String(r.status));
        return r.text();
      }
    );
  }

  var statuses = document.querySelectorAll("[data-live-status]");
  function liveState(ok) {
    statuses.forEach(function (s) {
      if (!s.dataset.ok) s.dataset.ok = s.textContent;
      s.textContent = ok ? s.dataset.ok : s.dataset.lost;
      s.classList.toggle("lost", !ok);
    });
  }

  function listen(src, onEvent) {
    var es = new EventSource(src);
    es.addEventListener("call", function (m) {
      liveState(true);
      var e;
      try { e = JSON.parse(m.data); } catch (_) { return; }
      onEvent(e, es);
    });
    es.onopen = function () { liveState(true); };
    es.onerror = function () { liveState(false); };
    return es;
  }

  // The workbench's current call.
  function callPanel(el) {
    if (el.dataset.terminal === "true") return;
    listen(el.dataset.src, function (e, es) {
      var state = el.querySelector("#call-state");
      if (state) state.textContent = e.state_text;
      if (e.terminal) {
        es.close();
        fetchHtml("/calls/" + encodeURIComponent(el.dataset.callId) + "/panel").then(function (html) {
          el.innerHTML = html;
          el.dataset.terminal = "true";
          localTimes(el);
        });
      }
    });
  }

  // A list of calls: new rows on top, statuses kept current.
  function callList(table) {
    var body = table.querySelector("tbody");
    listen(table.dataset.src, function (e) {
      var row = body.querySelector('tr[data-call-id="' + CSS.escape(e.call_id) + '"]');
      if (row && e.type !== "created") {
        fetchHtml("/calls/" + encodeURIComponent(e.call_id) + "/row").then(function (html) {
          row.outerHTML = html;
          var fresh = body.querySelector('tr[data-call-id="' + CSS.escape(e.call_id) + '"]');
          if (fresh) localTimes(fresh);
        });
      } else if (!row && e.type === "created" && table.dataset.prepend === "true") {
        fetchHtml("/calls/" + encodeURIComponent(e.call_id) + "/row").then(function (html) {
          if (body.querySelector('tr[data-call-id="' + CSS.escape(e.call_id) + '"]')) return;
          body.insertAdjacentHTML("afterbegin", html);
          localTimes(body.firstElementChild);
        });
      }
    });
  }

  // One call's timeline.
  function timeline(list) {
    listen(list.dataset.src, function (e) {
      if (list.querySelector('[data-event="' + e.id + '"]')) return;
      var li = document.createElement("li");
      li.dataset.event = e.id;
      var t = document.createElement("time");
      t.setAttribute("datetime", e.at);
      t.textContent = e.at;
      li.appendChild(t);
      var text = " — " + e.event_text;
      if (e.extension) text += " · " + e.extension;
      if (e.result_text && e.type === "completed") text += " · " + e.result_text;
      if (e.error) text += " · " + e.error;
      li.appendChild(document.createTextNode(text));
      list.appendChild(li);
      localTimes(li);
    });
  }

  // A block re-rendered by the server after call events (at most every 700 ms).
  function refresh(el) {
    var timer = null;
    listen(el.dataset.src || "/live/calls", function () {
      if (timer) return;
      timer = setTimeout(function () {
        timer = null;
        fetchHtml(el.dataset.fragment).then(function (html) {
          el.innerHTML = html;
          localTimes(el);
        });
      }, 700);
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    localTimes(document);

    document.querySelectorAll("[data-copy]").forEach(function (b) {
      b.addEventListener("click", function () {
        var src = document.getElementById(b.dataset.copy);
        if (!src || !navigator.clipboard) return;
        navigator.clipboard.writeText(src.textContent).then(function () {
          b.textContent = b.dataset.copied;
        });
      });
    });

    document.querySelectorAll("form[data-confirm]").forEach(function (f) {
      f.addEventListener("submit", function (ev) {
        if (!window.confirm(f.dataset.confirm)) ev.preventDefault();
      });
    });

    // The platform's hand-over: the token travels in the fragment, never to a server log.
    var handoff = document.getElementById("handoff");
    if (handoff) {
      var m = /(?:^#|&)token=([^&]+)/.exec(window.location.hash);
      history.replaceState(null, "", window.location.pathname);
      if (m) {
        handoff.elements.token.value = decodeURIComponent(m[1]);
        handoff.submit();
      } else {
        document.getElementById("handoff-missing").hidden = false;
      }
    }

    if (window.EventSource) {
      document.querySelectorAll('[data-live="call"]').forEach(callPanel);
      document.querySelectorAll('[data-live="calls"]').forEach(callList);
      document.querySelectorAll('[data-live="timeline"]').forEach(timeline);
      document.querySelectorAll('[data-live="refresh"]').forEach(refresh);
    }
  });
})();
