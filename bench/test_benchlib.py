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
    # the demucs side reports its load time; CPU time comes from /usr/bin/time
    r = e2e.timed([sys.executable, "-c", "import sys, time\nt=time.process_time()\n"
                   "while time.process_time()-t<0.2: pass\n"
                   "print('E2E_LOAD_SECONDS 1.250', file=sys.stderr)"])
    assert r["load"] == 1.25 and r["cpu"] >= 0.15 and r["wall"] > 0, r
    # workerd prints its phase times only on a terminal: tty=True must give it one
    r = e2e.timed(["sh", "-c", "test -t 2 && echo 'x: decode 0.00 s, separate 0.00 s, "
                   "encode 0.00 s'"], tty=True)
    assert r["load"] is not None and abs(r["load"] - r["wall"]) < 1e-9, r


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
