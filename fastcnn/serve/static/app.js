// The draw-a-digit page of fastcnn-serve: draws with pointer events, sends the pad (or a dropped
// image) to POST /api/predict?detail=1 whenever it changed and no request is in flight, and shows the
// answer. No libraries, no network beyond this server.
"use strict";

const pad = document.getElementById("pad");
const ctx = pad.getContext("2d");
const statusLine = document.getElementById("status");
const INK = 20;                       // stroke width in pad pixels (the pad is 280 x 280)
let drawing = false, last = null, blank = true;
let inFlight = false, dirty = false, pendingBlob = null;
let answers = 0;

function clearPad() {
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, pad.width, pad.height);
  blank = true;
}

function point(e) {
  const r = pad.getBoundingClientRect();
  return [(e.clientX - r.left) * pad.width / r.width, (e.clientY - r.top) * pad.height / r.height];
}

function stroke(from, to) {
  ctx.strokeStyle = "#000";
  ctx.lineWidth = INK;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  ctx.beginPath();
  ctx.moveTo(from[0], from[1]);
  ctx.lineTo(to[0], to[1]);
  ctx.stroke();
  blank = false;
}

pad.addEventListener("pointerdown", (e) => {
  e.preventDefault();
  pad.setPointerCapture(e.pointerId);
  drawing = true;
  last = point(e);
  stroke(last, last);
  changed();
});
pad.addEventListener("pointermove", (e) => {
  if (!drawing) return;
  const events = e.getCoalescedEvents ? e.getCoalescedEvents() : [e];
  for (const ev of (events.length ? events : [e])) {
    const p = point(ev);
    stroke(last, p);
    last = p;
  }
  changed();
});
for (const type of ["pointerup", "pointercancel"]) {
  pad.addEventListener(type, () => { if (drawing) { drawing = false; changed(); } });
}

document.getElementById("clear").addEventListener("click", () => {
  clearPad();
  dirty = false;
  pendingBlob = null;
  reset();
  setStatus("Draw a digit.");
});

function setStatus(text, error = false) {
  statusLine.textContent = text;
  statusLine.classList.toggle("error", error);
}

// Something changed: send it now, or as soon as the request in flight has been answered.
function changed() {
  if (blank) return;
  dirty = true;
  if (!inFlight) send();
}

function send() {
  dirty = false;
  inFlight = true;
  document.body.dataset.busy = "1";
  if (pendingBlob) {
    const blob = pendingBlob;
    pendingBlob = null;
    post(blob);
  } else {
    pad.toBlob(post, "image/png");
  }
}

async function post(blob) {
  try {
    const res = await fetch("/api/predict?detail=1", {method: "POST", body: blob,
                                                      headers: {"Content-Type": blob.type || "image/png"}});
    const body = await res.json();
    if (!res.ok) {
      setStatus(body.error || `error ${res.status}`, true);
    } else {
      show(body);
      setStatus(body.inverted ? "Dark ink on light paper: inverted, as MNIST's digits are light on black."
                              : "Light ink on a dark background.");
    }
  } catch (err) {
    setStatus(`no answer from the server: ${err}`, true);
  } finally {
    inFlight = false;
    if (dirty) send();
    else document.body.dataset.busy = "0";
  }
}

// ---------------------------------------------------------------------------- images and drops

function loadFile(file) {
  if (!file) return;
  if (!/^image\/(png|jpeg)$/.test(file.type) && !/\.(png|jpe?g)$/i.test(file.name)) {
    setStatus(`${file.name}: not a PNG or JPEG image`, true);
    return;
  }
  const url = URL.createObjectURL(file);
  const img = new Image();
  img.onload = () => {
    clearPad();
    const s = Math.min(pad.width / img.width, pad.height / img.height);
    const w = img.width * s, h = img.height * s;
    ctx.drawImage(img, (pad.width - w) / 2, (pad.height - h) / 2, w, h);
    URL.revokeObjectURL(url);
  };
  img.onerror = () => URL.revokeObjectURL(url);
  img.src = url;
  blank = false;
  pendingBlob = file;                 // the file itself goes to the server, not its preview
  changed();
}

document.getElementById("file").addEventListener("change", (e) => loadFile(e.target.files[0]));
document.addEventListener("dragover", (e) => { e.preventDefault(); document.body.classList.add("dragging"); });
document.addEventListener("dragleave", () => document.body.classList.remove("dragging"));
document.addEventListener("drop", (e) => {
  e.preventDefault();
  document.body.classList.remove("dragging");
  loadFile(e.dataTransfer && e.dataTransfer.files[0]);
});

// ---------------------------------------------------------------------------------- the answer

const bars = document.getElementById("bars");

function buildBars(classes) {
  bars.textContent = "";
  for (const name of classes) {
    const row = document.createElement("div");
    row.className = "bar";
    row.innerHTML = '<span class="name"></span><span class="track"><span class="fill"></span></span><span class="p"></span>';
    row.querySelector(".name").textContent = name;
    bars.appendChild(row);
  }
}

function reset() {
  document.getElementById("predicted").textContent = "-";
  document.getElementById("confidence").textContent = "";
  for (const row of bars.children) {
    row.classList.remove("top");
    row.querySelector(".fill").style.width = "0";
    row.querySelector(".p").textContent = "";
  }
  for (const id of ["input", "saliency", "map0", "map1"]) {
    const c = document.getElementById(id);
    c.getContext("2d").clearRect(0, 0, c.width, c.height);
  }
}

function show(a) {
  if (bars.children.length !== a.classes.length) buildBars(a.classes);
  a.probabilities.forEach((p, k) => {
    const row = bars.children[k];
    row.classList.toggle("top", k === a.predicted);
    row.querySelector(".fill").style.width = `${(100 * p).toFixed(1)}%`;
    row.querySelector(".p").textContent = `${(100 * p).toFixed(1)}%`;
  });
  document.getElementById("predicted").textContent = a.classes[a.predicted];
  document.getElementById("confidence").textContent = `(${(100 * a.probabilities[a.predicted]).toFixed(1)}%)`;
  drawInput(a.input);
  if (a.saliency) drawSaliency(a.input, decode(a.saliency));
  (a.maps || []).slice(0, 2).forEach((m, i) => drawMaps(`map${i}`, m));
  answers += 1;
  document.body.dataset.answers = String(answers);
  document.body.dataset.predicted = a.classes[a.predicted];
}

function decode(q) {
  const bin = atob(q.data);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return {shape: q.shape, max: q.max, values: out};
}

function drawInput(rows) {
  const c = document.getElementById("input");
  const h = rows.length, w = rows[0].length;
  c.width = w; c.height = h;
  const im = c.getContext("2d").createImageData(w, h);
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) {
    const v = Math.round(255 * rows[y][x]), i = 4 * (y * w + x);
    im.data[i] = im.data[i + 1] = im.data[i + 2] = v;
    im.data[i + 3] = 255;
  }
  c.getContext("2d").putImageData(im, 0, 0);
}

// A warm ramp (black - purple - orange - yellow) for values in [0, 1].
function heat(t) {
  const stops = [[0, 0, 4], [81, 18, 124], [183, 55, 121], [252, 137, 97], [252, 253, 191]];
  const s = Math.min(0.9999, Math.max(0, t)) * (stops.length - 1), i = Math.floor(s), f = s - i;
  return stops[i].map((v, j) => Math.round(v + f * (stops[i + 1][j] - v)));
}

function drawSaliency(rows, sal) {
  const c = document.getElementById("saliency");
  const [h, w] = sal.shape;
  c.width = w; c.height = h;
  const im = c.getContext("2d").createImageData(w, h);
  for (let k = 0; k < h * w; k++) {
    const g = 0.35 * 255 * rows[Math.floor(k / w)][k % w], t = sal.values[k] / 255, [r, gg, b] = heat(t);
    const a = Math.min(1, 1.5 * t);
    im.data[4 * k] = g * (1 - a) + r * a;
    im.data[4 * k + 1] = g * (1 - a) + gg * a;
    im.data[4 * k + 2] = g * (1 - a) + b * a;
    im.data[4 * k + 3] = 255;
  }
  c.getContext("2d").putImageData(im, 0, 0);
}

function drawMaps(id, m) {
  const q = decode(m);
  const [K, h, w] = q.shape, cols = K <= 32 ? 8 : 16, rows = Math.ceil(K / cols), gap = 1;
  const c = document.getElementById(id);
  c.width = cols * (w + gap) - gap;
  c.height = rows * (h + gap) - gap;
  const g = c.getContext("2d");
  g.fillStyle = "#777";
  g.fillRect(0, 0, c.width, c.height);
  const im = g.createImageData(w, h);
  for (let k = 0; k < K; k++) {
    for (let p = 0; p < h * w; p++) {
      const [r, gg, b] = heat(q.values[k * h * w + p] / 255);
      im.data[4 * p] = r; im.data[4 * p + 1] = gg; im.data[4 * p + 2] = b; im.data[4 * p + 3] = 255;
    }
    g.putImageData(im, (k % cols) * (w + gap), Math.floor(k / cols) * (h + gap));
  }
  document.getElementById(`${id}-caption`).textContent = `${m.layer}: ${K} maps ${h}\u00d7${w} (brightest = ${m.max.toFixed(2)})`;
}

clearPad();
fetch("/api/info").then((r) => r.json()).then((info) => buildBars(info.classes)).catch(() => {});
