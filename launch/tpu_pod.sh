#!/usr/bin/env bash
# Train on a Cloud TPU VM slice: create the slice (or reuse it; a preempted one is recreated), copy
# this checkout to every worker, install it there, and start the trainer on all workers at once.
# Rerunning the same command resumes the run from the newest checkpoint in --workdir.
#
#   launch/tpu_pod.sh --name NAME --zone ZONE --accelerator v5p-32 \
#     --config configs/forms_vqa.py --workdir gs://BUCKET/deed_jax/forms_vqa [--project P] \
#     [--version tpu-ubuntu2204-base] [--spot] [--dry_run] [-- extra train flags]
#
# --workdir must be a gs:// path: every worker writes its shards of each checkpoint there. The data
# dir (--config.task.data_dir) should be one too, or the dataset is prepared on each worker's disk.
# --dry_run prints the gcloud commands instead of running them. The trainer's output goes to
# ~/deed_jax_train.log on each worker; `gcloud compute tpus tpu-vm ssh NAME --worker=0 --zone ZONE
# --command 'tail -f ~/deed_jax_train.log'` follows it.
set -euo pipefail
cd "$(dirname "$0")/.."

NAME="" ZONE="" ACCELERATOR="" CONFIG="" WORKDIR="" PROJECT="" SPOT=0 DRY_RUN=0
VERSION="tpu-ubuntu2204-base"
usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --name) NAME="$2"; shift 2 ;;
    --zone) ZONE="$2"; shift 2 ;;
    --accelerator) ACCELERATOR="$2"; shift 2 ;;
    --config) CONFIG="$2"; shift 2 ;;
    --workdir) WORKDIR="$2"; shift 2 ;;
    --project) PROJECT="$2"; shift 2 ;;
    --version) VERSION="$2"; shift 2 ;;
    --spot) SPOT=1; shift ;;
    --dry_run) DRY_RUN=1; shift ;;
    --) shift; break ;;
    *) echo "error: unknown argument $1" >&2; usage ;;
  esac
done
for required in NAME ZONE ACCELERATOR CONFIG WORKDIR; do
  [ -n "${!required}" ] || { echo "error: --${required,,} is required" >&2; usage; }
done
case "$WORKDIR" in
  gs://*) ;;
  *) echo "error: --workdir=$WORKDIR must be a gs:// path (all workers write checkpoints there)" >&2
     exit 2 ;;
esac
[ -f "${CONFIG%%:*}" ] || { echo "error: --config=$CONFIG: no file ${CONFIG%%:*}" >&2; exit 2; }

GCLOUD=(gcloud compute tpus tpu-vm)
WHERE=(--zone "$ZONE")
[ -n "$PROJECT" ] && WHERE+=(--project "$PROJECT")
run() {  # print a command (shell-quoted) and run it unless --dry_run
  printf '+'; printf ' %q' "$@"; printf '\n'
  [ "$DRY_RUN" = 1 ] || "$@"
}

# 1. The slice: reuse a READY one; recreate one that was preempted or stopped.
STATE="NOT_FOUND"
if [ "$DRY_RUN" = 0 ]; then
  STATE="$("${GCLOUD[@]}" describe "$NAME" "${WHERE[@]}" --format='value(state)' 2>/dev/null || echo NOT_FOUND)"
fi
case "$STATE" in
  READY) echo "Reusing TPU VM $NAME ($ACCELERATOR) in $ZONE." ;;
  NOT_FOUND) ;;
  *) echo "TPU VM $NAME is $STATE: deleting it to create it again (checkpoints live in $WORKDIR)."
     run "${GCLOUD[@]}" delete "$NAME" "${WHERE[@]}" --quiet ;;
esac
if [ "$STATE" != READY ]; then
  CREATE=("${GCLOUD[@]}" create "$NAME" "${WHERE[@]}" --accelerator-type "$ACCELERATOR"
          --version "$VERSION")
  [ "$SPOT" = 1 ] && CREATE+=(--spot)
  run "${CREATE[@]}"
fi

# 2. This checkout (tracked files, as committed) on every worker, installed with the TPU build of jax.
ARCHIVE="${TMPDIR:-/tmp}/deed_jax_$$.tar.gz"
run git archive --format=tar.gz --prefix=deed_jax/ -o "$ARCHIVE" HEAD
run "${GCLOUD[@]}" scp "$ARCHIVE" "$NAME:deed_jax.tar.gz" "${WHERE[@]}" --worker=all
INSTALL="rm -rf ~/deed_jax && tar xzf ~/deed_jax.tar.gz -C ~ && cd ~/deed_jax && \
python3 -m pip install --quiet -c constraints.txt -e '.[tpu,gcs]'"
run "${GCLOUD[@]}" ssh "$NAME" "${WHERE[@]}" --worker=all --command "$INSTALL"

# 3. The trainer on all workers at once. JAX finds the slice's processes itself (--distributed);
# a rerun resumes from the newest checkpoint in the workdir.
TRAIN="python3 -m deed_jax.train --distributed --config $(printf '%q' "$CONFIG") \
--workdir $(printf '%q' "$WORKDIR")"
for flag in "$@"; do TRAIN+=" $(printf '%q' "$flag")"; done
START="cd ~/deed_jax && (pkill -f deed_jax.train || true) && \
nohup $TRAIN > ~/deed_jax_train.log 2>&1 &"
run "${GCLOUD[@]}" ssh "$NAME" "${WHERE[@]}" --worker=all --command "$START"
