#!/usr/bin/env bash
# The nightly scoring run: the ONE place its command is written. Every scheduler calls this script:
#   cluster/vm-crontab                       -> cluster/nightly-score.sh submit   (a Ray cluster on VMs)
#   cluster/kuberay/nightly-score-cronjob.yaml -> cluster/nightly-score.sh rayjob (Kubernetes + KubeRay)
#   cluster/kuberay/rayjob-score.yaml        -> cluster/nightly-score.sh run      (the RayJob's entrypoint)
#
#   nightly-score.sh submit   ray job submit --address "$RAY_ADDRESS" --working-dir <repo> -- <command>
#   nightly-score.sh rayjob   kubectl create a RayJob from kuberay/rayjob-score.yaml (a fresh GPU cluster)
#   nightly-score.sh run      run <command> here (inside a Ray job, or with a local Ray)
#   nightly-score.sh print    print <command>, one argument per line (tests compare it with the manifests)
#
# Settings (environment; the defaults are the production locations):
#   CMBERT_CHECKPOINT  checkpoint to score with          s3://cmbert-models/cmbert/current
#   CMBERT_UTTERANCES  utterances from jobs/preprocess.py s3://cmbert-data/corpus/utterances
#   CMBERT_OUTPUT      scores go to OUTPUT/scores         s3://cmbert-data/scored
#   CMBERT_BATCH_SIZE  utterances per forward pass        128
#   CMBERT_GPU         1: one GPU per scoring actor       1
#   RAY_ADDRESS        Ray job API for `submit`           http://127.0.0.1:8265
#   KUBE_NAMESPACE     namespace for `rayjob`             cmbert
# Credentials are never passed here: the cluster's pods/nodes get them from a Secret or a workload identity.
# The job is incremental and exactly-once, so a missed or repeated night costs nothing but time.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

CMBERT_CHECKPOINT="${CMBERT_CHECKPOINT:-s3://cmbert-models/cmbert/current}"
CMBERT_UTTERANCES="${CMBERT_UTTERANCES:-s3://cmbert-data/corpus/utterances}"
CMBERT_OUTPUT="${CMBERT_OUTPUT:-s3://cmbert-data/scored}"
CMBERT_BATCH_SIZE="${CMBERT_BATCH_SIZE:-128}"
CMBERT_GPU="${CMBERT_GPU:-1}"

SCORE=(python jobs/score.py
       --checkpoint "$CMBERT_CHECKPOINT"
       --input "$CMBERT_UTTERANCES"
       --output "$CMBERT_OUTPUT"
       --batch-size "$CMBERT_BATCH_SIZE")
if [[ "$CMBERT_GPU" == "1" ]]; then
  SCORE+=(--gpu)
fi

mode="${1:-submit}"
case "$mode" in
  print)
    printf '%s\n' "${SCORE[@]}"
    ;;
  run)
    cd "$REPO"
    exec "${SCORE[@]}"
    ;;
  submit)
    cd "$REPO"
    exec ray job submit --address "${RAY_ADDRESS:-http://127.0.0.1:8265}" --working-dir . -- "${SCORE[@]}"
    ;;
  rayjob)
    # generateName gives each night its own RayJob (cmbert-score-xxxxx); the RayJob deletes its cluster.
    exec kubectl create --namespace "${KUBE_NAMESPACE:-cmbert}" -f "$REPO/cluster/kuberay/rayjob-score.yaml"
    ;;
  *)
    echo "usage: $0 [submit|rayjob|run|print]" >&2
    exit 2
    ;;
esac
