#!/usr/bin/env bash
# Are there pushed artifacts behind the committed results? Pulls every output this checkout's dvc.lock names from
# the default DVC remote (fmnist share pull, credentials from the environment), then `dvc status` must
# be clean. Prints a Markdown paragraph; exits 1 when the artifacts are missing or do not match. Used by
# pr-report.sh; without a configured remote it only warns.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
echo "## Artifacts behind the committed results"
echo
if ! remote=$(dvc remote default 2>/dev/null); then  # "No default remote set", exit 1
  echo "⚠️ No DVC remote is configured: the committed numbers cannot be checked against pushed artifacts."
elif [ -n "${CI:-}" ] && [ -z "${AWS_ACCESS_KEY_ID:-}" ]; then  # a fork's pull request gets no secrets
  echo "⚠️ No remote credentials: artifact check skipped (a pull request from a fork gets no secrets; a"
  echo "maintainer's rerun from a branch of this repository checks them)."
elif ! pulled=$(fmnist share pull 2>&1); then
  echo "❌ The outputs this branch's \`dvc.lock\` names could not be pulled: the committed metrics have no pushed"
  echo "artifacts behind them. Run \`fmnist share push\` from the clone that ran the pipeline."
  echo; echo '```'; echo "$pulled" | tail -n 5; echo '```'
  exit 1
elif ! dvc status --quiet >/dev/null 2>&1; then
  echo "❌ Pulled, but \`dvc status\` is not clean: the committed \`dvc.lock\`/\`metrics/\` do not match the"
  echo "pushed outputs. Rerun the pipeline (\`dvc repro\`), then commit and push again."
  echo; echo '```'; dvc status 2>&1 | head -n 20; echo '```'
  exit 1
else
  echo "✅ Every output \`dvc.lock\` names was pulled from \`$remote\`; \`dvc status\` is clean."
fi
