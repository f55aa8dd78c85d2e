#!/usr/bin/env bash
# Shared by the launch scripts (sourced): --dry-run, shell quoting, background commands.
# A script sources it, calls `dry_run_flag "$@"` (then `shift "$dry_run_shift"`), and runs each
# command with `run` (foreground) or `run_background` and, at the end, `wait_all`.

# shellcheck disable=SC2034  # dry_run_shift is read by the scripts that source this file
dry_run=0 dry_run_shift=0
pids=()

# --dry-run as the first argument: print the commands, run nothing.
dry_run_flag() {
  if [[ ${1:-} == --dry-run ]]; then
    dry_run=1
    # shellcheck disable=SC2034  # read by the scripts that source this file
    dry_run_shift=1
  fi
}

# One command line that bash reads back as these words: a word of plain characters as it is,
# any other in single quotes.
quote() {
  local words=() word
  for word in "$@"; do
    if [[ $word =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
      words+=("$word")
    else
      words+=("'${word//\'/\'\\\'\'}'")
    fi
  done
  printf '%s\n' "${words[*]}"
}

# Runs a command, or prints it under --dry-run.
run() {
  if ((dry_run)); then
    quote "$@"
  else
    "$@"
  fi
}

# Starts a command in the background, or prints it with " &" under --dry-run.
run_background() {
  if ((dry_run)); then
    printf '%s &\n' "$(quote "$@")"
  else
    "$@" &
    pids+=($!)
    # From the first one on, Ctrl-C or a SIGTERM to this script goes on to every command.
    trap 'kill -TERM "${pids[@]}" 2>/dev/null || true' INT TERM
  fi
}

# Waits for every background command and exits with the last failure's status (or prints
# "wait" under --dry-run). Ctrl-C or a SIGTERM to this script is passed on to every command as
# SIGTERM (background commands of a script ignore SIGINT): each run saves and stops (status 75).
wait_all() {
  if ((dry_run)); then
    echo wait
    exit 0
  fi
  trap 'kill -TERM "${pids[@]}" 2>/dev/null || true' INT TERM
  local status=0 pid code
  for pid in "${pids[@]}"; do
    while :; do
      code=0
      wait "$pid" || code=$?
      kill -0 "$pid" 2>/dev/null || break # ended, not a signal that interrupted the wait
    done
    ((code == 0)) || status=$code
  done
  exit "$status"
}
