#!/usr/bin/env bash
# The pull-request report: what this branch did to the numbers. Runs on GitHub (.github/workflows/pr.yml) and
# locally alike; needs the venv (make setup) and a checkout with history (the merge base with the base branch).
#
#   .github/pr-report.sh [BASE_BRANCH [ARTIFACTS_MD]] > report.md   # BASE_BRANCH: origin/main, else main
#
# 0. Artifacts: ARTIFACTS_MD, the output of .github/check-artifacts.sh, which the workflow runs in a step of its
#    own with the remote's read-only keys; this script runs the branch's code and gets no key. Without the file,
#    the check runs here (locally, with whatever credentials the environment has).
# 1. Committed results: `fmnist report` between the merge base and HEAD, i.e. the metrics the author
#    measured with the full pipeline and committed (dvc.lock + metrics/), with the regression gate (its
#    tolerances from the base revision: a branch cannot loosen its own gate).
# 2. CI profile: profiles/ci.yaml run on both revisions here (a subset, 2 epochs, 2 members), in worktrees
#    sharing one DVC cache, each result committed to a throwaway ref so `report` can diff them as revisions.
# Exit status: that of the regression gate on the committed results, or 1 when the CI profile fails on the branch.
# Pictures: each part's changed pictures, before and after, and both revisions' training curves are in an HTML
# page with everything embedded, under REPORT_DIR (default: report/), which the workflow keeps as the artifact
# `pr-report`. Where REPORT_ASSETS_URL names a place REPORT_DIR is published at (CML's `cml comment create
# --publish` does this on GitHub), the comment shows them inline too.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
out=${REPORT_DIR:-report}
mkdir -p "$out"
pictures() {  # $1 = this part's name: its HTML page and picture folder under $out; one argument a line
  printf '%s\n' --html "$out/$1.html" --assets "$out/$1"
  if [ -n "${REPORT_ASSETS_URL:-}" ]; then
    printf '%s\n' --assets-url "$REPORT_ASSETS_URL/$1"
  else
    printf '%s\n' --pictures-elsewhere "the pictures, before and after: \`$1.html\` in this run's artifact \`pr-report\`"
  fi
}
base_branch=${1:-$(git rev-parse --verify -q origin/main >/dev/null && echo origin/main || echo main)}
base=$(git merge-base HEAD "$base_branch")
work=$(mktemp -d)
trap 'git worktree remove --force "$work/base" 2>/dev/null; git worktree remove --force "$work/head" 2>/dev/null; rm -rf "$work"' EXIT

run_profile() {  # $1 = revision, $2 = worktree path; prints the commit holding the CI-profile results
  git worktree add -q --detach "$2" "$1" >&2 || return 1
  ( cd "$2" \
    && dvc cache dir --local "$work/cache" \
    && fmnist profile profiles/ci.yaml \
    && MLFLOW_TRACKING_URI="sqlite:///$work/mlflow.db" dvc repro --quiet \
    && git add -A -f params.yaml dvc.lock metrics plots \
    && git -c user.name=ci -c user.email=ci@localhost commit -q -m "CI profile of $1" \
    && git rev-parse HEAD ) >&2 && git -C "$2" rev-parse HEAD
}

echo "# Pipeline report"
echo
echo "## Committed results (full pipeline, as measured and committed on this branch)"
echo
mapfile -t committed_pictures < <(pictures committed)
fmnist report --base "$base" --fail-on-regression --head HEAD "${committed_pictures[@]}" | sed 's/^## /### /'
gate=${PIPESTATUS[0]}
echo
if [ -n "${2:-}" ]; then
  sed 's/^## /### /' "$2"
else
  .github/check-artifacts.sh | sed 's/^## /### /' || gate=1
fi
echo
echo "## CI profile (\`profiles/ci.yaml\`, re-run here on both revisions)"
echo
if ! git cat-file -e "$base:profiles/ci.yaml" 2>/dev/null; then
  echo "The base revision has no CI profile yet: nothing to compare with."
elif ! base_result=$(run_profile "$base" "$work/base"); then
  echo "❌ the CI profile failed on the base revision \`${base:0:12}\` (log above in the job)."
elif ! head_result=$(run_profile HEAD "$work/head"); then
  echo "❌ the CI profile failed on this branch: the pipeline does not run end to end (log in the job)."
  gate=1
else
  # Informational: small-profile numbers move with any change; only the committed results gate the merge.
  mapfile -t profile_pictures < <(pictures ci-profile)
  fmnist report --base "$base_result" --head "$head_result" "${profile_pictures[@]}" \
    | sed 's/^## /### /; s/^\*\*\(✅ Gate passed\|❌ Gate failed\)\*\*/**\1 (informational: only the committed results gate the merge)**/'
fi
exit "$gate"
