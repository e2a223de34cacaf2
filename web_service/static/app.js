// The page: plain ES module, no build step. Talks to the /v1 JSON API only,
// with the access token (if one is set) on every request; thumbnails are
// fetched the same way and shown as blob: URLs.
const $ = (id) => document.getElementById(id);
const collection = () => $("collection").value.trim() || "images";
const enc = encodeURIComponent;
let thumbUrls = [];
let watching = null; // AbortController of the job stream

const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;

function headers(extra = {}) {
  const token = $("token").value.trim();
  return token ? { ...extra, Authorization: `Bearer ${token}` } : extra;
}

function say(text, kind = "error") {
  const box = $("message");
  box.textContent = text;
  box.className = kind;
  box.hidden = !text;
}

// Every call: JSON answer, or an Error carrying the server's sentence.
async function call(path, { method = "GET", body, json } = {}) {
  const init = { method, headers: headers(json ? { "Content-Type": "application/json" } : {}) };
  if (json) init.body = JSON.stringify(json);
  else if (body) init.body = body;
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    throw new Error(`cannot reach the server (${err.message})`);
  }
  if (!response.ok) throw await failure(response);
  return response.json();
}

async function failure(response) {
  let detail = response.statusText;
  try {
    const body = await response.json();
    detail = body.detail || detail;
  } catch { /* not JSON */ }
  const hint = { 401: " (set the access token)", 403: " (this token's role may not do that)" }[response.status] || "";
  return new Error(`${response.status}: ${detail}${hint}`);
}

// Names of the collections whose model takes a text change with the image,
// and of those that hold text vectors (search by words).
let composing = new Set();
let byWords = new Set();

function showCompose() {
  $("compose").hidden = !composing.has(collection());
  $("words").placeholder = byWords.has(collection())
    ? "or describe it: red sneakers, a straw hat…"
    : "or describe it (this collection has no text vectors yet)";
}

async function refreshCollections() {
  try {
    const { collections } = await call("/v1/collections");
    $("collections").replaceChildren(...collections.map((c) => new Option(`${c.count} images`, c.name)));
    composing = new Set(collections.filter((c) => c.composes).map((c) => c.name));
    byWords = new Set(collections.filter((c) => c.words).map((c) => c.name));
    if (!collections.some((c) => c.name === collection()) && collections.length && !$("collection").dataset.touched) {
      $("collection").value = collections[0].name;
    }
  } catch (err) {
    say(`Collections: ${err.message}`);
  }
  showCompose();
  await refreshCount();
}

async function refreshCount() {
  try {
    const { count, pending } = await call(`/v1/collections/${enc(collection())}/count`);
    $("count").textContent = plural(count, "image") + (pending ? `, ${pending} pending` : "");
  } catch (err) {
    $("count").textContent = err.message.startsWith("404") ? "empty" : "count unavailable";
  }
}

// -- search ---------------------------------------------------------------

async function search(file) {
  if (!file) return;
  if (file.type && !file.type.startsWith("image/")) {
    say(`${file.name || "that file"} is not an image (${file.type})`);
    return;
  }
  say("");
  const preview = $("query-preview");
  URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  const form = new FormData();
  form.append("image", file, file.name || "pasted-image");
  form.append("top_k", $("topk").value);
  if ($("any-rotation").checked) form.append("any_rotation", "true");
  const text = $("compose").hidden ? "" : $("compose-text").value.trim();
  if (text) form.append("text", text);
  $("results").replaceChildren();
  $("results").setAttribute("aria-busy", "true");
  try {
    const { hits } = await call(`/v1/collections/${enc(collection())}/search`, { method: "POST", body: form });
    showHits(hits);
    if (!hits.length) say("No similar images in this collection yet: index a folder first.", "info");
  } catch (err) {
    say(`Search failed: ${err.message}`);
  } finally {
    $("results").removeAttribute("aria-busy");
  }
}

// A text alone: search by words (collections whose model has a text side).
async function searchWords(text) {
  if (!text) return;
  say("");
  $("query-preview").hidden = true;
  const form = new FormData();
  form.append("text", text);
  form.append("top_k", $("topk").value);
  $("results").replaceChildren();
  $("results").setAttribute("aria-busy", "true");
  try {
    const { hits } = await call(`/v1/collections/${enc(collection())}/search`, { method: "POST", body: form });
    showHits(hits);
    if (!hits.length) say("Nothing in this collection matches those words yet.", "info");
  } catch (err) {
    say(`Search failed: ${err.message}`);
  } finally {
    $("results").removeAttribute("aria-busy");
  }
}

function showHits(hits) {
  thumbUrls.forEach((u) => URL.revokeObjectURL(u));
  thumbUrls = [];
  $("results").replaceChildren(...hits.map((hit, i) => {
    const item = document.createElement("li");
    item.className = "hit";
    item.dataset.path = hit.path;
    const img = document.createElement("img");
    img.className = "thumb";
    img.alt = hit.path;
    img.loading = "lazy";
    const meta = document.createElement("div");
    meta.className = "meta";
    const score = document.createElement("div");
    score.className = "score";
    score.textContent = `#${i + 1} · score ${hit.score.toFixed(3)}`;
    const path = document.createElement("div");
    path.className = "path";
    path.textContent = hit.path + (hit.more_paths ? ` (+${hit.more_paths} more)` : "");
    meta.append(score, path);
    item.append(img, meta);
    loadThumb(img, hit.thumbnail_url);
    return item;
  }));
}

async function loadThumb(img, url) {
  try {
    const response = await fetch(url, { headers: headers() });
    if (!response.ok) throw new Error(String(response.status));
    const src = URL.createObjectURL(await response.blob());
    thumbUrls.push(src);
    img.src = src;
  } catch {
    const none = document.createElement("div");
    none.className = "thumb none";
    none.textContent = "no thumbnail";
    img.replaceWith(none);
  }
}

// -- jobs -------------------------------------------------------------------

function showJob(job) {
  const bar = $("job-bar");
  bar.hidden = false;
  bar.max = Math.max(job.total, 1);
  bar.value = job.state === "succeeded" && job.total === 0 ? 1 : job.done;
  const pct = job.total ? Math.floor((100 * job.done) / job.total) : job.terminal ? 100 : 0;
  bar.textContent = `${pct}%`;
  $("job-text").textContent = `${job.state}: ${job.done} / ${plural(job.total, "file")} (${pct}%) · ` +
    `${job.indexed} indexed, ${plural(job.duplicates, "duplicate")}, ${job.failed} failed` +
    (job.message ? ` · ${job.message}` : "");
  $("job-text").dataset.state = job.state;
  $("cancel-job").hidden = job.terminal;
  $("cancel-job").dataset.job = job.job_id;
}

function showJobErrors(job) {
  const box = $("job-errors-box");
  box.hidden = !job.errors.length;
  box.open = job.errors.length > 0 && job.errors.length <= 20;
  const omitted = job.failed - job.errors.length;
  $("job-errors-title").textContent = `${plural(job.failed, "file")} failed` +
    (omitted > 0 ? ` (the first ${job.errors.length} listed)` : "");
  $("job-errors").replaceChildren(...job.errors.map((e) => {
    const li = document.createElement("li");
    li.textContent = `${e.path}: ${e.reason}`;
    return li;
  }));
}

// Server-Sent Events read with fetch, so that the token header goes along.
async function watch(jobId) {
  watching?.abort();
  watching = new AbortController();
  let last = null;
  try {
    const response = await fetch(`/v1/jobs/${enc(jobId)}/events`, { headers: headers(), signal: watching.signal });
    if (!response.ok) throw await failure(response);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const event = /^event: (.*)$/m.exec(block)?.[1];
        const data = /^data: (.*)$/m.exec(block)?.[1];
        if (!data) continue;
        const payload = JSON.parse(data);
        if (event === "error") throw new Error(payload.detail);
        last = payload;
        showJob(last);
      }
    }
  } catch (err) {
    if (err.name !== "AbortError") say(`Watching the job: ${err.message}`);
    return;
  }
  if (last) {
    const full = await call(`/v1/jobs/${enc(last.job_id)}`); // with its file errors
    showJob(full);
    showJobErrors(full);
    if (full.state === "failed") say(`The job failed: ${full.message}`);
    else if (full.failed) say(`Indexed, with ${plural(full.failed, "file")} failing (listed under the bar).`, "info");
    await refreshCollections();
  }
}

async function startJob(event) {
  event.preventDefault();
  say("");
  $("job-errors-box").hidden = true;
  $("start-job").disabled = true;
  try {
    const job = await call("/v1/jobs", {
      method: "POST",
      json: { collection: collection(), folder: $("folder").value.trim(), recursive: true },
    });
    showJob(job);
    await watch(job.job_id);
  } catch (err) {
    say(`Indexing: ${err.message}`);
  } finally {
    $("start-job").disabled = false;
  }
}

async function cancelJob() {
  try {
    showJob(await call(`/v1/jobs/${enc($("cancel-job").dataset.job)}/cancel`, { method: "POST" }));
  } catch (err) {
    say(`Cancel: ${err.message}`);
  }
}

// -- delete -------------------------------------------------------------------

async function deletePrefix(event) {
  event.preventDefault();
  const prefix = $("prefix").value;
  if (!confirm(`Delete every image of "${collection()}" whose path starts with ${prefix}?`)) return;
  try {
    const done = await call(`/v1/collections/${enc(collection())}/delete`, { method: "POST", json: { path_prefix: prefix } });
    say(`Deleted ${plural(done.deleted, "image")} (${plural(done.paths_removed, "path")}).`, "info");
    await refreshCollections();
  } catch (err) {
    say(`Delete: ${err.message}`);
  }
}

async function dropCollection() {
  const name = collection();
  if (!confirm(`Drop the collection "${name}" and every image in it? This cannot be undone.`)) return;
  try {
    const { dropped } = await call(`/v1/collections/${enc(name)}`, { method: "DELETE" });
    say(dropped ? `Dropped ${name}.` : `There was no collection ${name}.`, "info");
    $("results").replaceChildren();
    await refreshCollections();
  } catch (err) {
    say(`Drop: ${err.message}`);
  }
}

// -- wiring ------------------------------------------------------------------

function wire() {
  const zone = $("drop-zone");
  const input = $("file-input");
  zone.addEventListener("click", () => input.click());
  zone.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") input.click(); });
  input.addEventListener("change", () => search(input.files[0]));
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    search(e.dataTransfer.files[0]);
  });
  document.addEventListener("paste", (e) => {
    const file = [...e.clipboardData.files].find((f) => f.type.startsWith("image/"));
    if (file) search(file);
  });
  $("words-form").addEventListener("submit", (e) => { e.preventDefault(); searchWords($("words").value.trim()); });
  $("job-form").addEventListener("submit", startJob);
  $("cancel-job").addEventListener("click", cancelJob);
  $("delete-form").addEventListener("submit", deletePrefix);
  $("drop-collection").addEventListener("click", dropCollection);
  $("collection").addEventListener("change", () => { $("collection").dataset.touched = "1"; showCompose(); refreshCount(); });
  $("token").addEventListener("change", () => {
    sessionStorage.setItem("imagesearch-token", $("token").value);
    refreshCollections();
  });
  $("token").value = sessionStorage.getItem("imagesearch-token") || "";
  refreshCollections();
}

wire();
