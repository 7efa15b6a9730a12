"""The default thread count: affinity, physical cores, cgroup quota (on fake sysfs trees)."""

from pathlib import Path

from smallmind import cpu_budget
from smallmind.cpu_budget import cgroup_cpu_limit, physical_cores


def fake_topology(root: Path, siblings: dict[int, str]) -> Path:
    for cpu, text in siblings.items():
        d = root / f"cpu{cpu}" / "topology"
        d.mkdir(parents=True)
        (d / "thread_siblings_list").write_text(text + "\n")
    return root


def test_smt_siblings_count_as_one_core(tmp_path):
    sysfs = fake_topology(tmp_path, {0: "0,4", 1: "1,5", 4: "0,4", 5: "1,5", 2: "2"})
    assert physical_cores({0, 1, 4, 5}, sysfs) == 2
    assert physical_cores({0, 1, 2}, sysfs) == 3


def test_unreadable_topology_counts_cpus(tmp_path):
    assert physical_cores({0, 1, 2}, tmp_path) == 3


def test_cgroup_v2_quota(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_limit(tmp_path) == 2
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(tmp_path) is None
    (tmp_path / "cpu.max").write_text("5000 100000\n")  # a tenth of a CPU still gets a thread
    assert cgroup_cpu_limit(tmp_path) == 1


def test_cgroup_v1_quota(tmp_path):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("400000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_limit(tmp_path) == 4
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(tmp_path) is None


def test_no_cgroup_files_means_no_limit(tmp_path):
    assert cgroup_cpu_limit(tmp_path) is None


def test_default_threads_takes_the_smallest_limit(monkeypatch):
    monkeypatch.setattr(cpu_budget, "allowed_cpus", lambda: set(range(16)))
    monkeypatch.setattr(cpu_budget, "physical_cores", lambda cpus: len(cpus) // 2)
    monkeypatch.setattr(cpu_budget, "cgroup_cpu_limit", lambda: None)
    assert cpu_budget.default_threads() == 8
    monkeypatch.setattr(cpu_budget, "cgroup_cpu_limit", lambda: 3)
    assert cpu_budget.default_threads() == 3


def test_this_machine_gets_at_least_one_thread():
    assert 1 <= cpu_budget.default_threads() <= len(cpu_budget.allowed_cpus())
