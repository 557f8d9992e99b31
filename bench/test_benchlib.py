#!/usr/bin/python3
"""bench/test_benchlib.py (`make test-benchlib`): the statistics and verdict logic of
bench/benchlib.py on fixed numbers, plus the /proc readers on this process. Fast (a
second or two), no timing-dependent assertion."""
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402

CASES = []


def case(fn):
    CASES.append(fn)
    return fn


def near(a, b, tol=1e-3):
    return abs(a - b) <= tol * max(1.0, abs(b))


@case
def median_min_max_spread():
    s = benchlib.summarize([3.0, 1.0, 2.0, 10.0])
    assert s["median"] == 2.5 and s["min"] == 1.0 and s["max"] == 10.0, s
    assert s["spread"] == 10.0 and s["n"] == 4, s


@case
def ci95_of_three():
    # mean 10, sample sd 1, t(0.975, 2) = 4.303: 10 +- 4.303/sqrt(3) = 10 +- 2.4843
    s = benchlib.summarize([9.0, 10.0, 11.0])
    assert near(s["ci_lo"], 7.5157) and near(s["ci_hi"], 12.4843), s


@case
def ci95_large_n_uses_normal():
    vals = [float(i % 2) for i in range(40)]  # mean 0.5, sd 0.50637
    s = benchlib.summarize(vals)
    half = 1.96 * 0.5063696835418333 / 40 ** 0.5
    assert near(s["ci_hi"] - 0.5, half) and near(0.5 - s["ci_lo"], half), s


@case
def single_value_has_no_interval():
    s = benchlib.summarize([5.0])
    assert s["ci_lo"] is None and s["spread"] == 1.0, s


@case
def noisy_threshold_is_1_3():
    assert not benchlib.is_noisy(benchlib.summarize([100, 120, 130]))  # 1.30: not above
    assert benchlib.is_noisy(benchlib.summarize([100, 120, 131]))
    # the audit's DAV run: 1,969-5,142/s
    assert benchlib.is_noisy(benchlib.summarize([1969, 3000, 5142]))


@case
def noisy_run_never_meets_a_goal():
    v = benchlib.Verdict()
    v.spread("DAV PUT", benchlib.summarize([1969, 3000, 5142]))
    assert v.status == "NOISY", v.status
    assert "met" not in v.goal(1.5, 0.9).replace("not judged", ""), v.goal(1.5, 0.9)
    assert v.goal(1.5, 0.9).startswith("not judged"), v.goal(1.5, 0.9)


@case
def valid_run_judges_goals():
    v = benchlib.Verdict()
    v.spread("x", benchlib.summarize([100, 101, 102]))
    v.check(True, "all answers 2xx")
    assert v.status == "VALID"
    assert v.goal(1.0, 0.9) == "met" and v.goal(0.8, 0.9) == "NOT met"
    assert v.goal(0.4, 0.5, higher=False) == "met"


@case
def failed_check_is_invalid_even_if_quiet():
    v = benchlib.Verdict()
    v.check(False, "non-2xx answers: 12")
    v.noisy("load")
    assert v.status == "INVALID" and v.goal(2, 1).startswith("not judged")
    assert any("FAIL" in line for line in v.lines())


@case
def paired_ratios_per_round():
    assert benchlib.paired_ratios([2, 4, 9], [1, 2, 3]) == [2, 2, 3]
    try:
        benchlib.paired_ratios([1, 2], [1])
    except ValueError:
        pass
    else:
        raise AssertionError("unequal rounds accepted")


@case
def plan_interleaves_shuffles_and_warms_up():
    names = ["a", "b", "c", "d"]
    steps = benchlib.plan(names, repeat=3, warmup=1, seed=7)
    assert len(steps) == 16
    assert [s[2] for s in steps[:4]] == [True] * 4 and not any(s[2] for s in steps[4:])
    for rnd in range(-1, 3):  # every round holds every name once
        assert sorted(s[1] for s in steps if s[0] == rnd) == names
    orders = {tuple(s[1] for s in steps if s[0] == rnd) for rnd in range(-1, 3)}
    assert len(orders) > 1, "every round in the same order"
    assert steps == benchlib.plan(names, 3, 1, seed=7), "same seed, other order"


@case
def quiet_check_flags_a_busy_machine():
    q = benchlib.Quiet(max_wait=0)
    q.threshold = 0.5
    q.load_before, q.cal_before = (35.0, 20.0, 10.0), [0.010, 0.010, 0.011]
    q.load_after, q.cal_after = (3.0, 2.0, 1.0), [0.020, 0.021, 0.020]
    v = benchlib.Verdict()
    q.judge(v)
    assert v.status == "NOISY" and len(v.noise) == 2, v.noise
    q.load_before, q.cal_after = (0.1, 0.1, 0.1), [0.010, 0.011, 0.010]
    v = benchlib.Verdict()
    q.judge(v)
    assert v.status == "VALID", v.noise


@case
def results_written_with_status_in_name():
    with tempfile.TemporaryDirectory() as d:
        rec = benchlib.machine_record()
        v = benchlib.Verdict()
        v.check(False, "worker dead")
        path, lines = benchlib.write_results(d, "x", "bench/x", rec, v, ["body"])
        assert path.endswith("-INVALID.txt") and "status: INVALID" in lines[0], (path, lines)
        assert lines[1].startswith("machine: ") and lines[2].startswith("cpu kind: ")
        assert open(path).read().splitlines()[-1] == "body"


@case
def machine_record_names_the_isa():
    rec = benchlib.machine_record()
    assert rec["kind"] in ("AVX-512", "AVX2", "no AVX2")
    assert set(benchlib.ISA_FLAGS) == set(rec["isa"])
    assert rec["cores"] >= 1 and rec["family"] != "?"
    assert benchlib.cpu_kind({"avx2", "fma", "avx512f"}) == "AVX-512"
    assert benchlib.cpu_kind({"avx2", "fma"}) == "AVX2"


@case
def proc_cpu_counts_children():
    # a child that burns CPU: its time shows in the tree while it lives and after it exits
    child = subprocess.Popen([sys.executable, "-c",
                              "import time\nt=time.process_time()\n"
                              "while time.process_time()-t<0.3: pass\ntime.sleep(30)"])
    try:
        pid = os.getpid()
        assert child.pid in benchlib.tree_pids(pid)
        deadline = time.monotonic() + 60
        while benchlib.tree_cpu_seconds([child.pid]) < 0.25:
            assert time.monotonic() < deadline, "child CPU never counted"
            time.sleep(0.05)
        rss, hwm = benchlib.tree_rss([child.pid])
        assert rss > 1 and hwm >= rss, (rss, hwm)
    finally:
        child.kill()
        child.wait()


@case
def rusage_of_a_command():
    rc, out, cpu = benchlib.run_with_rusage(
        [sys.executable, "-c", "import time\nt=time.process_time()\n"
         "while time.process_time()-t<0.2: pass\nprint('hi')"], timeout=60)
    assert rc == 0 and out.strip() == "hi" and cpu >= 0.15, (rc, out, cpu)


@case
def machine_busy_counter_moves_forward():
    a = benchlib.machine_busy_seconds()
    benchlib.calibrate(samples=1)
    b = benchlib.machine_busy_seconds()
    assert b >= a > 0, (a, b)


def load_bench(name):
    import importlib.machinery
    import importlib.util
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), name)
    loader = importlib.machinery.SourceFileLoader("bench_" + name, path)
    spec = importlib.util.spec_from_loader("bench_" + name, loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


def load_http():
    return load_bench("http")


@case
def e2e_timed_cpu_load_and_terminal():
    e2e = load_bench("e2e")
    # the demucs side reports its load and processing times; CPU from /usr/bin/time
    r = e2e.timed([sys.executable, "-c", "import sys, time\nt=time.process_time()\n"
                   "while time.process_time()-t<0.2: pass\n"
                   "print('E2E_LOAD_SECONDS 1.250', file=sys.stderr)\n"
                   "print('E2E_PROCESS_SECONDS 0.125', file=sys.stderr)"])
    assert r["load"] == 1.25 and r["proc"] == 0.125 and r["cpu"] >= 0.15 and r["wall"] > 0, r
    # workerd prints its phase times only on a terminal: tty=True must give it one
    r = e2e.timed(["sh", "-c", "test -t 2 && echo 'x: decode 0.00 s, separate 0.00 s, "
                   "encode 0.00 s'"], tty=True)
    assert r["proc"] == 0 and abs(r["outside"] - r["wall"]) < 1e-9, r


@case
def e2e_processing_leaves_the_exit_out_on_both_sides():
    # Both tools spend 0.4 s after their last stem is written (interpreter teardown,
    # munmap, exit). "processing" was wall - load: workerd's exit fell into its load
    # (wall minus its phases) but demucs' into its processing, flattering the ratio.
    e2e = load_bench("e2e")
    workerd = e2e.timed(["sh", "-c", "echo 'x: decode 0.02 s, separate 0.06 s, encode 0.02 s';"
                         " sleep 0.5"])
    demucs = e2e.timed(["sh", "-c", "echo E2E_LOAD_SECONDS 0.00 >&2; "
                        "echo E2E_PROCESS_SECONDS 0.10 >&2; sleep 0.5"])
    assert near(workerd["proc"], 0.1) and near(demucs["proc"], 0.1), (workerd, demucs)
    assert workerd["outside"] >= 0.4 and demucs["outside"] >= 0.4, (workerd, demucs)
    # the old figures: workerd 0.1 s, demucs wall - load = 0.5 s for the same work
    old_workerd, old_demucs = workerd["proc"], demucs["wall"] - demucs["load"]
    assert old_demucs > old_workerd + 0.35, (old_workerd, old_demucs)


def e2e_runs(wall, cpu, proc):
    return [{"wall": w, "cpu": c, "proc": p, "outside": w - p, "load": 0.5, "rss": 100.0}
            for w, c, p in zip(wall, cpu, proc)]


class E2EArgs:
    seconds, long_seconds = 60, 180


REC = {"pytorch": "PyTorch 1.13.1 (Debian package, BLAS OpenBLAS)"}


@case
def e2e_cpu_and_processing_spreads_are_noisy():
    e2e = load_bench("e2e")
    # wall within 1.05, but CPU time 1.5x apart: the CPU ratio is quoted, so NOISY
    runs = {"workerd": e2e_runs([10, 10.2, 10.4], [20, 30, 20], [9, 9.1, 9.2]),
            "demucs": e2e_runs([20, 20.5, 21], [40, 41, 42], [18, 18.2, 18.4])}
    v = benchlib.Verdict()
    text = "\n".join(e2e.report(runs, v, E2EArgs, REC, diffs=[1, 1, 0, 2]))
    assert v.status == "NOISY" and any("workerd separate CPU" in n for n in v.noise), v.noise
    assert "processing (reading the audio to the last stem) demucs/workerd" in text, text
    runs["workerd"] = e2e_runs([10, 10.2, 10.4], [20, 20.5, 21], [9, 9.1, 9.2])
    v = benchlib.Verdict()
    e2e.report(runs, v, E2EArgs, REC, diffs=[1, 1, 0, 2])
    assert v.status == "VALID", v.lines()


@case
def e2e_outputs_never_compared_is_invalid():
    e2e = load_bench("e2e")
    runs = {"workerd": e2e_runs([10, 10, 10], [20, 20, 20], [9, 9, 9]),
            "demucs": e2e_runs([20, 20, 20], [40, 40, 40], [18, 18, 18])}
    v = benchlib.Verdict()
    e2e.report(runs, v, E2EArgs, REC, diffs=[])
    assert v.status == "INVALID", v.lines()


WRK_OUT = """Running 10s test @ http://127.0.0.1:1/v1/jobs
  1000 requests in 10.00s, 1.00MB read
  Non-2xx or 3xx responses: 100
Requests/sec:    100.00
BENCH latency_us p50=1500 p90=2500 p99=9000 p999=12000 max=15000 status_errors=100
"""


@case
def http_counts_successful_answers_only():
    r = load_http().parse_wrk(WRK_OUT)
    assert r["ok"] == 900 and near(r["ok_per_s"], 90.0), r
    assert r["lat"]["p50"] == 1.5 and r["lat"]["p999"] == 12.0, r


@case
def http_noisy_run_prints_no_goal_met():
    http = load_http()

    def res(ok_per_s):
        return {"ok_per_s": ok_per_s, "server_ms": 1.0}
    # the audit's run: DAV 1,969-5,142/s, a median that "met" the goal
    results = {"module POST": [res(4000), res(4100), res(4050)],
               "DAV PUT": [res(1969), res(5142), res(3000)]}
    v = benchlib.Verdict()
    for name, rs in results.items():
        v.spread(name, benchlib.summarize([r["ok_per_s"] for r in rs]))
    text = "\n".join(http.ratios(results, v))
    assert v.status == "NOISY" and "goal >= 0.90x: not judged" in text, text
    assert ": met" not in text, text


@case
def one_or_two_rounds_never_judge_a_goal():
    # --repeat 1: the spread of one value is 1.00, so a quiet machine gave a VALID run
    # and "goal met" on a single sample
    v = benchlib.Verdict()
    v.method(repeat=1, warmup=1, settle=2)
    v.spread("x", benchlib.summarize([100.0]))
    assert v.status == "NOISY" and v.goal(2, 1).startswith("not judged"), v.lines()
    for kw in ({"repeat": 3, "warmup": 0, "settle": 2}, {"repeat": 3, "warmup": 1, "settle": 0}):
        v = benchlib.Verdict()
        v.method(**kw)
        assert v.status == "NOISY", (kw, v.lines())
    v = benchlib.Verdict()
    v.method(repeat=3, warmup=1, settle=2)
    assert v.status == "VALID", v.lines()


@case
def paired_ratio_with_zero_is_not_dropped():
    # dropping the pair left the other rounds' ratios looking clean
    rs = benchlib.paired_ratios([2.0, 4.0, 3.0], [1.0, 0.0, 1.0])
    assert len(rs) == 3 and rs[1] == float("inf"), rs
    s = benchlib.summarize(rs)
    assert benchlib.is_noisy(s), s


@case
def percentile_needs_samples_above_it():
    # the published seed peer POST: 357/s x 10 s = 3,570 requests, a "p99.9" of 3.6
    assert not benchlib.enough_for_percentile(3570, 99.9)
    assert benchlib.enough_for_percentile(10000, 99.9)
    assert benchlib.enough_for_percentile(1000, 99) and not benchlib.enough_for_percentile(999, 99)


def http_result(ok_per_s, server_ms=1.0, seconds=10.0):
    ok = int(ok_per_s * seconds)
    return {"ok_per_s": ok_per_s, "ok": ok, "server_ms": server_ms, "wrk_ms": 0.1,
            "other_pct": 1.0, "cpu": {"nginx": server_ms * ok / 1e3},
            "rss": {"nginx": 20.0}, "lat": {"p50": 1.0, "p90": 2.0, "p99": 3.0, "p999": 4.0}}


@case
def http_table_hides_percentiles_of_few_samples():
    http = load_http()
    results = {"seed peer POST": [http_result(357), http_result(360), http_result(355)],
               "module GET": [http_result(32000), http_result(32100), http_result(32200)]}
    lines, _ = http.table(results, benchlib.Verdict())
    peer = [line for line in lines if line.startswith("seed peer POST")][0].split()
    get = [line for line in lines if line.startswith("module GET")][0].split()
    # ... p50 p90 p99 p99.9 columns: the peer's p99 (3,570 >= 1,000) stays, p99.9 goes
    assert "3.00" in peer and "4.00" not in peer and "-" in peer, peer
    assert "4.00" in get, get


@case
def http_server_cpu_spread_is_noisy():
    # answers/s steady, server CPU-ms per request (the headline figure) 1.6x apart
    http = load_http()
    results = {"module POST": [http_result(4000, 0.40), http_result(4050, 0.64),
                               http_result(4020, 0.41)],
               "DAV PUT": [http_result(2500, 0.5), http_result(2510, 0.5), http_result(2490, 0.5)]}
    v = benchlib.Verdict()
    text = "\n".join(http.ratios(results, v))
    assert v.status == "NOISY" and ": met" not in text, (v.noise, text)


@case
def http_ratio_spread_is_flagged_before_the_goal():
    # each side within 1.15, their per-round ratio 1.32 apart: the goal line came first
    # and said "met" while a later check made the run NOISY
    http = load_http()
    results = {"module POST": [http_result(100), http_result(115), http_result(100)],
               "DAV PUT": [http_result(115), http_result(100), http_result(100)]}
    v = benchlib.Verdict()
    text = "\n".join(http.ratios(results, v))
    assert v.status == "NOISY" and "goal >= 0.90x: not judged" in text, (v.noise, text)


@case
def http_3xx_is_not_a_success():
    http = load_http()
    # wrk counts only statuses >= 400 as failed: 100 redirects pass as successes
    r = http.parse_wrk(WRK_OUT.replace("  Non-2xx or 3xx responses: 100\n", "")
                       .replace("status_errors=100", "status_errors=0"))
    assert r["ok"] == 1000, r
    assert http.logged_status_problems({"202": 900, "302": 100}, r["ok"])
    assert http.logged_status_problems({"202": 990}, 1000)
    assert http.logged_status_problems({"202": 1010}, 1000) == ""


@case
def http_crashed_worker_is_found_in_the_error_log():
    http = load_http()
    with tempfile.TemporaryDirectory() as d:
        for name in ("access.log", "error.log"):
            open(os.path.join(d, name), "w").close()
        logs = http.NginxLogs(d, "POST /v1/jobs")
        logs.start()
        with open(os.path.join(d, "access.log"), "a") as f:
            f.write('127.0.0.1 - - [04/Dec/2026:01:00:00 +0000] "POST /v1/jobs HTTP/1.1" '
                    '202 80 "-" "-"\n' * 3)
        with open(os.path.join(d, "error.log"), "a") as f:
            f.write("2026/12/04 01:00:00 [warn] 1#1: something harmless\n"
                    "2026/12/04 01:00:01 [alert] 1#1: worker process 7 exited on signal 11\n")
        statuses, first, severe = logs.read()
        assert statuses == {"202": 3} and "[warn]" in first and "signal 11" in severe, \
            (statuses, first, severe)


@case
def http_wrk_time_units():
    http = load_http()
    r = http.parse_wrk("  1000 requests in 1.50m, 1.00MB read\n")
    assert near(r["seconds"], 90.0) and near(r["ok_per_s"], 1000 / 90.0), r
    r = http.parse_wrk("  3 requests in 999.00us, 1.00KB read\n")
    assert near(r["seconds"], 0.000999, 1e-6), r


@case
def http_stop_all_stops_every_system():
    http = load_http()
    stopped = []

    class System:
        def __init__(self, name, fails=False):
            self.name, self.fails = name, fails

        def stop(self):
            stopped.append(self.name)
            if self.fails:
                raise OSError("stop failed: " + self.name)
    try:
        http.stop_all([System("service", fails=True), System("dav"), System("peer")])
    except OSError as e:
        assert "service" in str(e), e
    else:
        raise AssertionError("the failure was swallowed")
    assert stopped == ["service", "dav", "peer"], stopped


def proc_state(pid):
    with open("/proc/%d/stat" % pid) as f:
        return f.read().rsplit(")", 1)[1].split()[0]


@case
def tree_stop_pauses_a_consumer():
    # the peer's Celery worker took jobs (and cores) while its front end was measured,
    # the module's side having no consumer: now it is stopped for the measurement
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        deadline = time.monotonic() + 30
        while benchlib.tree_cpu_seconds([child.pid]) < 0.05:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        pids = benchlib.tree_stop([child.pid])
        assert pids == [child.pid], pids
        time.sleep(0.05)
        assert proc_state(child.pid) == "T", proc_state(child.pid)
        before = benchlib.tree_cpu_seconds([child.pid])
        time.sleep(0.3)
        assert benchlib.tree_cpu_seconds([child.pid]) - before < 0.02
        benchlib.tree_continue(pids)
        deadline = time.monotonic() + 30
        while benchlib.tree_cpu_seconds([child.pid]) - before < 0.05:
            assert time.monotonic() < deadline, "not resumed"
            time.sleep(0.02)
    finally:
        child.kill()
        child.wait()


@case
def peak_rss_reset_forgets_a_loaders_transient():
    # cpu_torch.py's loader held the file, its tensors and the model at once; the
    # whole-process peak counted that against PyTorch
    code = ("import sys; sys.path.insert(0, %r); import benchlib\n"
            "x = bytearray(256 << 20); x[::4096] = b'1' * len(x[::4096]); del x\n"
            "before = benchlib.peak_rss_mib()\n"
            "ok = benchlib.reset_peak_rss()\n"
            "print(before, benchlib.peak_rss_mib(), ok)" % os.path.dirname(benchlib.__file__))
    out = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                         check=True).stdout.split()
    before, after, ok = float(out[0]), float(out[1]), out[2] == "True"
    assert ok and before > 250 and after < before - 200, (before, after, ok)


@case
def pss_splits_the_pages_a_forked_worker_shares():
    # a pre-forking server (gunicorn, Celery's pool): the sum of RSS counts the shared
    # 128 MiB twice, the sum of PSS once
    code = ("import os, time\nx = bytearray(128 << 20); x[::4096] = b'1' * len(x[::4096])\n"
            "os.fork()\ntime.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 30
        while len(benchlib.tree_pids(proc.pid)) < 2 or benchlib.tree_rss([proc.pid])[0] < 250:
            assert time.monotonic() < deadline, benchlib.tree_rss([proc.pid])
            time.sleep(0.05)
        rss, pss = benchlib.tree_rss([proc.pid])[0], benchlib.tree_pss([proc.pid])
        assert rss > 250 and 128 < pss < 190, (rss, pss)
    finally:
        for pid in benchlib.tree_pids(proc.pid)[::-1]:
            os.kill(pid, 9)
        proc.wait()


@case
def other_processes_during_a_measurement_make_it_noisy():
    # the short bench/http check on this shared machine: a quiet-looking start, then
    # 73-80 % of the cores taken by other work during the measurements; only the load
    # average before the run and the calibration loop were judged
    pct = benchlib.other_cpu_pct(busy_seconds=16.0, own_cpu_seconds=1.0, elapsed=10.0, cores=2)
    assert near(pct, 75.0), pct
    assert benchlib.other_cpu_pct(1.0, 2.0, 10.0, 2) == 0.0  # never negative
    v = benchlib.Verdict()
    v.disturbed("module POST, round 1", 3.0)
    assert v.status == "VALID", v.noise
    v.disturbed("module POST, round 2", pct)
    assert v.status == "NOISY" and v.goal(2, 1).startswith("not judged"), v.noise


@case
def cpu_fma_peak_is_the_higher_of_two():
    # a peak measured once, while something else ran, is too low: the engine's fraction
    # of it (the 60 % goal) comes out too high
    cpu = load_bench("cpu")
    before = {"fma_peak_gflops": [["avx2", "40.0"]],
              "fma_peak_gflops_per_cpu_second": [["avx2", "20.0"]]}
    after = {"fma_peak_gflops": [["avx2", "60.0"]],
             "fma_peak_gflops_per_cpu_second": [["avx2", "30.0"]]}
    v = benchlib.Verdict()
    peaks, per_cpu = cpu.combine_peaks(before, after, v)
    assert peaks == {"avx2": 60.0} and per_cpu == {"avx2": 30.0}, (peaks, per_cpu)
    assert v.status == "NOISY", v.noise
    v = benchlib.Verdict()
    cpu.combine_peaks(before, before, v)
    assert v.status == "VALID", v.noise


@case
def results_of_the_same_minute_are_kept():
    import datetime
    when = datetime.datetime(2026, 12, 4, 1, 0)
    with tempfile.TemporaryDirectory() as d:
        rec = benchlib.machine_record()
        p1, _ = benchlib.write_results(d, "x", "bench/x", rec, benchlib.Verdict(), ["a"],
                                       when=when)
        p2, _ = benchlib.write_results(d, "x", "bench/x", rec, benchlib.Verdict(), ["b"],
                                       when=when)
        assert p1 != p2 and p2.endswith("-2.txt"), (p1, p2)
        assert open(p1).read().splitlines()[-1] == "a" and open(p2).read().splitlines()[-1] == "b"


def main():
    failed = 0
    for fn in CASES:
        try:
            fn()
            print("ok   " + fn.__name__)
        except Exception as e:  # noqa: BLE001 - report every case
            failed += 1
            print("FAIL %s: %r" % (fn.__name__, e))
    print("CASES: %d passed, %d failed, 0 skipped" % (len(CASES) - failed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
