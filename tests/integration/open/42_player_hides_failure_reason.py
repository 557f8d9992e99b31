#!/usr/bin/python3
"""The stems player (web/player.html, served by nginx at /ui/) on a job that fails: the
page says only "Job <id>: failed"; the job record's error {code, message} (why it
failed, e.g. a file that is no audio) is not shown anywhere. Expected: the status line
shows the error's message, as text (the message is the worker's; markup in it must not
become elements). Needs chromium + chromedriver + python3-selenium (SKIP otherwise)."""
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

MESSAGE = 'cannot decode the input <img src=x onerror="window.pwned=1">'
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
    drv.get("http://127.0.0.1:%d/ui/player.html" % stack.port)
    drv.find_element(By.ID, "file").send_keys(path)
    state = lambda d: d.execute_script("return window.sepPlayer")
    WebDriverWait(drv, 30, poll_frequency=0.2).until(lambda d: state(d)["jobId"])
    jid = state(drv)["jobId"]
    token, _ = worker_sim.claim(stack.redis, jid)
    worker_sim.fail(stack.redis, jid, token, code="decode_failed", message=MESSAGE)
    WebDriverWait(drv, 30, poll_frequency=0.2).until(lambda d: state(d)["status"] == "failed")
    time.sleep(0.3)
    text = drv.find_element(By.ID, "status").text
    imgs = drv.execute_script("return document.querySelectorAll('#status img').length")
    pwned = drv.execute_script("return window.pwned === 1")
    print("status line: %r; <img> in it: %d; onerror ran: %s" % (text, imgs, pwned))
    ok = MESSAGE in text and imgs == 0 and not pwned
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)
finally:
    if drv is not None:
        drv.quit()
    stack.stop()
