#!/usr/bin/python3
"""The stems player when a second file is chosen while the first job still runs: the
page keeps following the first job, and when that one completes it takes the page over
(status, "decoding", its stems) although the page now shows the second job. Expected:
choosing a file stops following the earlier job; only the latest job drives the page.
Needs chromium + chromedriver + python3-selenium (SKIP otherwise)."""
import os, shutil, sys, time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import harness, worker_sim
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

stack = harness.Stack(worker_processes=1).start()
drv = None
try:
    paths = []
    for name in ("a.wav", "b.wav"):
        paths.append(os.path.join(stack.prefix, name))
        with open(paths[-1], "wb") as f:
            f.write(harness.wav_bytes(seconds=0.5))
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        opts.add_argument(a)
    drv = webdriver.Chrome(service=Service(executable_path=shutil.which("chromedriver")),
                           options=opts)
    drv.get("http://127.0.0.1:%d/ui/player.html" % stack.port)
    state = lambda d: d.execute_script("return window.sepPlayer")
    drv.find_element(By.ID, "file").send_keys(paths[0])
    WebDriverWait(drv, 30, poll_frequency=0.2).until(lambda d: state(d)["jobId"])
    first = state(drv)["jobId"]
    drv.find_element(By.ID, "file").send_keys(paths[1])
    WebDriverWait(drv, 30, poll_frequency=0.2).until(lambda d: state(d)["jobId"] != first)
    second = state(drv)["jobId"]
    time.sleep(1.5)  # both followed for a while
    worker_sim.complete_job(stack, first)
    time.sleep(4)  # the page polls every second
    st = state(drv)
    text = drv.find_element(By.ID, "status").text
    print("first %s completed; page: job %s, status %s, line %r, errors %s"
          % (first, st["jobId"], st["status"], text, st["errors"]))
    ok = st["jobId"] == second and st["status"] == "queued" and second in text and \
        first not in text and not st["errors"]
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)
finally:
    if drv is not None:
        drv.quit()
    stack.stop()
