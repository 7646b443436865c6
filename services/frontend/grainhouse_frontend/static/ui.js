// Grainhouse platform UI helpers: package upload with progress; confirm on dangerous buttons.
"use strict";
document.addEventListener("submit", function (ev) {
  var msg = ev.target.getAttribute("data-confirm");
  if (msg && !window.confirm(msg)) { ev.preventDefault(); }
});
(function () {
  var form = document.getElementById("upload-form");
  if (!form) { return; }
  form.addEventListener("submit", function (ev) {
    ev.preventDefault();
    var file = form.querySelector("input[type=file]").files[0];
    var status = document.getElementById("upload-status");
    if (!file) { status.textContent = "Choose a package file first."; return; }
    var xhr = new XMLHttpRequest();
    xhr.open("POST", form.getAttribute("action"));
    xhr.setRequestHeader("X-CSRF-Token", form.querySelector("input[name=csrf]").value);
    xhr.setRequestHeader("Content-Type", "application/octet-stream");
    xhr.upload.onprogress = function (e) {
      if (e.lengthComputable) { status.textContent = "Uploading… " + Math.round(100 * e.loaded / e.total) + "%"; }
    };
    xhr.onload = function () {
      if (xhr.status < 300) { window.location = "/apps?done=installed"; }
      else { status.textContent = "Install failed: " + xhr.responseText; }
    };
    xhr.onerror = function () { status.textContent = "Upload failed: network error."; };
    status.textContent = "Uploading…";
    xhr.send(file);
  });
})();
