#!/usr/bin/python3
"""Browser clients in a real browser: Debian's chromium (headless, driven by
python3-selenium through chromedriver) against a live stack (redis-server + nginx with
the module + `workerd run` with the tiny model, as tests/workerd/ starts it), the pages
loaded from a *different* origin than the API (a second static server on its own port).

  cors_table_*        what a page on another origin can read of the API, with `fetch`:
                      multipart POST (FormData + Blob), raw POST, POST with
                      Idempotency-Key, GET of an unknown job, DELETE. With
                      sep_cors_origins naming the page's origin every row is readable;
                      without it every row fails as browsers make it fail.
  player_*            web/player.html uploads a WAV (XHR progress), follows the job to
                      completion, fetches and decodes every stem (decodeAudioData) with
                      the input's duration; a screenshot goes to build/browser/.
  player_failed_*     a job that fails: the status line shows the error's message, as
                      text (markup in it stays text).
  player_second_*     a second file chosen while the first job runs: the first job's
                      completion no longer drives the page.
  player_cors_off_*   the player on another origin than an API with CORS off: the error
                      names sep_cors_origins as a cause, and nothing is queued.
  player_status_*     the job's status unreadable for a while (Redis stalled: 503): the
                      page says so and that it retries, then follows the job again.
  dashboard_*        web/dashboard.html from nginx's /ui/: the live worker (its name,
                      device) in the workers panel, a WAV uploaded through the page's form
                      listed in the recent jobs, its progress bar (SSE) at 100 % and status
                      `completed`, the completed counter up by one, and both charts drawn;
                      a screenshot goes to build/browser/. The same from the second server
                      with ?api= (CORS on).

Skips (not fails) when chromium, chromedriver or selenium are missing (make deps
installs them).
"""

import functools
import http.server
import os
import shutil
import signal
import sys
import threading
import time
import wave

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))
sys.path.insert(0, os.path.join(REPO, "tests", "workerd"))

import harness  # noqa: E402
import worker_sim  # noqa: E402
from harness import expect  # noqa: E402

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
SHOTS = os.path.join(REPO, "build", "browser")
SECONDS = 2.0

try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # reported as a SKIP
    webdriver = None

cases = harness.Cases()


class PageServer:
    """web/ on its own origin: a static HTTP server on a port the kernel gave it (bound
    before anyone knows it, so no other process can take it in between)."""

    def __init__(self):
        handler = functools.partial(_QuietHandler, directory=os.path.join(REPO, "web"))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = self.httpd.server_address[1]
        self.origin = "http://127.0.0.1:%d" % self.port
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def browser():
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--autoplay-policy=no-user-gesture-required", "--window-size=1200,900",
                "--no-first-run", "--disable-extensions"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=DriverService(executable_path=CHROMEDRIVER), options=opts)


def service(cors_origin):
    import test_workerd  # tests/workerd/test_workerd.py: Service = stack + supervisors

    svc = test_workerd.Service()
    if cors_origin:
        svc.stack.conf_edit = lambda text: text.replace(
            "        server_name", "        sep_cors_origins %s;\n        server_name"
            % cors_origin, 1)
    return svc.start()


# One fetch per row of the table; each resolves to "readable <status>" or "failed <error>".
TABLE_JS = r"""
const api = arguments[0], done = arguments[arguments.length - 1];
const wav = new Uint8Array(arguments[1]);
async function row(name, make) {
  try {
    const resp = await make();
    const body = await resp.json();
    return [name, "readable " + resp.status, body.id || (body.error && body.error.code) || ""];
  } catch (e) { return [name, "failed " + e.name + ": " + e.message, ""]; }
}
(async () => {
  const out = [];
  const form = new FormData();
  form.append("file", new Blob([wav], {type: "audio/wav"}), "a.wav");
  out.push(await row("multipart POST", () => fetch(api + "/v1/jobs", {method: "POST", body: form})));
  out.push(await row("raw POST", () => fetch(api + "/v1/jobs", {method: "POST", body: wav,
                                             headers: {"Content-Type": "audio/wav"}})));
  out.push(await row("POST with Idempotency-Key", () => fetch(api + "/v1/jobs", {method: "POST",
      body: wav, headers: {"Content-Type": "audio/wav", "Idempotency-Key": "k-" + Date.now()}})));
  out.push(await row("GET unknown job", () => fetch(api + "/v1/jobs/1b4e28ba-2fa1-4d3b-a3f5-ef19b5a7633b")));
  const id = out[1][2] || "1b4e28ba-2fa1-4d3b-a3f5-ef19b5a7633b";
  out.push(await row("DELETE", () => fetch(api + "/v1/jobs/" + id, {method: "DELETE"})));
  done(out);
})();
"""


def run_table(cors_on):
    pages = PageServer()
    svc = service(pages.origin if cors_on else None)
    drv = None
    try:
        drv = browser()
        drv.set_script_timeout(30)
        drv.get(pages.origin + "/player.html?api=http://127.0.0.1:%d" % svc.stack.port)
        wav = list(harness.wav_bytes(seconds=0.25))
        rows = drv.execute_async_script(TABLE_JS, "http://127.0.0.1:%d" % svc.stack.port, wav)
        return rows
    finally:
        if drv is not None:
            drv.quit()
        svc.stop()
        pages.stop()


@cases.case
def cors_table_readable_with_cors_on(_):
    rows = run_table(cors_on=True)
    want = {"multipart POST": "readable 202", "raw POST": "readable 202",
            "POST with Idempotency-Key": "readable 202", "GET unknown job": "readable 404",
            "DELETE": "readable 200"}
    bad = ["%s: %s (expected %s)" % (n, got, want[n]) for n, got, _ in rows if got != want[n]]
    expect(len(rows) == len(want) and not bad, "; ".join(bad) or repr(rows))
    return ", ".join("%s %s" % (n, got.split()[1]) for n, got, _ in rows)


@cases.case
def cors_table_fails_with_cors_off(_):
    rows = run_table(cors_on=False)
    bad = ["%s: %s" % (n, got) for n, got, _ in rows if not got.startswith("failed")]
    expect(len(rows) == 5 and not bad, "readable without CORS: " + "; ".join(bad))
    return "all 5 rows: " + rows[0][1]


@cases.case
def player_uploads_follows_and_decodes_every_stem(_):
    return player_run(same_origin=False)


@cases.case
def player_same_origin_served_by_nginx(_):
    return player_run(same_origin=True)


def player_run(same_origin):
    """The page from the second server with CORS on, or from nginx's /ui/ (no CORS)."""
    pages = PageServer()
    svc = service(None if same_origin else pages.origin)
    drv = None
    api = "http://127.0.0.1:%d" % svc.stack.port
    url = (api + "/ui/player.html") if same_origin else \
        (pages.origin + "/player.html?api=" + api)
    shot = os.path.join(SHOTS, "player-same-origin.png" if same_origin else "player.png")
    path = os.path.join(svc.stack.prefix, "song.wav")
    with open(path, "wb") as f:
        f.write(harness.wav_bytes(seconds=SECONDS))
    with wave.open(path) as w:
        duration = w.getnframes() / w.getframerate()
    try:
        svc.start_workerd("w1")
        drv = browser()
        drv.get(url)
        drv.find_element(By.ID, "file").send_keys(path)
        state = lambda d: d.execute_script("return window.sepPlayer")  # noqa: E731
        try:
            WebDriverWait(drv, 120, poll_frequency=0.2).until(
                lambda d: state(d)["status"] in ("ready", "error", "failed", "gone"))
        finally:
            os.makedirs(SHOTS, exist_ok=True)
            drv.save_screenshot(shot)
        st = state(drv)
        expect(st["status"] == "ready", "player ended in %s: %s" % (st["status"], st["errors"]),
               svc.log("w1")[-2000:])
        upload = drv.execute_script("return document.getElementById('upload').value")
        expect(upload == 1, "upload progress bar at %r" % upload)
        stems = st["stems"]
        expect(sorted(stems) == ["bass", "drums", "other", "vocals"], "stems %s" % sorted(stems))
        for name, info in stems.items():
            expect(abs(info["duration"] - duration) < 0.05,
                   "%s decodes to %.3f s, the input is %.3f s" % (name, info["duration"],
                                                                  duration))
        drawn = drv.execute_script("""
            return [...document.querySelectorAll('#stems .row canvas.wave')].map(c => {
              if (!c.width || !c.height) return 0;
              const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
              let n = 0;
              for (let i = 3; i < px.length; i += 4) n += px[i] > 0;
              return n / (c.width * c.height);
            });""")
        expect(len(drawn) == 4 and all(f > 0.05 for f in drawn),
               "waveforms: share of painted pixels per stem %s" % drawn)
        drv.find_element(By.ID, "play").click()
        playing = drv.execute_script("return document.getElementById('play').textContent")
        expect(playing == "Pause", "play button after a click: %r" % playing)
        drv.save_screenshot(shot)
        return "job %s: 4 stems of %.2f s decoded; screenshot %s" % (
            st["jobId"], duration, os.path.relpath(shot, REPO))
    finally:
        if drv is not None:
            drv.quit()
        svc.stop()
        pages.stop()


def same_origin_player(files):
    """A stack without workerd (tests/integration/worker_sim.py plays the worker), the
    player from nginx's /ui/, and WAV files of those names in the prefix."""
    stack = harness.Stack(worker_processes=1).start()
    paths = []
    for name in files:
        paths.append(os.path.join(stack.prefix, name))
        with open(paths[-1], "wb") as f:
            f.write(harness.wav_bytes(seconds=0.5))
    try:
        drv = browser()
    except Exception:
        stack.stop()
        raise
    drv.get("http://127.0.0.1:%d/ui/player.html" % stack.port)
    return stack, drv, paths


def player_state(drv):
    return drv.execute_script("return window.sepPlayer")


@cases.case
def player_failed_job_shows_why_as_text(_):
    message = 'cannot decode the input <img src=x onerror="window.pwned=1">'
    stack, drv, paths = same_origin_player(["song.wav"])
    try:
        drv.find_element(By.ID, "file").send_keys(paths[0])
        WebDriverWait(drv, 30, poll_frequency=0.2).until(lambda d: player_state(d)["jobId"])
        job_id = player_state(drv)["jobId"]
        token, _ = worker_sim.claim(stack.redis, job_id)
        worker_sim.fail(stack.redis, job_id, token, code="decode_failed", message=message)
        WebDriverWait(drv, 30, poll_frequency=0.2).until(
            lambda d: player_state(d)["status"] == "failed")
        text = drv.find_element(By.ID, "status").text
        expect(message in text, "status line %r does not say why the job failed" % text)
        imgs = drv.execute_script("return document.querySelectorAll('#status img').length")
        expect(imgs == 0 and not drv.execute_script("return window.pwned === 1"),
               "the error message became markup: %d <img>" % imgs)
        return text[-60:]
    finally:
        drv.quit()
        stack.stop()


@cases.case
def player_second_file_stops_following_the_first(_):
    stack, drv, paths = same_origin_player(["a.wav", "b.wav"])
    try:
        drv.find_element(By.ID, "file").send_keys(paths[0])
        WebDriverWait(drv, 30, poll_frequency=0.2).until(lambda d: player_state(d)["jobId"])
        first = player_state(drv)["jobId"]
        drv.find_element(By.ID, "file").send_keys(paths[1])
        WebDriverWait(drv, 30, poll_frequency=0.2).until(
            lambda d: player_state(d)["jobId"] not in (None, first))
        second = player_state(drv)["jobId"]
        time.sleep(1.5)  # both jobs followed (polled every second) for a while
        worker_sim.complete_job(stack, first)
        time.sleep(4)  # several polls after the first job completed
        st = player_state(drv)
        text = drv.find_element(By.ID, "status").text
        expect(st["jobId"] == second and st["status"] == "queued" and second in text
               and first not in text and not st["errors"],
               "the first job took over: job %s, status %s, line %r, errors %s"
               % (st["jobId"], st["status"], text, st["errors"]))
        return "second job %s still shown, queued" % second[:8]
    finally:
        drv.quit()
        stack.stop()


@cases.case
def player_cors_off_says_so_and_queues_nothing(_):
    pages = PageServer()
    stack = harness.Stack(worker_processes=1).start()
    drv = None
    try:
        path = os.path.join(stack.prefix, "song.wav")
        with open(path, "wb") as f:
            f.write(harness.wav_bytes(seconds=0.5))
        drv = browser()
        drv.get(pages.origin + "/player.html?api=http://127.0.0.1:%d" % stack.port)
        drv.find_element(By.ID, "file").send_keys(path)
        WebDriverWait(drv, 30, poll_frequency=0.2).until(
            lambda d: player_state(d)["status"] == "error")
        text = drv.find_element(By.ID, "status").text
        expect("sep_cors_origins" in text and pages.origin in text,
               "the error does not name CORS as a cause: %r" % text)
        jobs = stack.redis.keys(b"*job:*")
        expect(not jobs, "a job was queued for a page that cannot read it: %s" % jobs)
        return text[-70:]
    finally:
        if drv is not None:
            drv.quit()
        stack.stop()
        pages.stop()


def status_line_until(drv, pred, seconds):
    """The player's status line once pred(text) holds, or as it is after seconds."""
    deadline = time.monotonic() + seconds
    while True:
        text = drv.find_element(By.ID, "status").text
        if pred(text) or time.monotonic() > deadline:
            return text
        time.sleep(0.2)


@cases.case
def player_status_unreadable_says_so_and_retries(_):
    stack, drv, paths = same_origin_player(["song.wav"])
    try:
        drv.find_element(By.ID, "file").send_keys(paths[0])
        WebDriverWait(drv, 30, poll_frequency=0.2).until(lambda d: player_state(d)["jobId"])
        time.sleep(1.5)
        os.kill(stack.redis_proc.pid, signal.SIGSTOP)  # Redis stalls: the API answers 503
        try:
            down = status_line_until(drv, lambda text: "retrying" in text, 30)
            expect("retrying" in down, "no word of the unreadable status in 30 s: %r" % down)
        finally:
            os.kill(stack.redis_proc.pid, signal.SIGCONT)
        again = status_line_until(drv, lambda text: "retrying" not in text, 30)
        expect("queued" in again, "after Redis came back: %r" % again)
        return "%r, then %r" % (down[-45:], again[-12:])
    finally:
        drv.quit()
        stack.stop()


def painted(drv, canvas_id, rgb):
    """Pixels of the canvas's plot (below the legend's line) drawn in that colour."""
    return drv.execute_script("""
        const c = document.getElementById(arguments[0]), rgb = arguments[1];
        const y0 = Math.ceil(20 * (window.devicePixelRatio || 1));
        if (!c.width || c.height <= y0) return 0;
        const px = c.getContext('2d').getImageData(0, y0, c.width, c.height - y0).data;
        let n = 0;
        for (let i = 0; i < px.length; i += 4)
          n += px[i] === rgb[0] && px[i + 1] === rgb[1] && px[i + 2] === rgb[2] && px[i + 3] > 0;
        return n;""", canvas_id, rgb)


@cases.case
def dashboard_upload_progress_and_stats(_):
    return dashboard_run(same_origin=True)


@cases.case
def dashboard_other_origin_with_api_param(_):
    return dashboard_run(same_origin=False)


def dashboard_run(same_origin):
    """The page from nginx's /ui/, or from the second server with ?api= and CORS on."""
    pages = PageServer()
    svc = service(None if same_origin else pages.origin)
    drv = None
    api = "http://127.0.0.1:%d" % svc.stack.port
    url = (api + "/ui/dashboard.html") if same_origin else \
        (pages.origin + "/dashboard.html?api=" + api)
    shot = os.path.join(SHOTS, "dashboard.png" if same_origin else "dashboard-cors.png")
    path = os.path.join(svc.stack.prefix, "song.wav")
    with open(path, "wb") as f:
        f.write(harness.wav_bytes(seconds=SECONDS))
    dash = lambda d: d.execute_script("return window.sepDashboard")  # noqa: E731
    text = lambda d, sel: d.find_element(By.CSS_SELECTOR, sel).text  # noqa: E731
    try:
        svc.start_workerd("w1")
        drv = browser()
        drv.get(url)
        wait = WebDriverWait(drv, 120, poll_frequency=0.2)
        # the worker's heartbeat reaches the page: its name in the workers panel, and the
        # model it offers in the form's select
        wait.until(lambda d: (dash(d)["stats"] or {}).get("workers"))
        names = [w["name"] for w in svc.stack.request("GET", "/v1/stats").json["workers"]]
        expect(names, "no live worker in /v1/stats")
        wait.until(lambda d: all(n in text(d, "#workers tbody") for n in names))
        workers = text(drv, "#workers tbody")
        expect("cpu" in workers, "the worker's device is not shown: %r" % workers)
        wait.until(lambda d: d.execute_script(
            "return [...document.querySelectorAll('#model option')].map(o => o.value)")
            == ["htdemucs"])
        before = dash(drv)["stats"]["counters"]["completed"]
        expect(str(before) in text(drv, "#counter-completed"),
               "completed counter %r, /v1/stats says %d" % (text(drv, "#counter-completed"),
                                                            before))
        expect(text(drv, "#queues tbody").count("\n") >= 1, "no queue rows")

        drv.find_element(By.ID, "file").send_keys(path)
        drv.find_element(By.ID, "submit").click()
        wait.until(lambda d: d.execute_script("return document.querySelectorAll("
                                              "'#jobs tbody tr').length") == 1
                   or dash(d)["errors"])
        expect(not dash(drv)["errors"], "the page's errors: %s" % dash(drv)["errors"])
        job_id = drv.find_element(By.CSS_SELECTOR, "#jobs tbody tr").get_attribute("data-job")
        expect(job_id and job_id in text(drv, "#jobs tbody"), "job row %r" % job_id)
        jobs = lambda d: d.execute_script("return window.sepDashboard.jobList()")  # noqa: E731
        try:
            WebDriverWait(drv, 180, poll_frequency=0.2).until(
                lambda d: jobs(d)[job_id]["status"] in ("completed", "failed", "canceled",
                                                        "gone"))
            job = jobs(drv)[job_id]
            expect(job["status"] == "completed", "job ended %s: %s" % (job["status"],
                                                                       job["message"]),
                   svc.log("w1")[-2000:])
            bar = drv.execute_script(
                "return document.querySelector('#jobs tbody tr progress').value")
            row = text(drv, "#jobs tbody tr")
            expect(bar == 1 and job["progress"] == 1 and "completed" in row
                   and "song.wav" in row and "htdemucs" in row,
                   "job row %r, progress bar %r" % (row, bar))
            # the stats poll sees the completion: the counter up by one, the charts drawn
            wait.until(lambda d: dash(d)["stats"]["counters"]["completed"] > before)
            after = dash(drv)["stats"]["counters"]["completed"]
            wait.until(lambda d: text(d, "#counter-completed").split()[-1] == str(after))
            expect(after == before + 1, "completed %d -> %d" % (before, after))
            wait.until(lambda d: painted(d, "throughput", (0, 102, 204)) > 0
                       and painted(d, "latency", (0, 102, 204)) > 0)
        finally:
            os.makedirs(SHOTS, exist_ok=True)
            drv.save_screenshot(shot)
        return "job %s completed, counter %d -> %d, worker %s; screenshot %s" % (
            job_id[:8], before, after, names[0], os.path.relpath(shot, REPO))
    finally:
        if drv is not None:
            drv.quit()
        svc.stop()
        pages.stop()


class _NoStack:
    @staticmethod
    def error_log_tail(lines=30):
        return "(each case has its own stack)"


def main(argv):
    missing = [what for what, ok in (("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER),
                                     ("python3-selenium", webdriver), ("python3-redis",
                                                                       harness.redis)) if not ok]
    if missing:
        print("SKIP: %s not installed (make deps)" % ", ".join(missing))
        print("CASES: 0 passed, 0 failed, %d skipped" % len(cases.cases))
        return 0
    return cases.run(_NoStack(), only=argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
