"""Runner kinds: a kernel's in-process engine and a server sharing one job database take over only the jobs
of dead runners of their own kind. Real managers in this process play the hosts (``on_host``), on one real
SQLite job database."""

from __future__ import annotations

import os
from datetime import timedelta

import pytest

from jupyter_staging.engine import processes
from jupyter_staging.engine.leases import Verdict, expired, verdict
from jupyter_staging.engine.manager import StagingManager
from jupyter_staging.engine.models import CreateJob
from jupyter_staging.engine.store import utcnow
from tests.engine.conftest import job_of_a_dead_host
from tests.helpers.data import wait_until


def test_a_kernel_engine_never_takes_over_a_servers_job_whose_lease_expired_and_a_server_does(
    tmp_path, on_host
):
    """Server podA died (or is late renewing: the same row) with a job running, its lease expired. A
    kernel's engine on the same database leaves it alone at its start and at every heartbeat; a server of
    another host takes it over and finishes it. Before, the kernel took it over and ran it in the kernel."""
    job_id = job_of_a_dead_host(tmp_path, on_host, lease_left=timedelta(seconds=-1))
    kernel = on_host("podK", kind="kernel")
    assert kernel.runner_id.startswith("kernel/podK:")
    assert kernel.start() == []
    assert kernel.recover_expired() == []
    assert expired(kernel.store, kernel.runner_id, str(kernel.root_dir), utcnow()) == []
    kernel.heartbeat.beat()
    rec = kernel.store.get_job(job_id, resume=False)
    assert rec.runner.startswith("podA:") and rec.state == "running"

    server = on_host("podB")
    assert expired(server.store, server.runner_id, str(server.root_dir), utcnow()) == [job_id]
    assert server.start() == [job_id]
    assert server.wait(job_id, timeout=60).state.value == "succeeded"
    assert (tmp_path / "root" / "out" / "survey.bin").stat().st_size == 1024


def test_a_server_never_takes_over_a_kernels_job_and_the_next_kernel_engine_does(tmp_path, on_host):
    """A kernel's engine died with a job running, its lease expired: a server on the same database leaves
    it alone (at its start, at its beats); the next kernel's engine on that root resumes it."""
    (tmp_path / "archive").mkdir()
    (tmp_path / "archive" / "survey.bin").write_bytes(os.urandom(1024))
    dead = on_host("podK", kind="kernel")  # never started: no heartbeat, as a killed kernel
    job, _ = dead.create(
        CreateJob(source=str(tmp_path / "archive" / "survey.bin"), destination="out"), start=False
    )
    dead.store.set_job_fields(job.id, state="running", lease_expires_at=utcnow() - timedelta(seconds=1))

    server = on_host("podB")
    assert server.start() == [] and server.recover_expired() == []
    assert server.store.get_job(job.id, resume=False).runner == dead.runner_id

    kernel = on_host("podJ", kind="kernel")
    assert kernel.start() == [job.id]
    assert kernel.wait(job.id, timeout=60).state.value == "succeeded"


def test_a_kernel_engine_leaves_a_servers_job_alone_after_its_lease_expires_while_it_runs(tmp_path, on_host):
    """The kernel's engine started while the server's lease still ran; the lease then expires (the server
    killed). The kernel's heartbeats, which take over expired leases, never take it."""
    job_id = job_of_a_dead_host(tmp_path, on_host, lease_left=timedelta(seconds=1))
    kernel = on_host("podK", kind="kernel")
    assert kernel.start() == []
    lease = kernel.store.get_job(job_id, resume=False).lease_expires_at
    wait_until(lambda: utcnow() > lease + timedelta(seconds=1), timeout=10, what="the lease to expire")
    kernel.heartbeat.start()
    for _ in range(3):
        kernel.heartbeat.beat()
        assert kernel.recover_expired() == []
    rec = kernel.store.get_job(job_id, resume=False)
    assert rec.runner.startswith("podA:") and rec.state == "running"


def test_a_kernel_runner_id_is_checked_as_a_process_of_its_host():
    """A kernel's runner id names this process: alive on this host (by pid), its kind ``kernel``; a
    server's id (every release's form) is of kind ``server``, and so is no runner."""
    runner = processes.this_runner(processes.KERNEL)
    host, pid, _ = processes.parse_runner(runner)
    assert runner.startswith("kernel/") and host == processes.host_name() and pid == str(os.getpid())
    assert processes.runner_alive(runner)
    assert processes.runner_kind(runner) == "kernel"
    assert processes.runner_kind(processes.this_runner()) == "server"
    assert processes.runner_kind(None) == "server"


def test_a_live_kernel_engines_job_is_alive_for_a_server_of_its_host(tmp_path, on_host):
    """A server of the kernel's host judges a kernel's runner by its pid, as its own kind's."""
    kernel = on_host("podK", kind="kernel")
    job, _ = kernel.create(CreateJob(source=str(tmp_path), destination="out"), start=False)
    rec = kernel.store.get_job(job.id, resume=False)
    assert verdict(rec, host="podK", now=utcnow()) == Verdict.ALIVE


def test_an_unknown_runner_kind_is_refused(tmp_path):
    with pytest.raises(ValueError, match="runner kind"):
        StagingManager(tmp_path, db_url=f"sqlite:///{tmp_path / 'jobs.sqlite'}", runner_kind="notebook")
    assert not (tmp_path / "jobs.sqlite").exists()
