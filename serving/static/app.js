// The digit page. The server turns the drawing into the 28x28 MNIST image
// (POST /ui/mnist, trainer.mnist_image.to_mnist: one definition for serving and training),
// then the page asks TF Serving's REST API (:predict) about it. Corrections go to
// POST /ui/feedback with the image as drawn or uploaded.
'use strict';

const PEN_WIDTH = 18;      // canvas pixels of 280: MNIST's stroke once fitted into 20x20
const DEBOUNCE_MS = 150;   // predict this long after the pen last moved or lifted
const MODEL_REFRESH_MS = 30000;

const $ = (id) => document.getElementById(id);
const pad = $('pad');
const ink = pad.getContext('2d');
const state = {
  model: null,        // the served model's name (from /ui/config)
  feedback: false,    // corrections on (the server has a data dir)
  upload: null,       // the uploaded file while it is what the pad shows
  blank: true,
  image: null,        // the image last predicted: what a correction sends
  saved: false,       // a correction was stored for that image
  seq: 0,             // bumped on every change: answers for an older image are dropped
  timer: 0,
};

async function call(method, path, body, type) {
  let response;
  try {
    response = await fetch(path, {method, body, headers: type ? {'Content-Type': type} : {}});
  } catch (e) {
    return {ok: false, status: 0, doc: {error: `the server cannot be reached (${e.message})`}};
  }
  const text = await response.text();
  let doc;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    doc = {error: text || response.statusText};
  }
  return {ok: response.ok, status: response.status, headers: response.headers, doc};
}

// --- Drawing --------------------------------------------------------------------------

function resetPad() {
  ink.fillStyle = '#fff';
  ink.fillRect(0, 0, pad.width, pad.height);
  ink.strokeStyle = ink.fillStyle = '#000';
  ink.lineWidth = PEN_WIDTH;
  ink.lineCap = ink.lineJoin = 'round';
}

function padPoint(event) {
  const box = pad.getBoundingClientRect();
  return [(event.clientX - box.left - pad.clientLeft) * pad.width / pad.clientWidth,
          (event.clientY - box.top - pad.clientTop) * pad.height / pad.clientHeight];
}

function stroke(from, to) {
  ink.beginPath();
  ink.moveTo(...from);
  ink.lineTo(...to);
  ink.stroke();
}

let pen = null;   // the last point of the stroke being drawn

pad.addEventListener('pointerdown', (event) => {
  if (event.button !== 0) return;
  event.preventDefault();
  pad.setPointerCapture(event.pointerId);
  pen = padPoint(event);
  stroke(pen, pen);
  drawn();
});

pad.addEventListener('pointermove', (event) => {
  if (!pen) return;
  const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
  for (const e of events.length ? events : [event]) {
    const point = padPoint(e);
    stroke(pen, point);
    pen = point;
  }
  drawn();
});

for (const type of ['pointerup', 'pointercancel']) {
  pad.addEventListener(type, () => { pen = null; });
}

function drawn() {
  state.upload = null;
  state.blank = false;
  schedule(DEBOUNCE_MS);
}

function clearAll() {
  state.upload = null;
  state.blank = true;
  state.image = null;
  state.seq += 1;
  clearTimeout(state.timer);
  resetPad();
  showSeen(null);
  showPrediction(null);
  hideError();
  document.body.dataset.state = 'idle';
  updateDigits();
}

// --- Upload ---------------------------------------------------------------------------

async function useFile(file) {
  hideError();
  resetPad();
  state.upload = file;
  state.blank = false;
  try {   // show it on the pad, fitted; the server says why when it cannot be read
    const bitmap = await createImageBitmap(file);
    const scale = Math.min(pad.width / bitmap.width, pad.height / bitmap.height);
    const [w, h] = [bitmap.width * scale, bitmap.height * scale];
    ink.drawImage(bitmap, (pad.width - w) / 2, (pad.height - h) / 2, w, h);
  } catch (e) { /* the server's answer below names the problem */ }
  schedule(0);
}

$('upload').addEventListener('click', () => $('file').click());
$('file').addEventListener('change', () => {
  const file = $('file').files[0];
  $('file').value = '';
  if (file) useFile(file);
});
$('clear').addEventListener('click', clearAll);

// --- Prediction -----------------------------------------------------------------------

function schedule(delay) {
  state.seq += 1;
  state.saved = false;
  document.body.dataset.state = 'pending';
  clearTimeout(state.timer);
  state.timer = setTimeout(predict, delay);
  updateDigits();
}

async function predict() {
  const seq = state.seq;
  if (state.blank || !state.model) {
    document.body.dataset.state = 'idle';
    return;
  }
  document.body.dataset.state = 'busy';
  const image = state.upload || await new Promise((done) => pad.toBlob(done, 'image/png'));
  const seen = await call('POST', '/ui/mnist', image, image.type || 'image/png');
  if (seq !== state.seq) return;
  if (!seen.ok) {
    const upload = state.upload;
    clearAll();
    showError(upload ? `Cannot use ${upload.name}: ${seen.doc.error}` : seen.doc.error);
    return;
  }
  showSeen(seen.doc.pixels);
  const body = JSON.stringify({signature_name: 'serving_default', instances: [seen.doc.pixels]});
  const answer = await call('POST', `/v1/models/${encodeURIComponent(state.model)}:predict`,
                            body, 'application/json');
  if (seq !== state.seq) return;
  if (answer.ok) {
    hideError();
    state.image = image;
    showPrediction(answer.doc.predictions[0]);
  } else {
    showError(`The model server answered: ${answer.doc.error}`);
  }
  document.body.dataset.state = 'idle';
  updateDigits();
}

function showSeen(pixels) {
  const seen = $('seen').getContext('2d');
  const data = seen.createImageData(28, 28);
  for (let i = 0; i < 28 * 28; i += 1) {
    const v = pixels ? pixels[Math.floor(i / 28)][i % 28] : 0;
    data.data.set([v, v, v, 255], i * 4);
  }
  seen.putImageData(data, 0, 0);
}

const bars = [];
for (let digit = 0; digit < 10; digit += 1) {
  const row = document.createElement('li');
  row.innerHTML = `<span class="digit">${digit}</span><span class="track"><span class="fill">` +
                  '</span></span><span class="value">–</span>';
  $('bars').append(row);
  bars.push(row);
}

function showPrediction(prediction) {
  const answer = $('answer');
  const probabilities = prediction ? prediction.probabilities : Array(10).fill(0);
  const top = prediction ? prediction.classes : -1;
  bars.forEach((row, digit) => {
    const percent = (probabilities[digit] * 100).toFixed(1);
    row.classList.toggle('top', digit === top);
    row.querySelector('.fill').style.width = `${probabilities[digit] * 100}%`;
    row.querySelector('.value').textContent = prediction ? `${percent}%` : '–';
    row.setAttribute('aria-label', prediction ? `${digit}: ${percent}%` : `${digit}: none`);
  });
  if (prediction) {
    answer.dataset.digit = top;
    answer.innerHTML = `<strong>${top}</strong> ` +
                       `${(probabilities[top] * 100).toFixed(1)}% sure`;
  } else {
    delete answer.dataset.digit;
    answer.innerHTML = '<span class="hint">Draw a digit or upload an image.</span>';
  }
}

function showError(message) {
  $('error').textContent = message;
  $('error').hidden = false;
}

function hideError() {
  $('error').hidden = true;
  $('error').textContent = '';
}

// --- Corrections ----------------------------------------------------------------------

const digits = [];
for (let digit = 0; digit < 10; digit += 1) {
  const button = document.createElement('button');
  button.type = 'button';
  button.textContent = digit;
  button.setAttribute('aria-label', `It was a ${digit}`);
  button.addEventListener('click', () => correct(digit));
  $('digits').append(button);
  digits.push(button);
}

function updateDigits() {
  const ready = state.feedback && state.image && !state.saved &&
                document.body.dataset.state === 'idle';
  digits.forEach((button) => { button.disabled = !ready; });
}

function note(text, kind) {
  $('feedback').textContent = text;
  $('feedback').className = kind || '';
}

function waiting(count) {
  return `${count} correction${count === 1 ? '' : 's'} wait${count === 1 ? 's' : ''} ` +
         'for the next training run.';
}

function base64(blob) {
  return new Promise((done, fail) => {
    const reader = new FileReader();
    reader.onload = () => done(reader.result.slice(reader.result.indexOf(',') + 1));
    reader.onerror = () => fail(reader.error);
    reader.readAsDataURL(blob);
  });
}

async function correct(label) {
  if (!state.feedback || !state.image || state.saved) return;
  state.saved = true;
  updateDigits();
  const body = JSON.stringify({label, image: await base64(state.image)});
  const answer = await call('POST', '/ui/feedback', body, 'application/json');
  if (answer.ok) {
    note(`Saved as a ${label}. ${waiting(answer.doc.pending)}`, 'saved');
  } else {
    state.saved = false;
    const retry = answer.status === 429 ? ` Try again in ${answer.headers.get('Retry-After')} s.` : '';
    note(`Not saved: ${answer.doc.error}.${retry}`, 'failed');
    updateDigits();
  }
}

document.addEventListener('keydown', (event) => {
  if (event.ctrlKey || event.metaKey || event.altKey || event.target.matches('input, textarea')) {
    return;
  }
  if (/^[0-9]$/.test(event.key) && !digits[Number(event.key)].disabled) {
    event.preventDefault();
    digits[Number(event.key)].click();
  } else if (event.key === 'Delete' || event.key === 'Backspace') {
    event.preventDefault();
    clearAll();
  }
});

// --- The served model -----------------------------------------------------------------

async function refreshModel() {
  const path = `/v1/models/${encodeURIComponent(state.model)}`;
  const [status, metadata] = await Promise.all([call('GET', path), call('GET', `${path}/metadata`)]);
  const label = $('model');
  if (!metadata.ok) {
    label.textContent = `Model ${state.model}: not available (${metadata.doc.error})`;
    return;
  }
  const version = metadata.doc.model_spec.version;
  const loaded = status.ok ? status.doc.model_version_status
      .filter((s) => s.state === 'AVAILABLE').map((s) => s.version) : [];
  label.textContent = `Model ${state.model}, version ${version}` +
      (loaded.length > 1 ? ` (loaded: ${loaded.join(', ')})` : '');
  label.dataset.version = version;
}

async function start() {
  resetPad();
  showSeen(null);
  showPrediction(null);
  updateDigits();
  const config = await call('GET', '/ui/config');
  if (!config.ok) {
    showError(`The page's server answered: ${config.doc.error}`);
    return;
  }
  state.model = config.doc.model_name;
  state.feedback = config.doc.feedback;
  refreshModel();
  setInterval(refreshModel, MODEL_REFRESH_MS);
  if (!state.feedback) {
    note('Corrections are off: this server was started without --data-dir.', 'failed');
    return;
  }
  const pending = await call('GET', '/ui/pending');
  if (pending.ok) note(waiting(pending.doc.pending));
}

start();
