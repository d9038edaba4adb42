// The console's only script, served from the package (the CSP allows no other).
// 1. A form with data-confirm asks before it is sent.
// 2. A #live block with data-events follows the server's events, and swaps in
//    the HTML they carry (rendered and escaped by the server) when it changes.
"use strict";

document.addEventListener("submit", function (event) {
  var form = event.target;
  if (form instanceof HTMLFormElement && form.dataset.confirm) {
    if (!window.confirm(form.dataset.confirm)) {
      event.preventDefault();
    }
  }
});

function follow(live) {
  var source = new EventSource(live.dataset.events);
  source.addEventListener("rollout", function (message) {
    var html = JSON.parse(message.data).html;
    if (live.dataset.shown === html) {
      return;
    }
    // Keep the keyboard where it was when the block is replaced.
    var focused = document.activeElement && live.contains(document.activeElement) ? document.activeElement.id : "";
    live.innerHTML = html;
    live.dataset.shown = html;
    live.dataset.updates = String(Number(live.dataset.updates || "0") + 1);
    if (focused) {
      var again = document.getElementById(focused);
      if (again) {
        again.focus();
      }
    }
  });
}

document.addEventListener("DOMContentLoaded", function () {
  var live = document.getElementById("live");
  if (live && live.dataset.events && window.EventSource) {
    follow(live);
  }
});
