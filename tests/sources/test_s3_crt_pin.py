"""S3 uploads keep boto3's classic transfer manager where boto3 itself would switch to the CRT one (whose
client ignores ``AWS_ENDPOINT_URL`` and forces TLS, boto/boto3#4839). Needs ``awscrt`` (``boto3[crt]``),
as the benchmarks' CRT baseline does; against moto's S3 endpoint on 127.0.0.1. (Downloads use no transfer
manager: one GET per stream, the engine's streams for parallel ranges.)"""

from __future__ import annotations

import awscrt.s3
from boto3.s3.transfer import TransferConfig, create_transfer_manager
from s3transfer.manager import TransferManager

from jupyter_staging.destinations.s3 import upload_transfer_config


def test_the_classic_transfer_manager_is_kept_where_boto3_would_choose_the_crt(s3_env, monkeypatch):
    client, _ = s3_env
    # A machine awscrt calls optimized (large EC2 instances): boto3's "auto" then switches to the CRT
    # manager, which ignores AWS_ENDPOINT_URL.
    monkeypatch.setattr(awscrt.s3, "is_optimized_for_system", lambda: True)
    with create_transfer_manager(client, TransferConfig()) as auto:
        assert type(auto) is not TransferManager
    config = upload_transfer_config()
    assert config.preferred_transfer_client == "classic"
    with create_transfer_manager(client, config) as manager:
        assert type(manager) is TransferManager
