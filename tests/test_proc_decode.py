"""The proc domain's small decoders, each alone (no BPF)."""

from bpfscope.exporters.proc import fmt_ns, in_cgroup, lock_type, task_state
from bpfscope.exporters.proc_portrait import blocked_on, exit_status


def test_exit_status_decodes_codes_signals_and_core_dumps():
    assert exit_status(3 << 8) == (3, None, False)
    assert exit_status(0) == (0, None, False)
    assert exit_status(11) == (None, "SIGSEGV", False)
    assert exit_status(0x80 | 6) == (None, "SIGABRT", True)
    assert exit_status(40) == (None, "SIG40", False)


def test_lock_type_from_contention_flags():
    assert lock_type(1) == "spinlock"
    assert lock_type(1 | 2) == "rwlock-read" and lock_type(1 | 4) == "rwlock-write"
    assert lock_type(2) == "rwsem-read" and lock_type(4) == "rwsem-write"
    assert lock_type(32) == "mutex" and lock_type(32 | 1) == "mutex"  # a mutex spins before it sleeps
    assert lock_type(8) == "rtmutex"
    assert lock_type(16 | 2) == "percpu-rwsem-read" and lock_type(16 | 4) == "percpu-rwsem-write"


def test_blocked_on_skips_the_scheduler_frames():
    leaf_first = ["__schedule_[k]", "schedule_[k]", "schedule_hrtimeout_range_clock_[k]", "do_nanosleep_[k]",
                  "hrtimer_nanosleep_[k]"]
    assert blocked_on(leaf_first) == "do_nanosleep"
    assert blocked_on(["__schedule_[k]", "schedule_[k]", "io_schedule_[k]", "folio_wait_bit_common_[k]"]) == \
        "folio_wait_bit_common"
    # a TCP receive waits in wait_woken, a generic helper: what it waits for is its caller
    assert blocked_on(["__schedule_[k]", "schedule_[k]", "schedule_timeout_[k]", "wait_woken_[k]",
                       "sk_wait_data_[k]", "tcp_recvmsg_locked_[k]"]) == "sk_wait_data"
    assert blocked_on(["__schedule_[k]", "schedule_[k]"]) == "schedule"
    assert blocked_on([]) == "?"


def test_task_state_words():
    assert [task_state(s) for s in (0, 1, 2, 0x402, 4, 8, 0x80)] == \
        ["running", "sleeping", "disk", "idle", "stopped", "stopped", "other"]


def test_cgroup_filter_matches_the_cgroup_and_below():
    assert in_cgroup("/a/b", "/a") and in_cgroup("/a", "a") and in_cgroup("/x", "/")
    assert not in_cgroup("/ab", "/a") and not in_cgroup(None, "/a")


def test_fmt_ns():
    assert [fmt_ns(x) for x in (5, 5_000, 5_000_000, 5_000_000_000)] == ["5ns", "5us", "5.0ms", "5.00s"]
