#!/usr/bin/env bash
# The nightly run: preprocess the clips that arrived under the input prefix, then score the utterances that are
# new. The ONE place its commands are written; every scheduler calls this script:
#   cluster/vm-crontab                    -> cluster/nightly.sh submit   (a Ray cluster on VMs)
#   cluster/kuberay/nightly-cronjob.yaml  -> cluster/nightly.sh rayjob   (Kubernetes + KubeRay)
#   cluster/kuberay/rayjob-nightly.yaml   -> cluster/nightly.sh run      (the RayJob's entrypoint)
#
#   nightly.sh submit        ray job submit --address "$RAY_ADDRESS" --working-dir <repo> -- bash cluster/nightly.sh run
#   nightly.sh rayjob        kubectl create a RayJob from kuberay/rayjob-nightly.yaml (a fresh GPU cluster)
#   nightly.sh run           both steps here, one after the other (inside a Ray job, or beside a Ray cluster:
#                            RAY_ADDRESS; without it each job starts its own local Ray); scoring runs even if
#                            preprocessing failed; exit 1 if either failed
#   nightly.sh print STEP    the command of STEP (preprocess | score), one argument per line
#   nightly.sh settings      the resolved settings, KEY=VALUE
#
# Locations and options: cluster/nightly.env (or the file CMBERT_ENV_FILE names); a variable already set in the
# environment wins. `submit` hands the resolved settings to the job (runtime env, non-secret locations only).
# Credentials are never passed here: nodes and pods get them from their environment, a Secret or a workload
# identity.
#
# Exactly once, end to end: both jobs are incremental. Preprocess skips every clip already turned into
# utterances or rejected (by content hash) and publishes whole clips only; scoring skips every utterance this
# model version has scored and publishes a run's scores only at its end. So a night that dies anywhere (in
# preprocess, between the steps, in scoring) leaves only whole results, and the next night does exactly what is
# missing. The schedulers never run two nights at once (crontab: flock; CronJob: concurrencyPolicy Forbid and the
# RayJob's activeDeadlineSeconds, well under a day).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ENV_FILE="${CMBERT_ENV_FILE:-$REPO/cluster/nightly.env}"
PYTHON="${PYTHON:-python}"
SETTINGS=()

load_settings() {
    [[ -f "$ENV_FILE" ]] || { echo "nightly: settings file $ENV_FILE not found" >&2; exit 2; }
    local line key
    while IFS= read -r line || [[ -n "$line" ]]; do
        [[ "$line" =~ ^[[:space:]]*(#|$) ]] && continue
        if [[ ! "$line" =~ ^(CMBERT_[A-Z0-9_]+)=(.*)$ ]]; then
            echo "nightly: $ENV_FILE: not a CMBERT_KEY=VALUE line: $line" >&2
            exit 2
        fi
        key="${BASH_REMATCH[1]}"
        SETTINGS+=("$key")
        if [[ -z "${!key+set}" ]]; then  # the environment wins
            export "$key=${BASH_REMATCH[2]}"
        fi
    done <"$ENV_FILE"
    local need
    for need in CMBERT_INPUT CMBERT_DATA CMBERT_CHECKPOINT CMBERT_OUTPUT; do
        [[ -n "${!need:-}" ]] || { echo "nightly: $need is not set (in $ENV_FILE or the environment)" >&2; exit 2; }
    done
}

preprocess_command() {
    local -a opts=()
    read -r -a opts <<<"${CMBERT_PREPROCESS_OPTIONS:-}"
    CMD=("$PYTHON" jobs/preprocess.py --input "$CMBERT_INPUT" --output "$CMBERT_DATA")
    [[ -n "${CMBERT_MANIFEST:-}" ]] && CMD+=(--manifest "$CMBERT_MANIFEST")
    CMD+=("${opts[@]}")
}

score_command() {
    local -a opts=()
    read -r -a opts <<<"${CMBERT_SCORE_OPTIONS:-}"
    CMD=("$PYTHON" jobs/score.py --checkpoint "$CMBERT_CHECKPOINT" --input "$CMBERT_DATA/utterances"
         --output "$CMBERT_OUTPUT")
    [[ -n "${CMBERT_SCORE_DATE:-}" ]] && CMD+=(--score-date "$CMBERT_SCORE_DATE")
    CMD+=("${opts[@]}")
}

FAILED=()

step() {
    local name="$1" t0=$SECONDS
    "${name}_command"
    echo "[nightly] $name: ${CMD[*]}"
    if "${CMD[@]}"; then
        echo "[nightly] $name done in $((SECONDS - t0)) s"
    else
        echo "[nightly] $name failed after $((SECONDS - t0)) s; the next night picks up what is missing" >&2
        FAILED+=("$name")
    fi
}

runtime_env_json() {
    # The upload skips what .gitignore lists (.venv, runs) and .git; the job gets the resolved settings.
    "$PYTHON" -c 'import json, os, sys
print(json.dumps({"excludes": [".git"], "env_vars": {k: os.environ[k] for k in sys.argv[1:]}}))' "${SETTINGS[@]}"
}

mode="${1:-}"
case "$mode" in
  run)
    load_settings
    cd "$REPO"
    step preprocess
    # Scoring runs even when preprocessing failed: what earlier nights (or this one) published is whole, and
    # scoring it now is never wrong; the failed step's work is done by the next night.
    step score
    if (( ${#FAILED[@]} )); then
        echo "[nightly] failed: ${FAILED[*]}" >&2
        exit 1
    fi
    echo "[nightly] done: scores in $CMBERT_OUTPUT/scores"
    ;;
  print)
    load_settings
    case "${2:-}" in
      preprocess|score) "${2}_command"; printf '%s\n' "${CMD[@]}" ;;
      *) echo "usage: $0 print preprocess|score" >&2; exit 2 ;;
    esac
    ;;
  settings)
    load_settings
    for key in "${SETTINGS[@]}"; do printf '%s=%s\n' "$key" "${!key}"; done
    ;;
  submit)
    load_settings
    cd "$REPO"
    exec ray job submit --address "${RAY_ADDRESS:-http://127.0.0.1:8265}" --working-dir . \
        --runtime-env-json "$(runtime_env_json)" -- bash cluster/nightly.sh run
    ;;
  rayjob)
    # generateName gives each night its own RayJob (cmbert-nightly-xxxxx); the RayJob deletes its cluster.
    exec kubectl create --namespace "${KUBE_NAMESPACE:-cmbert}" -f "$REPO/cluster/kuberay/rayjob-nightly.yaml"
    ;;
  *)
    echo "usage: $0 run|submit|rayjob|print preprocess|print score|settings" >&2
    exit 2
    ;;
esac
