// pneumo screening page: choose or drop a file, preview it, send it to the JSON API,
// show the result and the heatmap. Text from the server or the file name is only ever
// inserted with textContent, never as HTML.
(function () {
  "use strict";

  const app = document.getElementById("app");
  if (!app) return;
  const $ = (id) => document.getElementById(id);

  const form = $("upload-form");
  const input = $("file-input");
  const viewer = $("viewer");
  const xray = $("xray");
  const heatmap = $("heatmap");
  const busy = $("stage-busy");
  const noPreview = $("no-preview");
  const controls = $("heatmap-controls");
  const toggle = $("heatmap-toggle");
  const opacity = $("opacity");
  const opacityValue = $("opacity-value");
  const states = ["idle", "progress", "error", "result"].reduce((all, name) => {
    all[name] = $("state-" + name);
    return all;
  }, {});

  const maxBytes = Number(app.dataset.maxBytes || 0);
  const sensitivity = parseFloat(app.dataset.sensitivity);
  const specificity = parseFloat(app.dataset.specificity);
  const thresholdMethod = app.dataset.thresholdMethod || "";
  let previewUrl = null;
  let request = null;

  // What each API error code means, in plain words.
  const ERROR_TITLES = {
    unsupported_type: "This file is not a chest X-ray image we can read.",
    not_a_chest_xray: "This does not look like a chest X-ray the model can read.",
    unreadable_image: "This image could not be read.",
    too_large: "This file is too large.",
    too_many_files: "Too many files at once.",
    missing_file: "No file was chosen.",
    model_unavailable: "The model is not ready yet.",
    timeout: "The server is busy.",
    cross_origin: "This request was blocked.",
    internal_error: "Something went wrong on our side.",
  };
  const ERROR_HINTS = {
    unsupported_type: "Choose a chest radiograph saved as PNG, JPEG or DICOM.",
    unreadable_image: "The file may be damaged or incomplete. Try exporting it again.",
    not_a_chest_xray: "No result is given for it. Choose a frontal (PA or AP) chest radiograph.",
    too_large: "Please choose a smaller file (the limit is " + app.dataset.maxSize + ").",
    model_unavailable: "Please try again in a few seconds.",
    timeout: "The model took too long to answer. Please try again.",
    internal_error: "The problem has been logged. Please try again.",
  };

  function show(name) {
    Object.keys(states).forEach((key) => { states[key].hidden = key !== name; });
  }

  function pct(p) {
    if (p >= 0.9995) return ">99.9%";
    if (p < 0.0005) return "<0.1%";
    return (p * 100).toFixed(1) + "%";
  }

  function sentenceCase(text) {
    text = String(text || "").trim();
    if (!text) return "";
    text = text.charAt(0).toUpperCase() + text.slice(1);
    return /[.!?]$/.test(text) ? text : text + ".";
  }

  // Reasons as list items, each a sentence, inserted as text.
  function fillReasons(list, reasons) {
    list.replaceChildren(...(reasons || []).map((reason) => {
      const item = document.createElement("li");
      item.textContent = sentenceCase(reason);
      return item;
    }));
    list.hidden = list.children.length === 0;
  }

  function showError(code, message, fileName, inputCheck) {
    $("error-file").textContent = fileName || "";
    $("error-title").textContent = ERROR_TITLES[code] || "This file could not be used.";
    const reasons = inputCheck && inputCheck.reasons;
    fillReasons($("error-reasons"), reasons);
    const parts = [];
    if (message && !(reasons && reasons.length)) parts.push(sentenceCase(message));
    if (ERROR_HINTS[code]) parts.push(ERROR_HINTS[code]);
    $("error-detail").textContent = parts.join(" ");
    clearViewer();
    show("error");
  }

  function setOpacity() {
    heatmap.style.opacity = String(Number(opacity.value) / 100);
    opacityValue.textContent = opacity.value + "%";
  }

  function setHeatmapVisible() {
    heatmap.hidden = !toggle.checked || !heatmap.getAttribute("src");
    opacity.disabled = !toggle.checked;
  }

  // Back to the drop zone, keeping whatever the result panel shows.
  function clearViewer() {
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = null;
    xray.removeAttribute("src");
    heatmap.removeAttribute("src");
    heatmap.hidden = true;
    controls.hidden = true;
    noPreview.hidden = true;
    busy.hidden = true;
    viewer.hidden = true;
    form.hidden = false;
    input.value = "";
  }

  function resetViewer() {
    if (request) request.abort();
    request = null;
    clearViewer();
    show("idle");
  }

  function preview(file) {
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = null;
    heatmap.removeAttribute("src");
    heatmap.hidden = true;
    controls.hidden = true;
    const canPreview = /^image\/(png|jpeg)$/.test(file.type);
    if (canPreview) {
      previewUrl = URL.createObjectURL(file);
      xray.src = previewUrl;
      xray.hidden = false;
      noPreview.hidden = true;
    } else {
      xray.removeAttribute("src");
      xray.hidden = true;
      noPreview.hidden = false;
    }
    form.hidden = true;
    viewer.hidden = false;
    busy.hidden = false;
  }

  function renderResult(data, fileName) {
    const positive = data.label === "PNEUMONIA";
    const threshold = data.threshold;
    $("result-file").textContent = fileName;
    $("result-label").textContent = data.label;
    $("result-summary").textContent = positive
      ? "At or above the operating threshold: flagged as likely pneumonia."
      : "Below the operating threshold: not flagged for pneumonia.";
    const verdict = $("verdict");
    verdict.classList.toggle("is-positive", positive);
    verdict.classList.toggle("is-negative", !positive);
    const check = data.input_check || { status: "ok", reasons: [] };
    const doubtful = check.status === "warning";
    fillReasons($("warning-reasons"), doubtful ? check.reasons : []);
    $("result-warning").hidden = !doubtful;
    verdict.classList.toggle("is-doubtful", doubtful || data.inconclusive === true);
    $("result-inconclusive").hidden = data.inconclusive !== true;
    $("result-study").hidden = !data.study_id;
    $("result-not-kept").hidden = !data.study_error;
    $("result-not-kept").textContent = data.study_error ? "Not kept: " + data.study_error + "." : "";
    if (data.study_id) {
      $("report-link").href = "/api/v1/studies/" + encodeURIComponent(data.study_id) + "/report.pdf";
      $("study-link").href = "/studies/" + encodeURIComponent(data.study_id);
    }
    $("result-probability").textContent = pct(data.probability);
    $("scale-fill").style.width = (data.probability * 100).toFixed(2) + "%";
    $("scale-marker").style.left = (threshold * 100).toFixed(2) + "%";
    $("scale-marker-label").textContent = "threshold " + pct(threshold);

    let text = "The model flags an image as PNEUMONIA when the calibrated probability is at least " +
      pct(threshold) + "; this one is " + pct(data.probability) + ", so it is " +
      (positive ? "flagged." : "not flagged.");
    if (!isNaN(sensitivity) && !isNaN(specificity)) {
      text += " On validation images, this threshold" +
        (thresholdMethod ? " (chosen by " + thresholdMethod + ")" : "") +
        " caught " + pct(sensitivity) + " of pneumonia cases and cleared " +
        pct(specificity) + " of normal ones, so some cases are missed and some normal images are flagged.";
    }
    $("threshold-text").textContent = text;
    $("legend-label").textContent = data.label;
    $("heatmap-text").textContent = "Coloured areas show where the image gave the most evidence for " +
      data.label + ". They are not the extent of disease.";
    $("result-model").textContent = data.model.name + " " + data.model.version;

    if (data.image) {
      xray.src = data.image;  // the image as the model saw it, so the heatmap lines up
      xray.hidden = false;
      noPreview.hidden = true;
    }
    if (data.heatmap) {
      heatmap.src = data.heatmap;
      controls.hidden = false;
      setOpacity();
      setHeatmapVisible();
    }
    busy.hidden = true;
    show("result");
  }

  function analyse(file) {
    if (!file) return;
    if (maxBytes && file.size > maxBytes) {
      showError("too_large", "the file is " + (file.size / 1048576).toFixed(1) + " MB", file.name);
      return;
    }
    preview(file);
    show("progress");
    const bar = $("progress-bar");
    const progress = $("progress");
    const text = $("progress-text");
    progress.classList.remove("is-indeterminate");
    bar.style.width = "0%";
    text.textContent = "Uploading " + file.name + "…";

    const body = new FormData();
    body.append("file", file, file.name);
    const xhr = new XMLHttpRequest();
    request = xhr;
    xhr.open("POST", app.dataset.predictUrl);
    xhr.responseType = "json";
    xhr.setRequestHeader("Accept", "application/json");
    xhr.upload.onprogress = (event) => {
      if (event.lengthComputable) bar.style.width = Math.round(90 * event.loaded / event.total) + "%";
    };
    xhr.upload.onload = () => {
      text.textContent = "The model is reading the image…";
      progress.classList.add("is-indeterminate");
      bar.style.width = "";
    };
    xhr.onload = () => {
      request = null;
      progress.classList.remove("is-indeterminate");
      const data = xhr.response;
      if (xhr.status === 200 && data && data.label) {
        renderResult(data, file.name);
      } else if (data && data.error) {
        showError(data.error.code, data.error.message, file.name, data.input_check);
      } else if (xhr.status === 413) {
        showError("too_large", "", file.name);
      } else {
        showError("internal_error", "the server answered with status " + xhr.status, file.name);
      }
    };
    xhr.onerror = () => {
      request = null;
      showError("network", "", file.name);
      $("error-title").textContent = "The server could not be reached.";
      $("error-detail").textContent = "Check the connection and try again.";
    };
    xhr.send(body);
  }

  input.addEventListener("change", () => analyse(input.files[0]));
  ["dragenter", "dragover"].forEach((type) => form.addEventListener(type, (event) => {
    event.preventDefault();
    if (!input.disabled) form.classList.add("is-dragover");
  }));
  ["dragleave", "dragend", "drop"].forEach((type) => form.addEventListener(type, () => {
    form.classList.remove("is-dragover");
  }));
  form.addEventListener("drop", (event) => {
    event.preventDefault();
    if (input.disabled) return;
    const files = event.dataTransfer && event.dataTransfer.files;
    if (files && files.length) analyse(files[0]);
  });
  form.addEventListener("submit", (event) => event.preventDefault());
  // A file dropped outside the drop zone must not make the browser navigate to it.
  ["dragover", "drop"].forEach((type) => window.addEventListener(type, (event) => {
    if (!form.contains(event.target)) event.preventDefault();
  }));
  xray.addEventListener("error", () => {
    // A file the browser cannot show (DICOM, or not an image at all): say so instead.
    if (xray.getAttribute("src")) {
      xray.removeAttribute("src");
      xray.hidden = true;
      noPreview.hidden = false;
    }
  });
  opacity.addEventListener("input", setOpacity);
  toggle.addEventListener("change", setHeatmapVisible);
  $("reset").addEventListener("click", resetViewer);
  setOpacity();

  // While the model loads, wait for the health check, then reload.
  if (app.dataset.ready !== "true" && app.dataset.failed !== "true") {
    const poll = () => fetch(app.dataset.healthUrl, { headers: { Accept: "application/json" } })
      .then((response) => { if (response.ok) window.location.reload(); else setTimeout(poll, 2000); })
      .catch(() => setTimeout(poll, 4000));
    setTimeout(poll, 1500);
  }
})();
