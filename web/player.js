/*
 * player.js: the stems player page (player.html). Upload with progress (XHR), follow the
 * job (SSE, or polling), then fetch and decode every stem (Web Audio) and play them in
 * sync: one AudioBufferSourceNode per stem started at the same time and offset, a
 * GainNode each for volume/mute/solo, a waveform per stem, seek, downloads.
 *
 * window.sepPlayer holds the page's state (status, job id, decoded stems' duration,
 * sample rate, channels, errors) for whoever drives the page (the browser test).
 */
(function () {
  "use strict";

  const params = new URLSearchParams(location.search);
  const API = (params.get("api") || location.origin).replace(/\/+$/, "");
  const $ = function (id) { return document.getElementById(id); };
  const state = window.sepPlayer = { status: "idle", jobId: null, stems: {}, errors: [] };

  let ctx = null, tracks = [], playing = false, startedAt = 0, offset = 0, duration = 0;
  /* the latest file chosen: answers about an earlier one are dropped */
  let generation = 0, stopFollow = null;

  function say(text, isError) {
    $("status").textContent = text;
    $("status").className = isError ? "error" : "";
    if (isError) state.errors.push(text);
  }
  function clock(s) {
    s = Math.max(0, Math.floor(s));
    return Math.floor(s / 60) + ":" + String(s % 60).padStart(2, "0");
  }

  function drawWave(canvas, buffer) {
    const w = canvas.width = canvas.clientWidth * (window.devicePixelRatio || 1);
    const h = canvas.height = canvas.clientHeight * (window.devicePixelRatio || 1);
    const g = canvas.getContext("2d");
    const data = buffer.getChannelData(0);
    const step = Math.max(1, Math.floor(data.length / w));
    let peak = 1e-9;
    for (let i = 0; i < data.length; i++) peak = Math.max(peak, Math.abs(data[i]));
    const scale = 1 / peak; /* each stem drawn to its own peak: quiet ones stay visible */
    g.fillStyle = "#06c";
    for (let x = 0; x < w; x++) {
      let lo = 1, hi = -1;
      for (let i = x * step; i < Math.min(data.length, (x + 1) * step); i++) {
        if (data[i] < lo) lo = data[i];
        if (data[i] > hi) hi = data[i];
      }
      if (hi < lo) continue;
      g.fillRect(x, (1 - hi * scale) * h / 2, 1, Math.max(1, (hi - lo) * scale * h / 2));
    }
  }

  function applyGains() {
    const solo = tracks.some(function (t) { return t.solo; });
    tracks.forEach(function (t) {
      const audible = !t.muted && (!solo || t.solo);
      t.gain.gain.value = audible ? t.volume : 0;
    });
  }

  function stopSources() {
    tracks.forEach(function (t) {
      if (t.source) { try { t.source.stop(); } catch (_) { /* not started */ } }
      t.source = null;
    });
  }

  function position() {
    return playing ? Math.min(duration, offset + ctx.currentTime - startedAt) : offset;
  }

  function play(from) {
    stopSources();
    offset = Math.max(0, Math.min(from, duration));
    const when = ctx.currentTime + 0.05;
    tracks.forEach(function (t) {
      t.source = ctx.createBufferSource();
      t.source.buffer = t.buffer;
      t.source.connect(t.gain);
      t.source.start(when, offset);
    });
    startedAt = when;
    playing = true;
    $("play").textContent = "Pause";
  }

  function pause() {
    offset = position();
    stopSources();
    playing = false;
    $("play").textContent = "Play";
  }

  function tick() {
    if (ctx && duration > 0) {
      const p = position();
      if (playing && p >= duration) { pause(); offset = 0; }
      $("seek").value = String(Math.round(1000 * p / duration));
      $("clock").textContent = clock(p) + " / " + clock(duration);
    }
    requestAnimationFrame(tick);
  }

  function stemRow(name, url, buffer) {
    const row = document.createElement("div");
    row.className = "row";
    row.innerHTML = '<span class="name"></span><canvas class="wave"></canvas>' +
      '<button class="mute">M</button><button class="solo">S</button>' +
      '<input class="vol" type="range" min="0" max="1" step="0.01" value="1">' +
      '<a class="dl">Download</a>';
    row.querySelector(".name").textContent = name;
    const a = row.querySelector(".dl");
    a.href = url;
    a.download = name;
    const t = { name: name, buffer: buffer, gain: ctx.createGain(), volume: 1, muted: false,
                solo: false, source: null };
    t.gain.connect(ctx.destination);
    row.querySelector(".mute").onclick = function () {
      t.muted = !t.muted; this.classList.toggle("on", t.muted); applyGains();
    };
    row.querySelector(".solo").onclick = function () {
      t.solo = !t.solo; this.classList.toggle("on", t.solo); applyGains();
    };
    row.querySelector(".vol").oninput = function () { t.volume = Number(this.value); applyGains(); };
    $("stems").appendChild(row);
    drawWave(row.querySelector("canvas"), buffer);
    return t;
  }

  function loadStems(rec, gen) {
    ctx = ctx || new (window.AudioContext || window.webkitAudioContext)();
    const names = Object.keys(rec.stems || {}).sort();
    state.status = "decoding";
    say("Decoding " + names.length + " stems…");
    return Promise.all(names.map(function (name) {
      const url = API + rec.stems[name].url;
      return fetch(url).then(function (resp) {
        if (!resp.ok) throw new Error(name + ": HTTP " + resp.status);
        return resp.arrayBuffer();
      }).then(function (bytes) {
        return ctx.decodeAudioData(bytes);
      }).then(function (buffer) {
        if (gen === generation) {
          state.stems[name] = { duration: buffer.duration, sampleRate: buffer.sampleRate,
                                channels: buffer.numberOfChannels };
        }
        return { name: name, url: url, buffer: buffer };
      });
    })).then(function (decoded) {
      if (gen !== generation) return;
      $("stems").textContent = "";
      $("transport").hidden = false; /* laid out first: the waveforms take its width */
      tracks = decoded.map(function (d) { return stemRow(d.name, d.url, d.buffer); });
      duration = Math.max.apply(null, decoded.map(function (d) { return d.buffer.duration; }));
      applyGains();
      state.status = "ready";
      say("Ready: " + names.join(", "));
    });
  }

  function start(file) {
    if (!file) return;
    const gen = ++generation;
    if (stopFollow) stopFollow();
    stopFollow = null;
    if (playing) pause();
    state.status = "uploading";
    state.stems = {};
    $("upload").value = 0;
    $("separation").value = 0;
    say("Uploading " + file.name + "…");
    SepApi.upload(API, file, { model: $("model").value, format: $("format").value },
      function (loaded, total) { $("upload").value = loaded / total; }
    ).then(function (rec) {
      if (gen !== generation) return;
      $("upload").value = 1;
      state.jobId = rec.id;
      state.status = rec.status;
      say("Job " + rec.id + ": " + rec.status);
      stopFollow = SepApi.follow(API, rec.id, function (r) {
        if (gen !== generation) return;
        state.status = r.status;
        if (typeof r.progress === "number") $("separation").value = r.progress;
        const why = r.error && r.error.message ? ": " + r.error.message : "";
        say("Job " + rec.id + ": " + r.status +
            (SepApi.terminal(r.status) || typeof r.progress !== "number" ? why
              : " " + Math.round(100 * r.progress) + "%"),
            r.status === "failed" || r.status === "gone");
        if (r.status === "completed") {
          $("separation").value = 1;
          loadStems(r, gen).catch(function (e) {
            if (gen !== generation) return;
            state.status = "error";
            say(String(e), true);
          });
        }
      }, function (err) {
        if (gen !== generation) return;
        say("Job " + rec.id + ": " + state.status + "; its status cannot be read now (" +
            err.message + "), retrying…");
      });
    }, function (err) {
      if (gen !== generation) return;
      state.status = "error";
      say("Upload refused: " + err.message, true);
    });
  }

  $("file").onchange = function () { start(this.files[0]); };
  const drop = $("drop");
  drop.ondragover = function (ev) { ev.preventDefault(); drop.classList.add("over"); };
  drop.ondragleave = function () { drop.classList.remove("over"); };
  drop.ondrop = function (ev) {
    ev.preventDefault();
    drop.classList.remove("over");
    start(ev.dataTransfer.files[0]);
  };
  $("play").onclick = function () {
    if (!ctx || !tracks.length) return;
    ctx.resume();
    if (playing) pause(); else play(offset >= duration ? 0 : offset);
  };
  $("seek").oninput = function () {
    const to = duration * Number(this.value) / 1000;
    if (playing) play(to); else offset = to;
  };
  requestAnimationFrame(tick);
})();
