// Grainhouse restore upload: the chosen archive is sent as the raw request body (never buffered
// by the server), with the page's CSRF token in a header, then the page follows the task.
"use strict";
(function () {
  var form = document.getElementById("restore-form");
  if (!form) { return; }
  form.addEventListener("submit", function (ev) {
    ev.preventDefault();
    var file = form.querySelector("input[type=file]").files[0];
    var status = document.getElementById("restore-status");
    if (!file) { status.textContent = "Choose a backup file first."; return; }
    var title = form.querySelector("input[name=title]").value;
    var xhr = new XMLHttpRequest();
    xhr.open("POST", form.getAttribute("action") + "?title=" + encodeURIComponent(title));
    xhr.setRequestHeader("X-CSRF-Token", form.querySelector("input[name=csrf]").value);
    xhr.setRequestHeader("Content-Type", "application/zip");
    xhr.upload.onprogress = function (e) {
      if (e.lengthComputable) { status.textContent = "Uploading… " + Math.round(100 * e.loaded / e.total) + "%"; }
    };
    xhr.onload = function () {
      var doc = {};
      try { doc = JSON.parse(xhr.responseText); } catch (e) { doc = {detail: xhr.responseText}; }
      if (xhr.status < 300 && doc.next) { window.location = doc.next; }
      else { status.textContent = "Restore failed: " + (doc.detail || xhr.status); }
    };
    xhr.onerror = function () { status.textContent = "Upload failed: network error."; };
    status.textContent = "Uploading…";
    xhr.send(file);
  });
})();
