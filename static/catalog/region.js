/* Region picker (templates/catalog/_region_picker.html): drag a box on a picture by mouse, touch
   (pointer events) or keyboard, and search by that box only. The box travels as the hidden inputs
   region_x/y/w/h, fractions of the picture as displayed (browsers show it EXIF-upright, the frame the
   server crops in). The inputs stay disabled until a box is drawn: without a box, or without this
   script, the form searches by the whole picture. */
(function () {
  "use strict";

  var MIN_SOURCE_PIXELS = 16; // catalog.search.MIN_REGION_SIDE
  var STEP = 0.02;            // keyboard move/resize step, a fraction of the picture
  var FIELDS = ["x", "y", "w", "h"];

  function clamp(value, low, high) { return Math.min(high, Math.max(low, value)); }

  function percent(value) { return Math.round(value * 100) + "%"; }

  function setUp(picker) {
    var form = picker.closest("form");
    var stage = picker.querySelector(".region-stage");
    var image = picker.querySelector(".region-image");
    var boxElement = picker.querySelector(".region-box");
    var status = picker.querySelector(".region-status");
    var button = picker.querySelector(".region-search");
    var clear = picker.querySelector(".region-clear");
    var inputs = {};
    FIELDS.forEach(function (name) { inputs[name] = picker.querySelector("input[name=region_" + name + "]"); });
    var box = null; // {x, y, w, h} in fractions of the picture
    var drag = null;

    function minimum() { // the smallest box the server accepts, as fractions of the source picture
      var width = +picker.dataset.width || image.naturalWidth || MIN_SOURCE_PIXELS;
      var height = +picker.dataset.height || image.naturalHeight || MIN_SOURCE_PIXELS;
      return {w: Math.min(1, MIN_SOURCE_PIXELS / width), h: Math.min(1, MIN_SOURCE_PIXELS / height)};
    }

    if (picker.dataset.fallback) { // e.g. HEIF, which most browsers cannot show: its upright thumbnail
      image.addEventListener("error", function () {
        if (image.getAttribute("src") !== picker.dataset.fallback) image.src = picker.dataset.fallback;
      });
      if (image.complete && !image.naturalWidth) image.src = picker.dataset.fallback;
    }

    function show() {
      var has = box !== null;
      boxElement.hidden = !has;
      button.hidden = !has;
      clear.hidden = !has;
      FIELDS.forEach(function (name) {
        inputs[name].disabled = !has;
        // Sizes rounded down, so that x + w stays within the picture (the server allows 1e-6 over).
        var value = has ? (name === "w" || name === "h" ? Math.floor(box[name] * 1e6) / 1e6 : +box[name].toFixed(6)) : "";
        inputs[name].value = String(value);
      });
      if (has) {
        boxElement.style.left = box.x * 100 + "%";
        boxElement.style.top = box.y * 100 + "%";
        boxElement.style.width = box.w * 100 + "%";
        boxElement.style.height = box.h * 100 + "%";
        status.textContent = picker.dataset.announce
          .replace("{x}", percent(box.x)).replace("{y}", percent(box.y))
          .replace("{w}", percent(box.w)).replace("{h}", percent(box.h));
      } else {
        status.textContent = picker.dataset.announceNone;
      }
    }

    function set(x, y, w, h) {
      var least = minimum();
      w = clamp(w, least.w, 1);
      h = clamp(h, least.h, 1);
      box = {x: clamp(x, 0, 1 - w), y: clamp(y, 0, 1 - h), w: w, h: h};
      show();
    }

    function reset() { box = null; show(); }

    function point(event) { // the pointer, in fractions of the displayed picture
      var rect = image.getBoundingClientRect();
      return {x: clamp((event.clientX - rect.left) / rect.width, 0, 1),
              y: clamp((event.clientY - rect.top) / rect.height, 0, 1)};
    }

    stage.addEventListener("pointerdown", function (event) {
      if (event.button !== 0 || !image.complete || !image.naturalWidth) return;
      event.preventDefault();
      stage.focus();
      stage.setPointerCapture(event.pointerId);
      var at = point(event);
      var inside = box && at.x >= box.x && at.x <= box.x + box.w && at.y >= box.y && at.y <= box.y + box.h;
      drag = inside ? {move: true, from: at, start: box} : {move: false, from: at};
    });
    stage.addEventListener("pointermove", function (event) {
      if (!drag) return;
      var at = point(event);
      if (drag.move) {
        set(drag.start.x + at.x - drag.from.x, drag.start.y + at.y - drag.from.y, drag.start.w, drag.start.h);
      } else {
        set(Math.min(at.x, drag.from.x), Math.min(at.y, drag.from.y),
            Math.abs(at.x - drag.from.x), Math.abs(at.y - drag.from.y));
      }
    });
    function end() { drag = null; }
    stage.addEventListener("pointerup", end);
    stage.addEventListener("pointercancel", end);

    stage.addEventListener("keydown", function (event) {
      var dx = {ArrowLeft: -STEP, ArrowRight: STEP}[event.key] || 0;
      var dy = {ArrowUp: -STEP, ArrowDown: STEP}[event.key] || 0;
      if (dx || dy) {
        event.preventDefault();
        if (!box) {
          set(0.25, 0.25, 0.5, 0.5); // the first key press puts a box in the middle
        } else if (event.shiftKey) {
          set(box.x, box.y, box.w + dx, box.h + dy);
        } else {
          set(box.x + dx, box.y + dy, box.w, box.h);
        }
      } else if (event.key === "Enter") {
        event.preventDefault();
        form.requestSubmit(button);
      } else if (event.key === "Escape" || event.key === "Delete" || event.key === "Backspace") {
        if (box) { event.preventDefault(); reset(); }
      }
    });

    clear.addEventListener("click", function () { reset(); stage.focus(); });

    form.addEventListener("submit", function (event) {
      // A text search carries no region: the box belongs to the picture.
      var submitter = event.submitter;
      if (submitter && submitter.name === "search" && submitter.value === "text") {
        FIELDS.forEach(function (name) { inputs[name].disabled = true; });
      }
    });

    var upload = picker.hasAttribute("data-region-upload") ? form.querySelector("input[type=file][name=image]") : null;
    if (upload) { // show the chosen file; the server crops the same upright frame the browser shows
      var url = null;
      upload.addEventListener("change", function () {
        if (url) URL.revokeObjectURL(url);
        url = null;
        reset();
        var file = upload.files && upload.files[0];
        if (file) {
          url = URL.createObjectURL(file);
          image.src = url;
        }
        picker.hidden = !file;
      });
    }
    stage.tabIndex = 0; // focusable, and a widget that takes the arrow keys, only with this script
    stage.setAttribute("role", "application");
    picker.classList.add("region-ready");
    show();
  }

  function start() {
    Array.prototype.forEach.call(document.querySelectorAll("[data-region-picker]"), setUp);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
