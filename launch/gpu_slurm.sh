#!/usr/bin/env bash
# Train on a Slurm GPU cluster: writes an sbatch script (one task per node, each driving all of its
# node's GPUs; the first node is the coordinator) and submits it. The checkout must be on a filesystem
# every node sees; the batch job sets up .venv/ there once (with the CUDA build of jax) before starting
# the tasks. Slurm sends SIGTERM two minutes before the time limit (or on preemption): the run saves a
# checkpoint and exits, and the job queues itself again; a requeued or resubmitted job resumes from
# the newest checkpoint.
#
#   launch/gpu_slurm.sh --nodes 2 --gpus_per_node 8 --config configs/forms_vqa.py \
#     --workdir /shared/deed_jax/forms_vqa [--partition P] [--time 24:00:00] [--port 29500] \
#     [--account A] [--extras cuda] [--dry_run] [-- extra train flags]
#
# --extras: the package extras .venv/ gets (default cuda: jax's CUDA 12 build; add e.g. convert).
# --dry_run prints the sbatch script instead of submitting it. Logs: <workdir>/slurm-<job id>.out.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$(pwd)"

NODES="" GPUS="" CONFIG="" WORKDIR="" PARTITION="" ACCOUNT="" TIME="24:00:00" PORT=29500 DRY_RUN=0
EXTRAS="cuda"
usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --nodes) NODES="$2"; shift 2 ;;
    --gpus_per_node) GPUS="$2"; shift 2 ;;
    --config) CONFIG="$2"; shift 2 ;;
    --workdir) WORKDIR="$2"; shift 2 ;;
    --partition) PARTITION="$2"; shift 2 ;;
    --account) ACCOUNT="$2"; shift 2 ;;
    --time) TIME="$2"; shift 2 ;;
    --port) PORT="$2"; shift 2 ;;
    --extras) EXTRAS="$2"; shift 2 ;;
    --dry_run) DRY_RUN=1; shift ;;
    --) shift; break ;;
    *) echo "error: unknown argument $1" >&2; usage ;;
  esac
done
declare -A FLAG=([NODES]=--nodes [GPUS]=--gpus_per_node [CONFIG]=--config [WORKDIR]=--workdir
                 [PORT]=--port)
for required in NODES GPUS CONFIG WORKDIR; do
  [ -n "${!required}" ] || { echo "error: ${FLAG[$required]} is required" >&2; usage; }
done
for number in NODES GPUS PORT; do
  [[ "${!number}" =~ ^[1-9][0-9]*$ ]] \
    || { echo "error: ${FLAG[$number]}=${!number} must be a positive integer" >&2; exit 2; }
done
[ -f "${CONFIG%%:*}" ] || { echo "error: --config=$CONFIG: no file ${CONFIG%%:*}" >&2; exit 2; }

TRAIN="$REPO/.venv/bin/python -m deed_jax.train --config $(printf '%q' "$CONFIG") \
--workdir $(printf '%q' "$WORKDIR")"
for flag in "$@"; do TRAIN+=" $(printf '%q' "$flag")"; done
# Each task fills in its own rank; \$ defers the expansion to the task's shell.
TASK="$TRAIN --coordinator_address \$COORDINATOR --num_processes \$SLURM_NTASKS \
--process_id \$SLURM_PROCID"

SCRIPT="#!/usr/bin/env bash
#SBATCH --job-name=deed_jax
#SBATCH --nodes=$NODES
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=$GPUS
#SBATCH --time=$TIME
#SBATCH --signal=TERM@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=$WORKDIR/slurm-%j.out${PARTITION:+
#SBATCH --partition=$PARTITION}${ACCOUNT:+
#SBATCH --account=$ACCOUNT}
set -euo pipefail
cd $(printf '%q' "$REPO")
source launch/setup_env.sh $(printf '%q' "$EXTRAS")  # once, on the first node, before the tasks start
export COORDINATOR=\"\$(scontrol show hostnames \"\$SLURM_JOB_NODELIST\" | head -n1):$PORT\"
srun --kill-on-bad-exit=1 bash -c $(printf '%q' "$TASK")
# Stopped by the time limit's SIGTERM (checkpoint saved) before the end: queue the job again.
[ -f $(printf '%q' "$WORKDIR")/eval_results.json ] || scontrol requeue \"\$SLURM_JOB_ID\"
"

if [ "$DRY_RUN" = 1 ]; then
  printf '%s' "$SCRIPT"
  exit 0
fi
mkdir -p "$WORKDIR"
printf '%s' "$SCRIPT" | sbatch
