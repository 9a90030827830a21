"""The ``azure`` check: the ``azure`` extra is installed and the configured account (or a named container)
answers."""

from __future__ import annotations

from typing import Any

from jupyter_staging.cli.model import (
    ENV_AZURE_CONTAINER,
    FAIL,
    OK,
    SKIP,
    WARN,
    Check,
    DoctorSettings,
    first_line,
)
from jupyter_staging.clouds import azure as az
from jupyter_staging.safety.redact import redact_url

NAME = "azure"
KEY_FIX = (
    f"check the key or SAS in {az.ENV_CONNECTION_STRING}, {az.ENV_KEY} or {az.ENV_SAS} (and that "
    "a SAS has not expired)"
)


def _sdk_installed() -> bool:
    try:
        az.require_sdk()
    except Exception:
        return False
    return True


def check_azure(settings: DoctorSettings) -> Check:
    """The azure extra is installed and the configured account (or the named container) answers."""
    configured = az.azure_configured()
    sdk = _sdk_installed()
    if not configured:
        extra = "" if sdk else "; the azure extra is not installed either"
        return Check(
            NAME,
            SKIP,
            f"Azure Blob Storage is not configured here (no {az.ENV_CONNECTION_STRING}, "
            f"{az.ENV_ACCOUNT} or {az.ENV_ACCOUNT_URL}){extra}",
            f"to use az:// sources: {'' if sdk else az.INSTALL_HINT + ', then '}set "
            f"{az.ENV_CONNECTION_STRING} (or {az.ENV_ACCOUNT} with {az.ENV_KEY} or {az.ENV_SAS})",
        )
    if not sdk:
        return Check(
            NAME,
            FAIL,
            "Azure settings are present but azure-storage-blob (the azure extra) is not installed",
            az.INSTALL_HINT,
        )
    try:
        service = az.blob_service_client(retries=0)
    except Exception as exc:
        return Check(
            NAME,
            FAIL,
            getattr(exc, "message", None) or first_line(exc),
            f"set {az.ENV_CONNECTION_STRING} as the portal shows it (Access keys > Connection string)",
        )
    return check_account(service, settings.azure_container)


def check_account(service: Any, container: str | None) -> Check:
    """The account of the ``BlobServiceClient`` ``service`` describes itself, or ``container`` in it
    answers."""
    # The azure extra is optional: its SDK is imported only once it is known to be installed.
    from azure.core.exceptions import AzureError, HttpResponseError

    account = service.account_name
    where = redact_url(service.primary_endpoint)
    try:
        if container:
            service.get_container_client(container).get_container_properties()
        else:
            info = service.get_account_information()
    except HttpResponseError as exc:
        return _refused(exc, account, where, container)
    except AzureError as exc:
        return Check(
            NAME,
            FAIL,
            f"cannot reach Azure Blob Storage at {where}: {az.describe_azure_error(exc)}",
            "check the BlobEndpoint / account URL (host and port) and that the service is reachable "
            "from this machine",
        )
    if container:
        return Check(NAME, OK, f"the container {container!r} in the account {account} at {where} answers")
    sku = info.get("sku_name") or "unknown SKU"
    return Check(
        NAME,
        WARN,
        f"the account {account} at {where} accepts the credentials ({sku}); no container was named to check",
        f"name a container staging reads: --azure-container NAME or {ENV_AZURE_CONTAINER}=NAME",
    )


def _refused(exc: Any, account: str, where: str, container: str | None) -> Check:
    """What the ``HttpResponseError`` ``exc`` from the account (or ``container``) means, and its fix."""
    code = az.error_code(exc) or str(exc.status_code)
    if code == "ContainerNotFound" or (container and exc.status_code == 404):
        return Check(
            NAME,
            FAIL,
            f"the container {container!r} does not exist in the account {account} at {where}",
            f"create it (az storage container create -n {container}) or name an existing one with "
            f"--azure-container / {ENV_AZURE_CONTAINER}",
        )
    if code in ("AuthenticationFailed", "InvalidAuthenticationInfo") or exc.status_code == 401:
        return Check(NAME, FAIL, f"the account {account} at {where} refused the key or SAS ({code})", KEY_FIX)
    if exc.status_code == 403 and container:
        return Check(
            NAME,
            FAIL,
            f"the account {account} at {where} refused the key or SAS for the container "
            f"{container!r} ({code}): it is wrong or expired, or may not read and list that container",
            KEY_FIX + "; grant read and list access (Storage Blob Data Reader, or a SAS with r and l)",
        )
    if exc.status_code == 403:
        return Check(
            NAME,
            WARN,
            f"the account {account} at {where} answers but refused to describe itself ({code}): the "
            "key or SAS is wrong, or only grants access to some containers",
            f"name a container staging reads (--azure-container NAME or {ENV_AZURE_CONTAINER}=NAME) "
            f"to check it; {KEY_FIX}",
        )
    return Check(
        NAME,
        FAIL,
        f"the account {account} at {where} answered {code}"
        + (f" for the container {container!r}" if container else ""),
        "check the account's settings and the service's status",
    )
