// unite-search page: plain JS, no build step, same-origin API (search, info: relative to the page, so it
// works under a path prefix too).
"use strict";

const $ = (sel) => document.querySelector(sel);
const TOKEN_KEY = "unite-search-token";
const files = { image: null, video: null };  // at most one of each
let seq = 0;  // answers to older searches are dropped

// ---- token: ?token=T wins, then localStorage ----
function initToken() {
  const url = new URL(location.href);
  const t = url.searchParams.get("token");
  if (t !== null) {
    saveToken(t);
    url.searchParams.delete("token");  // keep it out of history and screenshots
    history.replaceState(null, "", url.pathname + url.search + url.hash);
  }
  $("#token").value = token();
  $("#token").addEventListener("change", (e) => { saveToken(e.target.value.trim()); loadInfo(); });
}
function token() {
  try { return localStorage.getItem(TOKEN_KEY) || ""; } catch { return ""; }
}
function saveToken(t) {
  try { t ? localStorage.setItem(TOKEN_KEY, t) : localStorage.removeItem(TOKEN_KEY); } catch { /* private mode */ }
}
function authHeaders() {
  const t = token();
  return t ? { Authorization: "Bearer " + t } : {};
}
// <img>/<video> cannot send headers: pass the token as a query parameter instead.
function withToken(url) {
  const t = token();
  if (!url || !t) return url;
  const u = new URL(url, location.href);
  u.searchParams.set("token", t);
  return u.origin === location.origin ? u.pathname + u.search + u.hash : u.href;
}

// ---- fetch helper: JSON in, JSON out, errors carry the server's `detail` ----
async function api(path, opts = {}) {
  const res = await fetch(path, { ...opts, headers: { ...authHeaders(), ...(opts.headers || {}) } });
  const raw = await res.text();
  let data = null;
  try { data = raw ? JSON.parse(raw) : null; } catch { /* not JSON */ }
  if (!res.ok) {
    let msg = data && data.detail !== undefined ? data.detail : raw.slice(0, 500) || res.statusText;
    if (Array.isArray(msg)) msg = msg.map((d) => (d && d.msg) || JSON.stringify(d)).join("; ");
    else if (typeof msg !== "string") msg = JSON.stringify(msg);
    const kind = data && data.error ? data.error + ": " : "";
    const hint = res.status === 401 || res.status === 403 ? " (set the API token under settings)" : "";
    throw new Error(`${kind}${msg || "request failed"} [HTTP ${res.status}]${hint}`);
  }
  return data;
}

// ---- /info -> target selector (read at start, after each search and when a token is set) ----
const INFO_FAILED = "could not read the index: ";
async function loadInfo() {
  let info;
  try { info = await api("info"); } catch (e) { showError(`${INFO_FAILED}${e.message}`); return; }
  if ($("#error").textContent.startsWith(INFO_FAILED)) hideError();  // read now (a token was set, say)
  let names = [];
  const shards = info && info.shards;
  if (Array.isArray(shards)) names = shards.map((s) => (typeof s === "string" ? s : s && s.name)).filter(Boolean);
  else if (shards && typeof shards === "object") names = Object.keys(shards);
  const sel = $("#target");
  const keep = sel.value;
  sel.replaceChildren(new Option("auto", ""));
  for (const n of names) {
    const rows = shards && !Array.isArray(shards) && shards[n] && shards[n].rows;
    sel.add(new Option(rows != null ? `${n} (${rows} rows)` : n, n));
  }
  sel.add(new Option("all", "all"));
  if ([...sel.options].some((o) => o.value === keep)) sel.value = keep;
}

// ---- chosen files ----
function addFiles(list) {
  for (const f of list) {
    const kind = f.type.startsWith("video/") ? "video" : f.type.startsWith("image/") ? "image" : null;
    if (kind) files[kind] = f;
    else showError(`${f.name}: not an image or a video`);
  }
  renderFiles();
}
function renderFiles() {
  const ul = $("#files");
  ul.replaceChildren();
  for (const kind of ["image", "video"]) {
    const f = files[kind];
    if (!f) continue;
    const li = el("li", "file-chip");
    li.append(el("span", "", `${kind}: ${f.name}`));
    const rm = el("button", "remove", "×");
    rm.type = "button";
    rm.setAttribute("aria-label", `remove ${f.name}`);
    rm.onclick = () => { files[kind] = null; $("#file").value = ""; renderFiles(); $("#q").focus(); };
    li.append(rm);
    ul.append(li);
  }
}
function initDrop() {
  const drop = $("#drop");
  $("#file").addEventListener("change", (e) => addFiles(e.target.files));
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); addFiles(e.dataTransfer.files); });
  // pasting an image anywhere (outside text fields holding text) picks it too
  document.addEventListener("paste", (e) => {
    const fs = [...(e.clipboardData ? e.clipboardData.files : [])];
    if (fs.length) { e.preventDefault(); addFiles(fs); }
  });
}

// ---- search ----
function collect(like) {
  const f = { explain: $("#explain").checked };
  const k = $("#k").value.trim();
  if (k !== "") f.k = /^\d+$/.test(k) ? Number(k) : k;  // as typed: the server says what is wrong with it
  const text = $("#q").value.trim();
  if (like !== undefined) f.like = like;
  else if (text) f.text = text;
  const target = $("#target").value;
  if (target) f.target = target;
  const where = $("#where").value.trim();
  if (where) f.where = where;
  const instruction = $("#instruction").value.trim();
  if (instruction && like === undefined) f.instruction = instruction;  // like= reuses a stored vector as it is
  return f;
}

async function search(like) {
  const fields = collect(like);
  const withFiles = like === undefined && (files.image || files.video);
  if (!fields.text && !withFiles && fields.like === undefined) {
    showError("Type some text or choose an image or a video.");
    setState("error");
    $("#q").focus();
    return;
  }
  const opts = { method: "POST" };
  if (withFiles) {
    const fd = new FormData();
    for (const [key, v] of Object.entries(fields)) fd.append(key, String(v));
    if (files.image) fd.append("image", files.image, files.image.name);
    if (files.video) fd.append("video", files.video, files.video.name);
    opts.body = fd;  // the browser sets the multipart boundary
  } else {
    opts.body = JSON.stringify(fields);
    opts.headers = { "Content-Type": "application/json" };
  }
  const mine = ++seq;
  setState("loading");
  hideError();
  $("#search").disabled = true;
  $("#status").textContent = "searching…";
  try {
    const data = await api("search", opts);
    if (mine !== seq) return;
    loadInfo();  // an ingest may have published meanwhile: new shards, new counts
    const hits = (data && data.hits) || [];
    renderPlan(fields.explain ? data && data.plan : null);
    renderHits(hits);
    $("#status").textContent = hits.length ? `${hits.length} result${hits.length === 1 ? "" : "s"}` : "";
    setState("done");
  } catch (e) {
    if (mine !== seq) return;
    $("#status").textContent = "";
    renderPlan(null);
    $("#results").replaceChildren();
    showError(e.message);
    setState("error");
  } finally {
    if (mine === seq) $("#search").disabled = false;
  }
}

// ---- rendering ----
function el(tag, cls, text) {
  const n = document.createElement(tag);
  if (cls) n.className = cls;
  if (text !== undefined && text !== null) n.textContent = text;
  return n;
}
function fmtTime(s) {
  s = Math.round(Number(s) * 10) / 10;
  const m = Math.floor(s / 60), sec = s - m * 60;
  return `${m}:${sec < 10 ? "0" : ""}${sec.toFixed(sec % 1 ? 1 : 0)}`;
}
function renderPlan(plan) {
  const pre = $("#plan");
  pre.textContent = plan ? (typeof plan === "string" ? plan : JSON.stringify(plan, null, 2)) : "";
  pre.hidden = !plan;
}
function renderHits(hits) {
  const box = $("#results");
  box.replaceChildren();
  if (!hits.length) { box.append(el("p", "empty", "no results")); return; }
  for (const h of hits) box.append(card(h));
}

function card(h) {
  const c = el("article", "hit");
  c.dataset.id = String(h.id);
  if (h.shard != null) c.dataset.shard = h.shard;
  if (h.modality) c.dataset.modality = h.modality;
  if (h.start != null) c.dataset.start = String(h.start);
  if (h.end != null) c.dataset.end = String(h.end);
  const path = h.path || (Array.isArray(h.paths) ? h.paths.join(", ") : "");
  const hasSpan = h.start != null && h.end != null;
  const kinds = String(h.modality || "").split("+");  // a composed row: "video+text", "image+text"

  if (h.modality === "text" || (!h.thumb_url && !h.media_url && (h.text || h.caption))) {
    c.append(passage(h.text || h.caption || ""));
  } else if (kinds.includes("video") && h.media_url) {
    const play = el("button", "media");
    play.type = "button";
    play.setAttribute("aria-label", `play ${path}${hasSpan ? ` from ${fmtTime(h.start)} to ${fmtTime(h.end)}` : ""}`);
    if (h.thumb_url) play.append(thumb(h, path));
    else play.append(el("span", "noimg", "▶ play"));
    play.append(el("span", "play-badge", "▶"));
    play.onclick = () => { const v = video(h); play.replaceWith(v); v.focus(); };
    c.append(play);
  } else if (h.thumb_url) {
    const a = el("a", "media");
    a.href = withToken(h.media_url || h.thumb_url);
    a.target = "_blank";
    a.rel = "noopener";
    a.append(thumb(h, path));
    c.append(a);
  } else {
    c.append(el("div", "noimg", h.modality || "no preview"));
  }

  const meta = el("div", "meta");
  const top = el("div", "line");
  top.append(el("span", "score", Number.isFinite(Number(h.score)) ? Number(h.score).toFixed(3) : "–"));
  if (h.shard != null) top.append(el("span", "shard", h.shard));
  if (hasSpan) top.append(el("span", "span", `${fmtTime(h.start)}–${fmtTime(h.end)}`));
  meta.append(top);
  const p = el("div", "path", path);
  p.title = path;
  meta.append(p);
  const words = h.modality !== "text" && (h.caption || h.text);  // a media row's caption, or its text
  if (words) meta.append(el("div", "caption", words));
  const more = el("button", "more-like-this", "more like this");
  more.type = "button";
  more.onclick = () => { search(h.id); window.scrollTo({ top: 0, behavior: "smooth" }); };
  meta.append(more);
  c.append(meta);
  return c;
}

function thumb(h, path) {
  const img = el("img", "thumb");
  img.loading = "lazy";
  img.decoding = "async";
  img.alt = h.caption || path.split("/").pop() || "thumbnail";
  img.src = withToken(h.thumb_url);
  img.onerror = () => img.replaceWith(el("span", "noimg", "no preview"));
  return img;
}

function passage(text) {
  const wrap = el("div", "passage-wrap");
  const p = el("p", "passage", text);
  wrap.append(p);
  if (text.length > 280) {
    p.classList.add("clamped");
    const b = el("button", "expand", "show more");
    b.type = "button";
    b.setAttribute("aria-expanded", "false");
    b.onclick = () => {
      const open = p.classList.toggle("clamped") === false;
      b.textContent = open ? "show less" : "show more";
      b.setAttribute("aria-expanded", String(open));
    };
    wrap.append(b);
  }
  return wrap;
}

// Plays [start, end]: the #t= media fragment, plus seek/pause for browsers that ignore it.
function video(h) {
  const v = el("video");
  v.controls = true;
  v.autoplay = true;
  v.preload = "metadata";
  v.playsInline = true;
  const hasStart = h.start != null, hasEnd = h.end != null;
  const frag = hasStart ? `#t=${h.start}${hasEnd ? "," + h.end : ""}` : "";
  v.src = withToken(h.media_url) + frag;
  if (h.thumb_url) v.poster = withToken(h.thumb_url);
  v.addEventListener("loadedmetadata", () => {
    if (hasStart && Math.abs(v.currentTime - h.start) > 0.25) v.currentTime = h.start;
  });
  v.addEventListener("timeupdate", () => {
    if (hasEnd && !v.paused && v.currentTime >= h.end) v.pause();
  });
  v.addEventListener("play", () => {  // replaying after the stop restarts the segment
    if (hasEnd && hasStart && v.currentTime >= h.end - 0.05) v.currentTime = h.start;
  });
  return v;
}

// ---- errors and state ----
function showError(msg) { const e = $("#error"); e.textContent = msg; e.hidden = false; }
function hideError() { const e = $("#error"); e.textContent = ""; e.hidden = true; }
function setState(s) { document.body.dataset.state = s; }

document.addEventListener("DOMContentLoaded", () => {
  initToken();
  initDrop();
  $("#form").addEventListener("submit", (e) => { e.preventDefault(); search(); });
  loadInfo();
});
