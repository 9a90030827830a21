"""S3 uploads keep boto3's classic transfer manager where boto3 itself would switch to the CRT one (whose
client ignores ``AWS_ENDPOINT_URL`` and forces TLS, boto/boto3#4839). Needs ``awscrt`` (``boto3[crt]``),
as the benchmarks' CRT baseline does; against moto's S3 endpoint on 127.0.0.1. (Downloads use no transfer
manager: one GET per stream, the engine's streams for parallel ranges.)"""

from __future__ import annotations

import os

import awscrt.s3
import boto3.crt
from boto3.s3.transfer import TransferConfig, create_transfer_manager
from s3transfer.manager import TransferManager

from jupyter_staging.destinations.s3 import upload_transfer_config


def own_crt_lock(name: str) -> awscrt.s3.CrossProcessLock:
    """The CRT's process lock under a name of this process's own, acquired (boto3's is machine-wide)."""
    lock = awscrt.s3.CrossProcessLock(f"{name}-test-{os.getpid()}")
    lock.acquire()
    return lock


def test_the_classic_transfer_manager_is_kept_where_boto3_would_choose_the_crt(s3_env, monkeypatch):
    client, _ = s3_env
    # A machine awscrt calls optimized (large EC2 instances): boto3's "auto" then switches to the CRT
    # manager, which ignores AWS_ENDPOINT_URL.
    monkeypatch.setattr(awscrt.s3, "is_optimized_for_system", lambda: True)
    # boto3 uses the CRT in one process of the machine at a time (a cross-process lock): another process
    # holding it (a second test run, a benchmark) would make boto3 fall back to the classic manager here.
    monkeypatch.setattr(boto3.crt, "acquire_crt_s3_process_lock", own_crt_lock)
    with create_transfer_manager(client, TransferConfig()) as auto:
        assert type(auto) is not TransferManager
    config = upload_transfer_config()
    assert config.preferred_transfer_client == "classic"
    with create_transfer_manager(client, config) as manager:
        assert type(manager) is TransferManager
