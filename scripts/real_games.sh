#!/usr/bin/env bash
# The real-data study of issue 16 (profile real_cpu), step by step; results/real_games/README.md has the plan.
# Every job skips itself when finished (skip_finished) and every stage is cached by content, so this script
# resumes where an interruption stopped it: run it again with the same step.
#   bash scripts/real_games.sh pilot            # the learnability pilot (zero-shot, random 64/256/1024, full)
#   bash scripts/real_games.sh ctr              # the CTR table (11 selectors x 3 seeds, budget 64)
#   bash scripts/real_games.sh seeds            # GORACS and random at 5 more seeds (3-7), into the CTR table
#   bash scripts/real_games.sh stratified       # GraNd and EL2N within classes (not in the paper), into the CTR table
#   bash scripts/real_games.sh seqrec           # the SeqRec table
#   bash scripts/real_games.sh seqrec_control   # SeqRec with no fine-tuning (the table's evaluation), its own folder
#   bash scripts/real_games.sh sweeps           # lambda and budget sweeps
#   bash scripts/real_games.sh proxy            # extra random subsets for the proxy check
#   bash scripts/real_games.sh report           # archive every finished run's metrics / predictions / run_info in
#                                               # results/real_games/runs/ (committed), then tables, intervals,
#                                               # figures into results/real_games/ from that archive alone
#   bash scripts/real_games.sh queue1           # one core: the CTR steps in the study's order of priority
#   bash scripts/real_games.sh queue2           # the other core: the SeqRec table, then the pilot's last rows and
#                                               # GraNd / EL2N within classes (queue1 never runs these)
#   bash scripts/real_games.sh resume [COMMIT]  # both queues in the background, from a checkout of COMMIT (default:
#                                               # results/real_games/STUDY_COMMIT if present, else HEAD) in
#                                               # /tmp/goracs-study, so that edits here cannot change a
#                                               # running job; cache/ and outputs/ stay in this checkout; logs
#                                               # appended to outputs/queue1.log and queue2.log. Refused while any
#                                               # study job runs, or when the folder is not a linked worktree.
# LAUNCHER=cpu2 runs two jobs at a time (both cores), LAUNCHER=basic one (leaves a core free; the default).
set -euo pipefail
SELF="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"  # for the queues, which call this script's steps
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
LAUNCHER=${LAUNCHER:-basic}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export WANDB_MODE=${WANDB_MODE:-offline}
# Progress bars stay on (training steps, scoring, generation): the logs show where a long job stands.
run() { echo "== $(date -u +%FT%TZ) $*"; "$PY" -m goracs -m hydra/launcher="$LAUNCHER" logger=none "$@"; }

step=${1:?usage: real_games.sh pilot|ctr|seeds|stratified|seqrec|seqrec_control|sweeps|proxy|report|queue1|queue2|resume}
shift
case "$step" in
  pilot)  # progress=false as when its first rows ran: the pilot's folder names include it
    set -- progress=false "$@"
    run experiment=pilot_real_cpu selector=random selector.budget=64 train.task_overrides.ctr.epochs=0 "$@"   # zero-shot (the task override, which wins over train.epochs)
    run experiment=pilot_real_cpu selector.budget=64,256 "$@"
    run experiment=pilot_real_cpu selector=full "$@"
    run experiment=pilot_real_cpu selector.budget=1024 "$@"
    ;;
  ctr) run experiment=table_real_cpu "$@" ;;
  seeds) run experiment=table_real_cpu_seeds "$@" ;;
  stratified) run experiment=table_real_cpu_stratified "$@" ;;   # GraNd and EL2N within classes (an extension)
  seqrec) run experiment=table_real_cpu_seqrec "$@" ;;
  seqrec_control) run experiment=pilot_real_cpu_seqrec "$@" ;;   # SmolLM2 with no fine-tuning, as the SeqRec table
  sweeps)
    run experiment=sweep_lambda_real_cpu "$@"
    run experiment=sweep_budget_real_cpu "$@"
    ;;
  proxy) run experiment=proxy_real_cpu "$@" ;;
  report) "$PY" scripts/real_games_report.py "$@" ;;
  queue1)  # the paper's main claims first: GORACS / random / GraNd / EL2N, then more seeds, the other rows, the rest
    bash "$SELF" ctr selector=random,goracs,goracs_lam0,grand,el2n "$@"
    bash "$SELF" seeds "$@"
    bash "$SELF" ctr "$@"
    bash "$SELF" proxy "$@"
    bash "$SELF" sweeps "$@"
    ;;
  queue2)  # about as long as queue1 (each ~13-14 CPU-hours from the 2026-11-30 evening on): never the same job twice
    bash "$SELF" seqrec_control "$@"
    bash "$SELF" seqrec "$@"
    bash "$SELF" pilot "$@"
    bash "$SELF" stratified "$@"
    ;;
  resume)
    # any study job of this user (a queue, a step started by hand, a bare goracs job) would write the same folders
    if pgrep -u "$(id -u)" -f 'real_games\.sh (queue[12]|pilot|ctr|seeds|stratified|seqrec|sweeps|proxy)|python[0-9.]* -m goracs' \
        > /dev/null; then
      echo "a study job is already running (pgrep -af 'real_games.sh|-m goracs'): not started twice" >&2; exit 1
    fi
    # the commit: the argument, else the study's pinned commit (results/real_games/STUDY_COMMIT), else HEAD
    want=${1:-}
    pin=results/real_games/STUDY_COMMIT
    if [ -z "$want" ] && [ -f "$pin" ]; then
      want=$(awk 'NF && $1 !~ /^#/ {print $1; exit}' "$pin")
      echo "from the study's pinned commit ${want} ($pin); 'resume HEAD' runs the checkout's own" >&2
    fi
    root=$(pwd); wt=${STUDY_CHECKOUT:-/tmp/goracs-study}; commit=$(git rev-parse --verify "${want:-HEAD}^{commit}")
    wt=$(realpath -m "$wt")
    if [ -e "$wt" ]; then  # only ever a linked worktree of this repository is replaced, never any other folder
      if git worktree list --porcelain | awk '/^worktree /{n++; if (n > 1) print substr($0, 10)}' | grep -qxF "$wt"; then
        git worktree remove --force "$wt"
      else
        echo "$wt exists and is not a linked worktree of this repository: set STUDY_CHECKOUT to another path" >&2
        exit 1
      fi
    fi
    git worktree prune
    git worktree add --detach "$wt" "$commit" > /dev/null
    py=$(command -v "$PY" || true)
    [ -n "$py" ] && [ -x "$py" ] || { echo "PY=$PY is not an executable Python" >&2; exit 1; }
    py=$(realpath -s "$py")
    mkdir -p "$root/outputs"
    for q in queue1 queue2; do
      echo "== resume $(date -u +%FT%TZ) from ${commit:0:7} in $wt" >> "$root/outputs/$q.log"
      (cd "$wt" && GORACS_ROOT="$root" PYTHONPATH="$wt" PY="$py" \
        nohup bash scripts/real_games.sh "$q" >> "$root/outputs/$q.log" 2>&1 &)
    done
    echo "study queues started from ${commit:0:7} in $wt; logs (appended): $root/outputs/queue1.log, queue2.log"
    ;;
  *) echo "unknown step $step" >&2; exit 2 ;;
esac
