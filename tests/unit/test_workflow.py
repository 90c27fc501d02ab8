"""The pull-request workflow's safety, read from its YAML: pinned actions, least permissions, no token left in the
checkout, no event value pasted into a script, secrets in one job only. (zizmor and ShellCheck: the integration
tier.)"""
import re

import pytest
import yaml

from tests.conftest import ROOT

WORKFLOW = ROOT / ".github/workflows/pr.yml"


@pytest.fixture(scope="module")
def workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def steps(workflow: dict):
    for name, job in workflow["jobs"].items():
        for step in job["steps"]:
            yield name, step


def test_every_action_is_pinned_by_a_full_commit_sha(workflow):
    uses = [step["uses"] for _, step in steps(workflow) if "uses" in step]
    assert uses and all(re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", ref) for ref in uses), uses


def test_no_job_gets_more_than_it_asks_for(workflow):
    assert workflow["permissions"] == {}
    permissions = {name: job["permissions"] for name, job in workflow["jobs"].items()}
    assert permissions["tests"] == {"contents": "read"}
    assert permissions["artifacts"] == {"contents": "read"}
    assert permissions["report"] == {"contents": "read", "pull-requests": "write"}


def test_checkouts_leave_no_token_behind(workflow):
    checkouts = [step for _, step in steps(workflow) if step.get("uses", "").startswith("actions/checkout@")]
    assert len(checkouts) == 3 and all(step["with"]["persist-credentials"] is False for step in checkouts)


def test_no_expression_is_pasted_into_a_script(workflow):
    scripts = [step["run"] for _, step in steps(workflow) if "run" in step]
    assert scripts and not [script for script in scripts if "${{" in script]


def test_only_the_artifacts_job_sees_a_secret_and_it_runs_no_pipeline(workflow):
    with_secrets = {name for name, job in workflow["jobs"].items() if "secrets." in yaml.safe_dump(job)}
    assert with_secrets == {"artifacts"}
    job = workflow["jobs"]["artifacts"]
    assert job["environment"] == "dvc-remote-readonly"
    scripts = " ".join(step.get("run", "") for step in job["steps"])
    assert "dvc repro" not in scripts and "pr-report.sh" not in scripts and ".ci/run" not in scripts
