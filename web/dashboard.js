/*
 * dashboard.js: the operations dashboard (dashboard.html). Polls GET /v1/stats every
 * second (queue depths, job gauges and counters, live workers), keeps the samples of the
 * last minutes to chart throughput (jobs completed per interval) and processing time
 * (mean and a p50 estimate from the histogram's buckets, per interval) on <canvas>,
 * lists the jobs submitted from this page (or whose id was typed in) with their
 * progress over SSE (SepApi.follow), and uploads through a form whose model list comes
 * from GET /v1/models. Text from the API reaches the DOM only as textContent.
 *
 * window.sepDashboard holds the page's state (last stats, polls, errors, jobs) for
 * whoever drives the page (the browser test).
 */
(function () {
  "use strict";

  const params = new URLSearchParams(location.search);
  const API = (params.get("api") || location.origin).replace(/\/+$/, "");
  const POLL_MS = 1000, INTERVAL_S = 10, WINDOW_S = 300;
  const $ = function (id) { return document.getElementById(id); };
  const state = window.sepDashboard = { stats: null, polls: 0, errors: [], jobs: {} };
  let modelsFor = null; /* workers_live when the model list was last read */
  const samples = []; /* {t, completed, hist: processing_seconds} */

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text != null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }
  function row(cells) {
    const tr = document.createElement("tr");
    cells.forEach(function (c) {
      if (c instanceof Node) { const td = el("td"); td.appendChild(c); tr.appendChild(td); }
      else if (c && typeof c === "object") tr.appendChild(el("td", c.text, c.cls));
      else tr.appendChild(el("td", c));
    });
    return tr;
  }
  function fill(tbody, rows) {
    while (tbody.firstChild) tbody.removeChild(tbody.firstChild);
    rows.forEach(function (r) { tbody.appendChild(r); });
  }
  function num(v) { return { text: v == null ? "" : v, cls: "num" }; }
  function bytes(n) {
    if (n == null) return "";
    const u = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : n) + " " + u[i];
  }
  function say(text, isError) {
    $("api-status").textContent = text;
    $("api-status").className = isError ? "error" : "";
    if (isError) state.errors.push(text);
  }

  /* ---- stats ---- */

  function renderStats(s) {
    const q = s.queues || {};
    fill($("queues").tBodies[0], Object.keys(q).map(function (name) {
      return row([name, num(q[name].waiting), num(q[name].delivered)]);
    }).concat([row(["delayed", num(s.delayed), num("")]), row(["dead", num(s.dead), num("")])]));

    const jobs = s.jobs || {}, c = s.counters || {};
    const lines = [["queued", jobs.queued], ["running", jobs.running]];
    ["submitted", "completed", "failed", "retried", "canceled"].forEach(function (k) {
      lines.push([k, c[k]]);
    });
    fill($("counters").tBodies[0], lines.map(function (l) {
      const tr = row([l[0], num(l[1])]);
      tr.id = "counter-" + l[0];
      return tr;
    }));

    $("workers-live").textContent = "(" + (s.workers_live || 0) + " live)";
    fill($("workers").tBodies[0], (s.workers || []).map(function (w) {
      const age = w.heartbeat_age_seconds;
      return row([w.name, w.host, w.device, w.state, (w.jobs || []).join(" "),
                  num(w.jobs_done), num(bytes(w.memory_bytes)),
                  num(age == null ? "" : age.toFixed(1) + " s")]);
    }));
  }

  function record(s) {
    const now = Date.now() / 1000;
    samples.push({ t: now, completed: (s.counters || {}).completed || 0,
                   hist: s.processing_seconds || { buckets: [], count: 0, sum_seconds: 0 } });
    while (samples.length > 2 && samples[1].t < now - WINDOW_S - INTERVAL_S) samples.shift();
  }

  /* The last sample at or before t (the first one where none is). */
  function sampleAt(t) {
    let best = samples[0];
    for (let i = 0; i < samples.length && samples[i].t <= t; i++) best = samples[i];
    return best;
  }

  /* p50 of the observations between two cumulative histograms: linear inside the bucket
   * where half the count is reached (the +Inf bucket: its lower bound). */
  function p50(a, b) {
    const n = b.count - a.count;
    if (n <= 0) return null;
    const before = {};
    (a.buckets || []).forEach(function (k) { before[k.le] = k.count; });
    let lo = 0, prev = 0;
    for (let i = 0; i < b.buckets.length; i++) {
      const k = b.buckets[i], cum = k.count - (before[k.le] || 0);
      if (cum >= n / 2) {
        if (typeof k.le !== "number") return lo;
        return lo + (k.le - lo) * (cum > prev ? (n / 2 - prev) / (cum - prev) : 0);
      }
      if (typeof k.le === "number") lo = k.le;
      prev = cum;
    }
    return lo;
  }

  function series() {
    const out = [];
    if (!samples.length) return out;
    const end = samples[samples.length - 1].t;
    for (let t = end - WINDOW_S; t < end; t += INTERVAL_S) {
      if (t + INTERVAL_S < samples[0].t) { out.push(null); continue; }
      const a = sampleAt(t), b = sampleAt(t + INTERVAL_S);
      const n = b.hist.count - a.hist.count;
      out.push({ completed: Math.max(0, b.completed - a.completed),
                 mean: n > 0 ? (b.hist.sum_seconds - a.hist.sum_seconds) / n : null,
                 p50: p50(a.hist, b.hist) });
    }
    return out;
  }

  function canvasOf(id) {
    const c = $(id), r = window.devicePixelRatio || 1;
    c.width = Math.max(1, c.clientWidth * r);
    c.height = Math.max(1, c.clientHeight * r);
    const g = c.getContext("2d");
    g.setTransform(r, 0, 0, r, 0, 0);
    g.clearRect(0, 0, c.clientWidth, c.clientHeight);
    g.font = "11px system-ui, sans-serif";
    return { g: g, w: c.clientWidth, h: c.clientHeight };
  }
  function axis(cv, max, label) {
    cv.g.fillStyle = "#666";
    cv.g.fillText(label + " " + (Math.round(max * 100) / 100), 4, 12);
    cv.g.fillText("-" + WINDOW_S / 60 + " min", 4, cv.h - 4);
    cv.g.fillText("now", cv.w - 24, cv.h - 4);
  }

  function drawCharts() {
    const pts = series(), n = pts.length || 1, top = 24, bottom = 16; /* the legend above top */
    const tp = canvasOf("throughput");
    let max = 1;
    pts.forEach(function (p) { if (p && p.completed > max) max = p.completed; });
    const bw = tp.w / n, ph = tp.h - top - bottom;
    tp.g.fillStyle = "#06c";
    pts.forEach(function (p, i) {
      if (!p || !p.completed) return;
      const h = ph * p.completed / max;
      tp.g.fillRect(i * bw + 1, top + ph - h, Math.max(1, bw - 2), h);
    });
    axis(tp, max, "max");

    const lt = canvasOf("latency");
    let lmax = 0;
    pts.forEach(function (p) {
      if (p && p.mean != null) lmax = Math.max(lmax, p.mean);
      if (p && p.p50 != null) lmax = Math.max(lmax, p.p50);
    });
    lmax = lmax || 1;
    const lh = lt.h - top - bottom;
    [["mean", "#06c"], ["p50", "#c60"]].forEach(function (k) {
      lt.g.strokeStyle = lt.g.fillStyle = k[1];
      lt.g.lineWidth = 2;
      lt.g.beginPath();
      let pen = false;
      pts.forEach(function (p, i) {
        const v = p && p[k[0]];
        if (v == null) { pen = false; return; }
        const x = (i + 0.5) * lt.w / n, y = top + lh - lh * v / lmax;
        if (pen) lt.g.lineTo(x, y); else lt.g.moveTo(x, y);
        lt.g.fillRect(x - 2, y - 2, 4, 4);
        pen = true;
      });
      lt.g.stroke();
    });
    axis(lt, lmax, "max s");
    lt.g.fillStyle = "#06c"; lt.g.fillText("mean", lt.w - 80, 12);
    lt.g.fillStyle = "#c60"; lt.g.fillText("p50", lt.w - 40, 12);
  }

  function poll() {
    fetch(API + "/v1/stats", { cache: "no-store" }).then(function (resp) {
      return resp.json().then(function (body) {
        if (!resp.ok) throw new Error((body.error && body.error.message) || "HTTP " + resp.status);
        return body;
      });
    }).then(function (s) {
      state.stats = s;
      state.polls++;
      if (s.workers_live !== modelsFor) { modelsFor = s.workers_live; loadModels(); }
      record(s);
      renderStats(s);
      drawCharts();
      say("API " + API + ": updated " + new Date().toLocaleTimeString());
    }, function (err) {
      say("GET /v1/stats: " + err.message + " (retrying)", true);
    }).then(function () { setTimeout(poll, POLL_MS); });
  }

  /* ---- models ---- */

  function loadModels() {
    return fetch(API + "/v1/models", { cache: "no-store" }).then(function (r) { return r.json(); })
      .then(function (body) {
        const sel = $("model"), have = sel.value;
        const names = (body.models || []).map(function (m) { return m.name; });
        if (names.join() === Array.prototype.map.call(sel.options, function (o) {
          return o.value; }).join()) return;
        while (sel.firstChild) sel.removeChild(sel.firstChild);
        names.forEach(function (n) {
          const o = el("option", n);
          o.value = n;
          sel.appendChild(o);
        });
        if (names.indexOf(have) >= 0) sel.value = have;
        state.models = names;
      }, function (err) { state.errors.push("GET /v1/models: " + err.message); });
  }

  /* ---- recent jobs ---- */

  function jobRow(id, file, model) {
    if (state.jobs[id]) return state.jobs[id];
    const bar = el("progress");
    bar.max = 1;
    bar.value = 0;
    const tr = row([id, file || "", model || "", "", bar, ""]);
    tr.dataset.job = id;
    const body = $("jobs").tBodies[0];
    body.insertBefore(tr, body.firstChild);
    const job = state.jobs[id] = { id: id, status: "", progress: 0, message: "", tr: tr };
    job.stop = SepApi.follow(API, id, function (rec) { update(job, rec); }, function (err) {
      job.tr.cells[5].textContent = "status unreadable: " + err.message + " (retrying)";
    });
    return job;
  }

  function update(job, rec) {
    job.status = rec.status || job.status;
    if (typeof rec.progress === "number") job.progress = rec.progress;
    if (rec.status === "completed") job.progress = 1;
    job.message = (rec.error && rec.error.message) || rec.message || rec.stage || "";
    const cells = job.tr.cells;
    if (rec.options && rec.options.model) cells[2].textContent = rec.options.model;
    cells[3].textContent = job.status;
    cells[4].firstChild.value = job.progress;
    cells[4].title = Math.round(job.progress * 100) + " %";
    cells[5].textContent = job.message;
  }

  function jobsState() {
    const out = {};
    Object.keys(state.jobs).forEach(function (id) {
      const j = state.jobs[id];
      out[id] = { status: j.status, progress: j.progress, message: j.message };
    });
    return out;
  }
  state.jobList = jobsState;

  $("upload-form").addEventListener("submit", function (ev) {
    ev.preventDefault();
    const file = $("file").files[0];
    if (!file) { say("choose a file first", true); return; }
    $("submit").disabled = true;
    $("upload").value = 0;
    const model = $("model").value;
    SepApi.upload(API, file, { model: model }, function (loaded, total) {
      $("upload").value = total ? loaded / total : 0;
    }).then(function (rec) {
      $("upload").value = 1;
      update(jobRow(rec.id, file.name, model), rec);
    }, function (err) {
      say("upload of " + file.name + ": " + err.message, true);
    }).then(function () { $("submit").disabled = false; });
  });

  $("follow").addEventListener("click", function () {
    const id = $("follow-id").value.trim();
    if (!id) return;
    SepApi.getJob(API, id).then(function (rec) {
      update(jobRow(id, "", rec.options && rec.options.model), rec);
      $("follow-id").value = "";
    }, function (err) { say("job " + id + ": " + err.message, true); });
  });

  document.querySelectorAll(".interval").forEach(function (e) { e.textContent = INTERVAL_S; });
  document.querySelectorAll(".window").forEach(function (e) { e.textContent = WINDOW_S / 60; });
  setInterval(loadModels, 10000);
  poll();
})();
