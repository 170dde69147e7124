// Live refresh without a full reload: every few seconds, fetch this page again and swap its
// <main>, unless the user is typing, has ticked a box or opened a traceback.
(function () {
  const main = document.getElementById("live");
  if (!main) return;
  const every = Number(main.dataset.live) || 5000;
  async function refresh() {
    const busy = main.querySelector("input:checked, details[open]:not([data-keep])") ||
      (document.activeElement && ["INPUT", "SELECT", "TEXTAREA"].includes(document.activeElement.tagName));
    if (!busy && !document.hidden) {
      try {
        const r = await fetch(location.href, { credentials: "same-origin", headers: { "X-Live": "1" } });
        if (r.ok) {
          const doc = new DOMParser().parseFromString(await r.text(), "text/html");
          const fresh = doc.getElementById("live");
          if (fresh) {
            main.innerHTML = fresh.innerHTML;
            document.getElementById("refreshed").textContent = "live: refreshed " + new Date().toLocaleTimeString();
          }
        }
      } catch (e) { /* the next tick tries again */ }
    }
    setTimeout(refresh, every);
  }
  setTimeout(refresh, every);
})();
