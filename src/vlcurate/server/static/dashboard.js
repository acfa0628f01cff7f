/* vlcurate dashboard: turn server-sent events into htmx refreshes of the panels that changed.
 * Each live panel names the events that concern it (data-events="feed ledger") and re-fetches its
 * HTML partial on such an event. If the stream drops, the browser reconnects by itself, the panels'
 * slow hx-trigger polling keeps the page current meanwhile, and everything is refreshed once the
 * stream is back (changes made while it was down raise no event).
 * Event data is never put into the page: an event only names the panels to re-fetch, and every
 * panel is HTML the server rendered (autoescaped, control and bidi characters shown as \u202e). */
(function () {
  "use strict";
  var EVENTS = ["stats", "feed", "ledger", "contributors", "flagged"];
  var live = document.getElementById("live");

  function setState(state, text) {
    if (!live) return;
    live.setAttribute("data-state", state);
    live.textContent = text;
  }

  function refresh(eventName) {
    if (!window.htmx) return;
    var panels = document.querySelectorAll("[data-events]");
    for (var i = 0; i < panels.length; i++) {
      var names = panels[i].getAttribute("data-events").split(/\s+/);
      if (eventName === "*" || names.indexOf(eventName) >= 0) window.htmx.trigger(panels[i], "refresh");
    }
  }

  function connect() {
    if (!window.EventSource) {
      setState("polling", "polling");
      return;
    }
    var dropped = false;   // has the stream been down since the page was rendered?
    var greeted = false;   // the first `stats` of each connection is the state at connect time
    var source = new EventSource("/api/v1/events");
    source.onopen = function () { setState("live", "live"); };
    source.onerror = function () {
      dropped = true;
      greeted = false;
      setState("reconnecting", "reconnecting");
    };
    EVENTS.forEach(function (name) {
      source.addEventListener(name, function () {
        setState("live", "live");
        if (name === "stats" && !greeted) {
          greeted = true;
          if (dropped) refresh("*");
          return;
        }
        refresh(name);
      });
    });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", connect);
  else connect();
})();
