// The console's only script: local times, copy buttons, confirmations, the sign-in hand-over,
// and live updates from the server's event streams. Everything it inserts is either text
// (textContent) or HTML the console rendered and escaped on the server. No third-party code.
(function () {
  "use strict";

  var ended = false; // the session ended: stop updating and say so

  function localTimes(root) {
    root.querySelectorAll("time[datetime]").forEach(function (t) {
      var d = new Date(t.getAttribute("datetime"));
      if (!isNaN(d)) {
        t.title = t.textContent;
        t.textContent = d.toLocaleString(document.documentElement.lang);
      }
    });
  }

  var statuses = document.querySelectorAll("[data-live-status]");
  function liveState(ok) {
    statuses.forEach(function (s) {
      if (!s.dataset.ok) s.dataset.ok = s.textContent;
      s.textContent = ok ? s.dataset.ok : s.dataset.lost;
      s.classList.toggle("lost", !ok);
    });
  }

  // A piece of a page. An ended session answers 401 (never the sign-in page in a panel).
  function fetchHtml(url) {
    return fetch(url, {
      credentials: "same-origin",
      redirect: "error",
      headers: { Accept: "text/html", "X-Console-Fragment": "1" },
    }).then(function (r) {
      if (!r.ok) {
        if (r.status === 401) ended = true;
        liveState(false);
        throw new Error(String(r.status));
      }
      return r.text();
    });
  }

  // An event stream that comes back after an error: the browser retries a dropped stream by
  // itself (sending Last-Event-ID); a refused one (429, 502) is reopened here after a pause,
  // from the last event seen.
  function listen(src, onEvent, onOpen) {
    var last = null;
    var es = null;
    var pause = 5000;
    function open() {
      var url = src;
      if (last !== null) url += (src.indexOf("?") < 0 ? "?" : "&") + "after=" + encodeURIComponent(last);
      es = new EventSource(url);
      var handle = {
        close: function () { es.close(); handle.closed = true; },
        closed: false,
      };
      es.addEventListener("call", function (m) {
        liveState(true);
        pause = 5000;
        if (m.lastEventId) last = m.lastEventId;
        var e;
        try { e = JSON.parse(m.data); } catch (_) { return; }
        onEvent(e, handle);
      });
      es.onopen = function () { liveState(true); if (onOpen) onOpen(); };
      es.onerror = function () {
        liveState(false);
        if (es.readyState === EventSource.CLOSED && !handle.closed && !ended) {
          setTimeout(open, pause);
          pause = Math.min(pause * 2, 60000);
        }
      };
    }
    open();
  }

  function rowOf(body, id) {
    return body.querySelector('tr[data-call-id="' + CSS.escape(id) + '"]');
  }

  // The workbench's current call.
  function callPanel(el) {
    if (el.dataset.terminal === "true") return;
    listen(el.dataset.src, function (e, stream) {
      var state = el.querySelector("#call-state");
      if (state) state.textContent = e.state_text;
      if (e.terminal) {
        stream.close();
        fetchHtml("/calls/" + encodeURIComponent(el.dataset.callId) + "/panel").then(function (html) {
          el.innerHTML = html;
          el.dataset.terminal = "true";
          localTimes(el);
        }).catch(function () {});
      }
    });
  }

  // A list of calls: new rows on top, rows kept current. Each row is fetched afresh and put
  // where the row is when the answer arrives; an older answer never replaces a newer one.
  function callList(table) {
    var body = table.querySelector("tbody");
    var newest = {};
    listen(table.dataset.src, function (e) {
      var known = rowOf(body, e.call_id);
      if (!known && !(e.type === "created" && table.dataset.prepend === "true")) return;
      newest[e.call_id] = e.id;
      fetchHtml("/calls/" + encodeURIComponent(e.call_id) + "/row").then(function (html) {
        if (newest[e.call_id] !== e.id) return;
        var row = rowOf(body, e.call_id);
        if (row) row.outerHTML = html;
        else body.insertAdjacentHTML("afterbegin", html);
        var fresh = rowOf(body, e.call_id);
        if (fresh) localTimes(fresh);
      }).catch(function () {});
    });
  }

  // One call's timeline (not opened for a call that has ended; closed when it ends).
  function timeline(list) {
    if (list.dataset.terminal === "true") return;
    listen(list.dataset.src, function (e, stream) {
      if (!list.querySelector('[data-event="' + CSS.escape(String(e.id)) + '"]')) {
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
      }
      if (e.terminal) stream.close();
    });
  }

  // A block re-rendered by the server after call events, at most every data-every ms, and
  // whenever its stream (re)opens (so nothing between the page and the stream is missed).
  function refresh(el) {
    var every = parseInt(el.dataset.every || "700", 10);
    var timer = null;
    var seq = 0;
    function reload() {
      var mine = ++seq;
      fetchHtml(el.dataset.fragment).then(function (html) {
        if (mine !== seq) return;
        el.innerHTML = html;
        localTimes(el);
      }).catch(function () {});
    }
    var opened = false;
    listen(el.dataset.src || "/live/calls", function () {
      if (timer) return;
      timer = setTimeout(function () { timer = null; reload(); }, every);
    }, function () {
      if (opened) reload();
      opened = true;
    });
  }

  // The platform's hand-over: the token travels in the fragment, never to a server log; the
  // person confirms who they continue as.
  function handoff(form) {
    var m = /(?:^#|&)token=([^&]+)/.exec(window.location.hash);
    history.replaceState(null, "", window.location.pathname);
    var token = null, who = null;
    try {
      token = decodeURIComponent(m[1]);
      var part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      var claims = JSON.parse(atob(part));
      who = String(claims.sub || "") + (claims.role ? " (" + String(claims.role) + ")" : "");
    } catch (_) {
      token = null;
    }
    if (!token) {
      document.getElementById("handoff-missing").hidden = false;
      return;
    }
    form.elements.token.value = token;
    var go = document.getElementById("handoff-go");
    go.textContent = go.dataset.template.replace("{0}", who);
    form.hidden = false;
    go.focus();
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

    var h = document.getElementById("handoff");
    if (h) handoff(h);

    if (window.EventSource) {
      document.querySelectorAll('[data-live="call"]').forEach(callPanel);
      document.querySelectorAll('[data-live="calls"]').forEach(callList);
      document.querySelectorAll('[data-live="timeline"]').forEach(timeline);
      document.querySelectorAll('[data-live="refresh"]').forEach(refresh);
    }
  });
})();
