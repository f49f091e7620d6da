// snapreg dashboard: keeps an open page live. No framework, nothing loaded from
// elsewhere. Every few seconds it asks /api/state; when the answer changes (a
// new snapshot, workflow snapshot, run, or a writer's sign of life), or half a
// minute has passed, it fetches this page again and swaps in its live parts.
(function () {
  "use strict";
  var body = document.body;
  var poll = parseInt(body.dataset.poll || "2000", 10);
  var live = document.getElementById("live");
  var refreshedAt = Date.now();
  var busy = false;
  // the server's clock, not this machine's, says how old things are
  var skew = body.dataset.now ? Date.parse(body.dataset.now) - Date.now() : 0;

  function age(iso) {
    var seconds = Math.max(0, Math.floor((Date.now() + skew - Date.parse(iso)) / 1000));
    if (seconds < 120) return seconds + " s ago";
    if (seconds < 7200) return Math.floor(seconds / 60) + " min ago";
    if (seconds < 172800) return Math.floor(seconds / 3600) + " h ago";
    return Math.floor(seconds / 86400) + " d ago";
  }

  function tick() {
    document.querySelectorAll("[data-time]").forEach(function (element) {
      element.textContent = age(element.dataset.time);
    });
  }

  function load(element) {
    var source = element.dataset.src;
    if (!source || element.dataset.loaded === source) return;
    fetch(source, { cache: "no-store" })
      .then(function (response) {
        return response.text().then(function (text) {
          if (!response.ok) throw new Error(response.status + " " + text.replace(/<[^>]*>/g, " ").replace(/\s+/g, " ").trim().slice(0, 300));
          return text;
        });
      })
      .then(function (text) {
        if (element.dataset.src !== source) return;
        element.innerHTML = text;
        element.dataset.loaded = source;
        element.classList.remove("failed");
        tick();
      })
      .catch(function (error) {
        element.textContent = "Could not load: " + error.message;
        element.classList.add("failed");
      });
  }

  function loadAll(root) {
    root.querySelectorAll(".lazy[data-src]").forEach(load);
  }

  function refresh(state) {
    busy = true;
    return fetch(window.location.href, { cache: "no-store" })
      .then(function (response) { return response.text(); })
      .then(function (html) {
        var fresh = new DOMParser().parseFromString(html, "text/html");
        document.querySelectorAll("[data-live][id]").forEach(function (old) {
          var replacement = fresh.getElementById(old.id);
          if (!replacement) return;
          // keep what the lazy parts already show while they reload
          old.querySelectorAll(".lazy[data-src]").forEach(function (lazy) {
            var counterpart = replacement.querySelector(
              '.lazy[data-src="' + CSS.escape(lazy.dataset.src) + '"]');
            if (counterpart) { counterpart.innerHTML = lazy.innerHTML; counterpart.dataset.loaded = lazy.dataset.loaded || ""; }
            else if (lazy.classList.contains("timeline")) {
              var next = replacement.querySelector(".lazy.timeline");
              if (next) next.innerHTML = lazy.innerHTML;
            }
          });
          old.replaceWith(replacement);
        });
        body.dataset.state = fresh.body.dataset.state || state;
        refreshedAt = Date.now();
        loadAll(document);
        tick();
      })
      .finally(function () { busy = false; });
  }

  function check() {
    if (busy) return;
    fetch("/api/state", { cache: "no-store" })
      .then(function (response) { return response.json(); })
      .then(function (answer) {
        if (answer.now) skew = Date.parse(answer.now) - Date.now();
        live.classList.add("on"); live.classList.remove("off");
        live.textContent = "read-only · live";
        if (answer.state !== body.dataset.state || Date.now() - refreshedAt > 30000) {
          return refresh(answer.state);
        }
      })
      .catch(function () {
        live.classList.add("off"); live.classList.remove("on");
        live.textContent = "read-only · not connected";
      });
  }

  document.addEventListener("click", function (event) {
    var link = event.target.closest && event.target.closest("a.refresh-disk");
    if (!link) return;
    event.preventDefault();
    var lazy = link.closest(".lazy");
    if (!lazy) return;
    var source = lazy.dataset.src.replace(/&again=1$/, "");
    lazy.dataset.loaded = "";
    lazy.dataset.src = source + "&again=1";
    lazy.textContent = "Measuring the snapshot files…";
    load(lazy);
  });

  loadAll(document);
  tick();
  setInterval(tick, 1000);
  if (body.dataset.state) setInterval(check, poll);
})();
