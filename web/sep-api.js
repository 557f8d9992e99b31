/*
 * sep-api.js: the browser client of the separation API, shared by the pages in web/.
 * No build step, no dependency. The API may be on another origin (CORS on the server:
 * sep_cors_origins); `base` is then its origin, e.g. "http://api.example:8080".
 *
 *   SepApi.upload(base, file, fields, onProgress)   -> Promise<job record>  (XHR, so the
 *                                                     upload's progress is reported)
 *   SepApi.getJob(base, id)                          -> Promise<job record>
 *   SepApi.follow(base, id, onRecord[, onError])     -> stop(): the job's records as they
 *                                                     change, over SSE (/events) where the
 *                                                     server has it, polling every second
 *                                                     otherwise; ends at a terminal status;
 *                                                     onError(err) for a poll that failed
 *                                                     (503, network), tried again
 *   SepApi.terminal(status)                          -> whether a status is final
 */
(function (global) {
  "use strict";

  function apiError(status, body) {
    let code = "http_" + status, message = "HTTP " + status;
    try {
      const e = JSON.parse(body).error;
      if (e) { code = e.code; message = e.message; }
    } catch (_) { /* not JSON */ }
    const err = new Error(message);
    err.status = status;
    err.code = code;
    return err;
  }

  function sameOrigin(base) {
    try { return new URL(base, location.href).origin === location.origin; } catch (_) { return false; }
  }

  function terminal(status) {
    return status === "completed" || status === "failed" || status === "canceled";
  }

  function upload(base, file, fields, onProgress) {
    return new Promise(function (resolve, reject) {
      const form = new FormData();
      Object.keys(fields || {}).forEach(function (k) {
        if (fields[k] !== "" && fields[k] != null) form.append(k, fields[k]);
      });
      form.append("file", file, file.name || "upload.wav");
      const xhr = new XMLHttpRequest();
      xhr.open("POST", base + "/v1/jobs");
      xhr.responseType = "text";
      xhr.upload.onprogress = function (ev) {
        if (onProgress && ev.lengthComputable) onProgress(ev.loaded, ev.total);
      };
      xhr.onload = function () {
        if (xhr.status === 202) {
          try { resolve(JSON.parse(xhr.responseText)); } catch (e) { reject(e); }
        } else {
          reject(apiError(xhr.status, xhr.responseText));
        }
      };
      xhr.onerror = function () {
        /* the browser tells no more: the server is down, or it answered but does not
         * allow this page's origin (an API on another origin needs CORS there) */
        reject(new Error("the upload could not reach " + base +
          (sameOrigin(base) ? "" : ", or that server does not allow pages of " +
           location.origin + " (sep_cors_origins)")));
      };
      xhr.send(form);
    });
  }

  function getJob(base, id) {
    return fetch(base + "/v1/jobs/" + encodeURIComponent(id), { cache: "no-store" })
      .then(function (resp) {
        return resp.text().then(function (text) {
          if (!resp.ok) throw apiError(resp.status, text);
          return JSON.parse(text);
        });
      });
  }

  function follow(base, id, onRecord, onError) {
    let stopped = false, timer = null, source = null, last = null;

    function deliver(rec) {
      if (stopped) return;
      last = rec;
      onRecord(rec);
      if (terminal(rec.status)) stop();
    }
    function poll() {
      if (stopped) return;
      getJob(base, id).then(deliver, function (err) {
        if (err.status === 404) { stop(); onRecord({ id: id, status: "gone" }); return; }
        if (onError && !stopped) onError(err); /* polled again in a second */
      }).then(function () {
        if (!stopped) timer = setTimeout(poll, 1000);
      });
    }
    function stop() {
      stopped = true;
      if (timer) clearTimeout(timer);
      if (source) source.close();
    }

    if (typeof EventSource === "function") {
      source = new EventSource(base + "/v1/jobs/" + encodeURIComponent(id) + "/events");
      ["progress", "completed", "failed", "canceled"].forEach(function (kind) {
        source.addEventListener(kind, function (ev) {
          try { deliver(JSON.parse(ev.data)); } catch (_) { /* a malformed event */ }
        });
      });
      source.onerror = function () {
        /* no SSE here (or it was lost): poll instead, from the last state seen */
        if (stopped || (last && terminal(last.status))) return;
        source.close();
        source = null;
        poll();
      };
    } else {
      poll();
    }
    return stop;
  }

  global.SepApi = { upload: upload, getJob: getJob, follow: follow, terminal: terminal };
})(window);
