// queuectl dashboard: live panels and row selection; no library, nothing fetched from elsewhere.
"use strict";

// Every element with data-live="URL" is re-rendered from URL (an HTML fragment that the server
// rendered and escaped) every PERIOD ms while the tab is visible.
const PERIOD = 2000;

function keepLive(panel) {
  async function refresh() {
    if (!document.hidden) {
      try {
        const response = await fetch(panel.dataset.live, { credentials: "same-origin", cache: "no-store" });
        if (response.ok) {
          panel.innerHTML = await response.text();
          panel.classList.remove("stale");
        } else {
          panel.classList.add("stale");
        }
      } catch (error) {
        panel.classList.add("stale"); // the dashboard stopped: keep trying
      }
    }
    setTimeout(refresh, PERIOD);
  }
  setTimeout(refresh, PERIOD);
}

// A checkbox with data-select-all="FORM" ticks every checkbox of that form.
function selectAll(box) {
  box.addEventListener("change", function () {
    document.querySelectorAll('input[type=checkbox][form="' + box.dataset.selectAll + '"]').forEach(function (other) {
      other.checked = box.checked;
    });
  });
}

document.querySelectorAll("[data-live]").forEach(keepLive);
document.querySelectorAll("[data-select-all]").forEach(selectAll);
