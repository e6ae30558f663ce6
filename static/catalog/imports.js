/* The import page, enhanced: drop files or folders on the form, and see the upload's progress (XHR upload
   events; fetch() has none). Without JavaScript the form posts as usual. */
(function () {
  "use strict";
  var form = document.querySelector("form.import");
  if (!form || !window.FormData || !window.DataTransfer) { return; }
  var input = form.querySelector("input[type=file][name=files]");
  var zone = form.querySelector(".drop-zone");
  var box = form.querySelector(".upload-progress");
  var bar = box && box.querySelector("progress");
  var label = box && box.querySelector(".upload-progress-label");

  function addFiles(files) {
    var all = new DataTransfer();
    Array.prototype.forEach.call(input.files, function (file) { all.items.add(file); });
    Array.prototype.forEach.call(files, function (file) { all.items.add(file); });
    input.files = all.files;
    input.dispatchEvent(new Event("change", {bubbles: true}));
  }

  // A dropped folder: every file in it and its subfolders, hidden ones left out (as the command does).
  function filesOf(entry) {
    if (entry.name.charAt(0) === ".") { return Promise.resolve([]); }
    if (entry.isFile) {
      return new Promise(function (resolve) { entry.file(function (file) { resolve([file]); }, function () { resolve([]); }); });
    }
    var reader = entry.createReader(), found = [];
    return new Promise(function (resolve) {
      (function more() {  // readEntries answers in batches until it answers none
        reader.readEntries(function (batch) {
          if (!batch.length) {
            Promise.all(found.map(filesOf)).then(function (lists) { resolve([].concat.apply([], lists)); });
            return;
          }
          found = found.concat(Array.prototype.slice.call(batch));
          more();
        }, function () { resolve([]); });
      })();
    });
  }

  if (zone && input) {
    ["dragenter", "dragover"].forEach(function (name) {
      zone.addEventListener(name, function (event) { event.preventDefault(); zone.classList.add("dragging"); });
    });
    ["dragleave", "drop"].forEach(function (name) {
      zone.addEventListener(name, function () { zone.classList.remove("dragging"); });
    });
    zone.addEventListener("drop", function (event) {
      event.preventDefault();
      var transfer = event.dataTransfer;
      if (!transfer) { return; }
      var entries = Array.prototype.map.call(transfer.items || [], function (item) {
        return item.webkitGetAsEntry ? item.webkitGetAsEntry() : null;
      }).filter(Boolean);
      if (entries.length && entries.some(function (entry) { return entry.isDirectory; })) {
        Promise.all(entries.map(filesOf)).then(function (lists) { addFiles([].concat.apply([], lists)); });
      } else if (transfer.files.length) {
        addFiles(transfer.files);
      }
    });
  }

  form.addEventListener("submit", function (event) {
    if (!box || !input.files.length) { return; }  // URLs only: nothing to show progress for
    event.preventDefault();
    var request = new XMLHttpRequest();
    request.open("POST", form.action);
    box.hidden = false;
    request.upload.addEventListener("progress", function (progress) {
      if (!progress.lengthComputable) { return; }
      bar.max = progress.total;
      bar.value = progress.loaded;
      label.textContent = Math.floor(progress.loaded * 100 / progress.total) + "%";
    });
    request.addEventListener("load", function () {
      if (request.status < 400 && request.responseURL && request.responseURL !== form.action) {
        window.location.assign(request.responseURL);  // the job's page, where the server redirected
      } else {  // the form again, with its messages
        document.open();
        document.write(request.responseText);
        document.close();
      }
    });
    request.addEventListener("error", function () { label.textContent = box.dataset.failed; });
    form.querySelectorAll("button[type=submit]").forEach(function (button) { button.disabled = true; });
    request.send(new FormData(form));
  });
})();
