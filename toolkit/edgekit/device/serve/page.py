"""The web page at ``/``: one HTML document with its CSS and JavaScript inline.

Nothing is fetched from anywhere but this server (the Content-Security-Policy sent with it
makes the browser refuse anything else), so it works on a machine without internet. It asks
``/v1/model`` for the model's name and parity record, and posts the chosen or dropped image
to ``/v1/predict?prepared=true`` to show the model's input beside the top classes.
"""

CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                           "img-src 'self' data: blob:; connect-src 'self'; form-action 'none'; "
                           "base-uri 'none'")

HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>edgekit serve</title>
<style>
  :root { font-family: system-ui, sans-serif; color: #1d2433; background: #f4f6fa; }
  body { max-width: 860px; margin: 2rem auto; padding: 0 1rem; }
  h1 { font-size: 1.4rem; margin: 0 0 .2rem; }
  .muted { color: #5b6478; font-size: .9rem; }
  #drop { margin: 1.2rem 0; padding: 1.6rem; border: 2px dashed #8a94a8; border-radius: 10px;
          background: #fff; text-align: center; cursor: pointer; }
  #drop.over { border-color: #2f6fe4; background: #eef3fd; }
  .row { display: flex; gap: 1.2rem; flex-wrap: wrap; align-items: flex-start; }
  figure { margin: 0; text-align: center; }
  figure img { width: 168px; height: 168px; object-fit: contain; background: #fff;
               border: 1px solid #d5dae3; border-radius: 6px; }
  #prepared { image-rendering: pixelated; background: #000; }
  figcaption { font-size: .8rem; color: #5b6478; margin-top: .3rem; }
  #answer { flex: 1; min-width: 260px; }
  #label { display: block; font-size: 1.6rem; font-weight: 650; margin-bottom: .6rem; }
  .bar { display: grid; grid-template-columns: 8.5rem 1fr 4rem; gap: .5rem; align-items: center;
         margin: .25rem 0; font-size: .9rem; }
  .track { background: #e2e6ee; border-radius: 4px; height: .9rem; overflow: hidden; }
  .fill { background: #2f6fe4; height: 100%; }
  .bar:first-child .fill { background: #14915f; }
  #error { color: #b3261e; font-weight: 600; }
  ul { margin: .4rem 0; padding-left: 1.2rem; font-size: .85rem; color: #5b6478; }
  [hidden] { display: none !important; }
</style>
</head>
<body>
<h1>edgekit serve</h1>
<div id="model" class="muted">loading the model's record…</div>
<div id="drop" tabindex="0">
  <strong>Drop an image here</strong> or <label>choose a file
  <input id="file" type="file" accept="image/*"></label>
  <div class="muted">PNG, JPEG, BMP, GIF, WebP, TIFF… — prepared exactly as the model was trained</div>
</div>
<div id="error" role="alert" hidden></div>
<div class="row" id="result" hidden>
  <figure><img id="original" alt="the image you chose"><figcaption>your image</figcaption></figure>
  <figure><img id="prepared" alt="the model's input">
    <figcaption id="prepared-caption">as the model sees it</figcaption></figure>
  <div id="answer">
    <output id="label" aria-live="polite"></output>
    <div id="bars"></div>
    <ul id="steps"></ul>
    <div id="timing" class="muted"></div>
  </div>
</div>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const percent = (p) => (100 * p).toFixed(p >= 0.999995 || p < 0.0005 ? 0 : 1) + " %";

async function showModel() {
  try {
    const response = await fetch("/v1/model");
    const model = await response.json();
    const m = model.metrics || {};
    const parity = m.agreement === undefined ? "no parity record" :
      `accuracy ${percent(m.accuracy)}, top-1 agreement with the trained model ` +
      `${percent(m.agreement)} on ${(m.images || 0).toLocaleString("en")} test images` +
      (m.parity_passed === undefined ? "" : m.parity_passed ? " — parity passed" : " — parity FAILED");
    $("model").textContent = `${model.file} (${model.precision}, ${model.contract.width}×` +
      `${model.contract.height}×${model.contract.channels}, ${model.labels.length} classes): ${parity}`;
    $("model").dataset.file = model.file;
  } catch (error) {
    $("model").textContent = "could not read /v1/model: " + error;
  }
}

function showError(text) {
  $("error").textContent = text;
  $("error").hidden = false;
}

async function classify(file) {
  $("error").hidden = true;
  $("label").textContent = "…";
  $("original").src = URL.createObjectURL(file);
  const form = new FormData();
  form.append("image", file, file.name);
  let answer;
  try {
    const response = await fetch("/v1/predict?prepared=true&top_k=5", {method: "POST", body: form});
    answer = await response.json();
    if (!response.ok) {
      showError(`${response.status} ${answer.error}: ${answer.detail}`);
      $("result").hidden = true;
      return;
    }
  } catch (error) {
    showError("the server did not answer: " + error); return;
  }
  const result = answer.results[0];
  $("prepared").src = result.prepared_png;
  $("label").textContent = result.label;
  $("bars").replaceChildren(...result.predictions.map((p) => {
    const bar = document.createElement("div");
    bar.className = "bar";
    const name = document.createElement("span");
    name.textContent = p.label;
    const track = document.createElement("div");
    track.className = "track";
    const fill = document.createElement("div");
    fill.className = "fill";
    fill.style.width = (100 * p.probability).toFixed(2) + "%";
    track.append(fill);
    const value = document.createElement("span");
    value.textContent = percent(p.probability);
    bar.append(name, track, value);
    return bar;
  }));
  $("steps").replaceChildren(...result.preprocessing.map((step) => {
    const item = document.createElement("li");
    item.textContent = step;
    return item;
  }));
  const t = answer.time_ms;
  $("timing").textContent = `${t.total.toFixed(1)} ms in the server: read ${t.read.toFixed(1)}, ` +
    `prepare ${t.prepare.toFixed(1)}, queue ${t.queue.toFixed(1)}, model ${t.model.toFixed(2)}`;
  $("result").hidden = false;
}

const drop = $("drop");
$("file").addEventListener("change", (event) => {
  if (event.target.files.length) classify(event.target.files[0]);
});
drop.addEventListener("click", (event) => { if (event.target === drop) $("file").click(); });
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  if (event.dataTransfer.files.length) classify(event.dataTransfer.files[0]);
});
showModel();
</script>
</body>
</html>
"""
