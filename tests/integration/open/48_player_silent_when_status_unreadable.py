#!/usr/bin/python3
"""The stems player while the job's status cannot be read (the API answers 503: Redis
stalled or down; or the network is gone): it polls on, silently, the page still saying "Job <id>:
queued 0%" as if all were well. Expected: the status line says the status cannot be
read now and why (the answer's message), and that it keeps trying; once the API answers
again the page follows the job as before. Needs chromium + chromedriver +
python3-selenium (SKIP otherwise)."""
import os, shutil, signal, sys, time
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
    state = lambda d: d.execute_script("return window.sepPlayer")
    drv.find_element(By.ID, "file").send_keys(path)
    WebDriverWait(drv, 30, poll_frequency=0.2).until(lambda d: state(d)["jobId"])
    time.sleep(1.5)
    os.kill(stack.redis_proc.pid, signal.SIGSTOP)  # Redis stalls: the API answers 503
    try:
        time.sleep(6)  # polls answered 503 after sep_redis_timeout
        down = drv.find_element(By.ID, "status").text
    finally:
        os.kill(stack.redis_proc.pid, signal.SIGCONT)
    time.sleep(6)
    again = drv.find_element(By.ID, "status").text
    print("Redis down: %r; Redis back: %r" % (down, again))
    ok = "retrying" in down and "retrying" not in again and "queued" in again
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)
finally:
    if drv is not None:
        drv.quit()
    stack.stop()
