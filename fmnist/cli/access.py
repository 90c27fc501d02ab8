"""Give an account a role on the team's MLflow server (`make mlflow-server`: `mlflow server --app-name
basic-auth`). Run by the server's admin: MLFLOW_TRACKING_URI is the server, MLFLOW_TRACKING_USERNAME/PASSWORD
the admin's. The account is created if it does not exist, with the password read from standard input.

    printf '%s\\n' "$NEW_PASSWORD" | fmnist access grant ci-bot ci --password-stdin
    fmnist access grant alice teammate --password-stdin < alice.secret
    fmnist access grant bob viewer        # bob exists: only his role changes

Roles, on this pipeline's experiment and its registered ensemble (params.yaml's dataset.name):
    ci        logs runs, registers versions and moves the alias `champion`
    teammate  logs runs and reads everything; cannot register a version or move the alias
    viewer    reads runs and loads models (the server's default permission, READ); logs nothing
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings

import mlflow
from mlflow.exceptions import MlflowException

from fmnist.params import parse_params
from fmnist.redaction import redact
from fmnist.tracking import lineage
from fmnist.tracking.registry import ensemble_name
from fmnist.tracking.run import experiment_name
from fmnist.tracking.store import TrackingError, error_code, experiment_id, refusal, tracking_uri

log = logging.getLogger("fmnist.access")

# role -> {resource type: permission}; what a role lacks is revoked, so it falls back to the default, READ.
ROLES = {
    "ci": {"experiment": "EDIT", "registered_model": "MANAGE"},
    "teammate": {"experiment": "EDIT"},
    "viewer": {},
}
RESOURCES = ("experiment", "registered_model")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True)
    grant = actions.add_parser("grant", help="create the account if needed and give it a role")
    grant.add_argument("user")
    grant.add_argument("role", choices=sorted(ROLES))
    grant.add_argument("--password-stdin", action="store_true",
                       help="read a new account's password from standard input (never from the command line)")


def run(args: argparse.Namespace) -> None:
    uri = tracking_uri()
    if not uri.startswith(("http://", "https://")):
        raise TrackingError(f"MLFLOW_TRACKING_URI is {redact(uri)}: accounts live on an MLflow server "
                            "(http:// or https://), not in a local store")
    try:
        grant(uri, args.user, args.role, args.password_stdin)
    except MlflowException as exc:
        if error_code(exc) == "PERMISSION_DENIED":
            raise TrackingError(f"MLflow server {redact(uri)}: only an admin account grants roles, and "
                                f"MLFLOW_TRACKING_USERNAME is {os.environ.get('MLFLOW_TRACKING_USERNAME')!r}") from None
        raise TrackingError(refusal(exc, uri) or f"MLflow server {redact(uri)}: {redact(str(exc))}") from None


def grant(uri: str, user: str, role: str, password_stdin: bool) -> None:
    with warnings.catch_warnings():  # the server's modules, imported with the client, warn about the server's ASGI
        warnings.simplefilter("ignore")
        from mlflow.server.auth.client import AuthServiceClient

    mlflow.set_tracking_uri(uri)
    auth = AuthServiceClient(uri)
    try:
        auth.get_user(user)
    except MlflowException as exc:
        if error_code(exc) != "RESOURCE_DOES_NOT_EXIST":
            raise
        auth.create_user(user, new_password(user, password_stdin))
        log.info("created account %s", user)
    resources = owned_resources(uri)
    for kind in RESOURCES:
        if kind in ROLES[role]:
            auth.grant_user_permission(user, kind, resources[kind], ROLES[role][kind])
        else:
            try:
                auth.revoke_user_permission(user, kind, resources[kind])
            except MlflowException as exc:
                if error_code(exc) != "RESOURCE_DOES_NOT_EXIST":
                    raise
    granted = ", ".join(f"{kind} {resources[kind]} {ROLES[role][kind]}" for kind in ROLES[role]) or "READ only"
    log.info("%s is a %s on %s: %s", user, role, redact(uri), granted)


def new_password(user: str, password_stdin: bool) -> str:
    if not password_stdin:
        raise TrackingError(f"account {user} does not exist: pass --password-stdin and its password on standard "
                            "input to create it")
    password = sys.stdin.readline().rstrip("\n")
    if len(password) < 12:
        raise TrackingError(f"the password for {user} on standard input has {len(password)} characters; "
                            "12 or more are required")
    return password


def owned_resources(uri: str) -> dict[str, str]:
    """{resource type: id or name} of this pipeline's experiment and registered ensemble, created by the admin when
    missing: whoever creates one manages it, so no teammate may be first."""
    experiment = experiment_id(experiment_name(), uri)
    model = ensemble_name(parse_params(lineage.all_params()).dataset.name)
    client = mlflow.MlflowClient(uri)
    try:
        client.get_registered_model(model)
    except MlflowException as exc:
        if error_code(exc) != "RESOURCE_DOES_NOT_EXIST":
            raise
        client.create_registered_model(model, description="The pipeline's ensemble; CI registers its versions")
    return {"experiment": experiment, "registered_model": model}
