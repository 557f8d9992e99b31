#!/usr/bin/python3
"""The stems player on another origin than an API with CORS off: the page says "the
upload could not reach <api>" although the API is up and answered (the browser hid the
answer). Expected: the error names the other cause, CORS off there (sep_cors_origins);
and nothing is queued (the upload listener makes the browser preflight the POST, and
the preflight is refused).
Needs chromium + chromedriver + python3-selenium (SKIP otherwise)."""
import functools, http.server, os, shutil, sys, threading, time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import harness
try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:
    webdriver = None
if webdriver is None or not shutil.which("chromium") or not shutil.which("chromedriver"):
    print("SKIP: chromium, chromedriver or selenium missing")
    sys.exit(0)

web = os.path.join(harness.REPO_ROOT, "web")
httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(
    type("Q", (http.server.SimpleHTTPRequestHandler,), {"log_message": lambda *a: None}),
    directory=web))
threading.Thread(target=httpd.serve_forever, daemon=True).start()
stack = harness.Stack(worker_processes=1).start()
drv = None
try:
    path = os.path.join(stack.prefix, "song.wav")
    with open(path, "wb") as f:
        f.write(harness.wav_bytes(seconds=0.5))
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        opts.add_argument(a)
    drv = webdriver.Chrome(service=Service(executable_path=shutil.which("chromedriver")),
                           options=opts)
    drv.get("http://127.0.0.1:%d/player.html?api=http://127.0.0.1:%d"
            % (httpd.server_address[1], stack.port))
    drv.find_element(By.ID, "file").send_keys(path)
    state = lambda d: d.execute_script("return window.sepPlayer")
    WebDriverWait(drv, 30, poll_frequency=0.2).until(lambda d: state(d)["status"] == "error")
    time.sleep(0.5)
    text = drv.find_element(By.ID, "status").text
    jobs = [k for k in stack.redis.keys(b"*job:*")]
    print("page says %r; job records in Redis: %d" % (text, len(jobs)))
    ok = not jobs and "sep_cors_origins" in text
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)
finally:
    if drv is not None:
        drv.quit()
    stack.stop()
    httpd.shutdown()
