#!/usr/bin/env bash
# Re-run the session that docs/DEMO.md shows: start a daemon, chat (one-shot, piped, and an
# interactive session resumed in a second run), a debate, the monitor while another
# orchestration runs, an agent and the chat using tools, stop. Every step's output goes to one file in the output directory, the
# way it was printed; DEMO.md was pasted from those files.
#
#     scripts/make_demo.sh [OUTPUT_DIR]      # default /tmp/ksi-demo/out
#
# The daemon gets its own var directory (KSI_DEMO_VAR_DIR, default /tmp/ksi-demo/var, emptied
# first; a KSI_VAR_DIR or KSI_SOCKET_PATH of the caller is ignored) so that a daemon already
# running from the checkout is not touched. Files already in OUTPUT_DIR are overwritten. The interactive
# parts run in a private tmux server (tmux -L), 120 x 36, driven by send-keys; each step waits
# for what the screen should show rather than for a fixed time, and gives up after 60 s.
set -euo pipefail

cd "$(dirname "$0")/.."
OUT=${1:-/tmp/ksi-demo/out}
export KSI_VAR_DIR=${KSI_DEMO_VAR_DIR:-/tmp/ksi-demo/var}
unset KSI_SOCKET_PATH
PY=.venv/bin/python
TMUX_SERVER="ksi-demo-$$"
WIDTH=120 HEIGHT=36

command -v tmux >/dev/null || { echo "tmux is needed (apt-get install -y tmux)" >&2; exit 2; }
if ./daemon_control.py status >/dev/null 2>&1; then
    echo "a daemon already runs with KSI_VAR_DIR=$KSI_VAR_DIR; stop it or pick another" >&2
    exit 1
fi
rm -rf "$KSI_VAR_DIR"
mkdir -p "$OUT"
{
    echo "made $(date -u '+%Y-%m-%d %H:%M UTC') at commit $(git rev-parse --short HEAD)"
    echo "files changed but not committed: $(git status --short --untracked-files=no | wc -l)"
    echo "load average: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"
} >"$OUT/00-made.txt"

tm() { tmux -L "$TMUX_SERVER" "$@"; }
cleanup() {
    tm kill-server 2>/dev/null || true
    ./daemon_control.py stop >/dev/null 2>&1 || true
}
trap cleanup EXIT

# run NAME 'COMMAND': "$ COMMAND" as typed, then its output (stdout and stderr, as a terminal
# would interleave them) and exit status, into OUT/NAME.txt.
run() {
    { echo "\$ $2"; eval "$2" 2>&1; echo "[exit $?]"; } >"$OUT/$1.txt" || true
    cat "$OUT/$1.txt"
}

# The screen of a tmux session: joined lines (-J) for the line-oriented chat, raw for the TUI.
screen() { tm capture-pane -p -t "$1" ${2:-}; }

# wait_for SESSION PATTERN [COUNT]: until the screen has COUNT lines matching PATTERN (grep -E).
wait_for() {
    local session=$1 pattern=$2 count=${3:-1} deadline=$((SECONDS + 60))
    until [ "$(screen "$session" -J | grep -cE -- "$pattern" || true)" -ge "$count" ]; do
        if [ $SECONDS -ge $deadline ]; then
            echo "timed out waiting for /$pattern/ x$count in $session:" >&2
            screen "$session" >&2
            exit 1
        fi
        sleep 0.2
    done
}

# wait_gone SESSION PATTERN: until no line of the screen matches PATTERN; prints the seconds taken.
wait_gone() {
    local session=$1 pattern=$2 start=$EPOCHREALTIME deadline=$((SECONDS + 60))
    while screen "$session" -J | grep -qE -- "$pattern"; do
        if [ $SECONDS -ge $deadline ]; then
            echo "timed out waiting for /$pattern/ to go from $session" >&2
            exit 1
        fi
        sleep 0.1
    done
    echo "$EPOCHREALTIME - $start" | bc
}

# type SESSION TEXT: the text as keystrokes, then Enter.
type_line() { tm send-keys -t "$1" -l "$2"; tm send-keys -t "$1" Enter; }

# A shell in a fixed-size terminal, with a short prompt, in the repository root.
new_terminal() {
    tm new-session -d -s "$1" -x $WIDTH -y $HEIGHT -c "$PWD" \
        "env KSI_VAR_DIR=$KSI_VAR_DIR PS1='\$ ' bash --norc --noprofile"
    wait_for "$1" '^\$'
}

# --- 1. start and health ------------------------------------------------------------------
run 01-start './daemon_control.py start'
run 02-health './daemon_control.py health'

# --- 2. chat: one-shot, then piped ----------------------------------------------------------
run 03-chat-one-shot "$PY interfaces/chat.py 'What is a Unix socket?'"
run 04-chat-piped "printf 'Hello there\\nWhat did I just say?\\n/history\\n' | $PY interfaces/chat.py --new"

# --- 3. chat in a terminal: three turns, /history, /quit; then resumed ----------------------
new_terminal chat
type_line chat "$PY interfaces/chat.py --new"
wait_for chat '^you>' 1
turn=1
for message in "Hello, I am planning a trip to Lisbon" "What should I pack?" \
               "And what did I say first?"; do
    type_line chat "$message"
    turn=$((turn + 1))
    wait_for chat '^you>' $turn
done
type_line chat "/history"
wait_for chat '^you>' $((turn + 1))
type_line chat "/session"
wait_for chat '^you>' $((turn + 2))
type_line chat "/quit"
wait_for chat '^\$' 2
screen chat -J >"$OUT/05-chat-interactive.txt"

tm send-keys -t chat "clear" Enter
sleep 0.5
type_line chat "$PY interfaces/chat.py"
wait_for chat '^you>' 1
type_line chat "Remind me where I am going"
wait_for chat '^you>' 2
type_line chat "/history"
wait_for chat '^you>' 3
tm send-keys -t chat C-d            # Ctrl-D leaves too
wait_for chat '^\$' 2
screen chat -J >"$OUT/06-chat-resumed.txt"
cat "$OUT/05-chat-interactive.txt" "$OUT/06-chat-resumed.txt"

# --- 4. a debate ------------------------------------------------------------------------------
run 07-orchestrate "$PY interfaces/orchestrate.py 'Is P=NP?' --mode debate"

# --- 5. the monitor while another orchestration runs -----------------------------------------
tm new-session -d -s monitor -x $WIDTH -y $HEIGHT -c "$PWD" \
    "env KSI_VAR_DIR=$KSI_VAR_DIR $PY interfaces/monitor_tui.py"
wait_for monitor 'events/s [0-9]'   # connected, and the first figures are in
screen monitor >"$OUT/08-monitor-idle.txt"

# Eight agents, 50 rounds: long enough (several seconds) to watch it happen.
$PY interfaces/orchestrate.py "Tabs or spaces?" --mode brainstorm --agents 8 --rounds 50 \
    >"$OUT/09-orchestrate-watched.txt" 2>&1 &
orchestrate_pid=$!
wait_for monitor 'Completions \([1-9][0-9]+\)'   # ten turns or more
sleep 0.5                           # let a redraw or two happen
screen monitor >"$OUT/10-monitor-running.txt"

# How long each key took to show on screen goes to OUT/key-delays.txt (a busy machine shows).
started=$EPOCHREALTIME
tm send-keys -t monitor f
wait_for monitor 'event pattern:'
echo "f: the filter field showed after $(echo "$EPOCHREALTIME - $started" | bc) s" \
    >"$OUT/key-delays.txt"
screen monitor >"$OUT/11-monitor-filter-open.txt"
tm send-keys -t monitor -l "orchestration:turn"
tm send-keys -t monitor Enter
wait_for monitor 'filter: orchestration:turn'
wait_for monitor 'q Quit'
sleep 0.5
screen monitor >"$OUT/12-monitor-filtered.txt"

tm send-keys -t monitor p
wait_for monitor 'PAUSED'
sleep 2                             # turns keep arriving; they are counted, not drawn
screen monitor >"$OUT/13-monitor-paused.txt"
tm send-keys -t monitor p
echo "p again: the stream was drawn again after $(wait_gone monitor PAUSED) s" \
    >>"$OUT/key-delays.txt"
sleep 0.5
screen monitor >"$OUT/14-monitor-resumed.txt"

wait "$orchestrate_pid" || true
sleep 2.5                           # one more poll of agents and metrics
screen monitor >"$OUT/15-monitor-finished.txt"
tm send-keys -t monitor q
for step in 08-monitor-idle 10-monitor-running 11-monitor-filter-open 12-monitor-filtered \
            13-monitor-paused 14-monitor-resumed 15-monitor-finished; do
    echo "--- $step"; cat "$OUT/$step.txt"
done
tail -n 3 "$OUT/09-orchestrate-watched.txt"

# --- 5. tools ---------------------------------------------------------------------------------
# The agent script is DEMO.md's own block (marked <!-- example: agent-tools -->), taken out of
# it so that what runs is what the page shows; it stores the note the chat then looks up.
sed -n '/<!-- example: agent-tools -->/,/^```$/p' docs/DEMO.md | sed '1,2d;$d' >"$OUT/agent_tools.py"
run 16-agent-tools "PYTHONPATH=. $PY $OUT/agent_tools.py"
run 17-chat-tools "printf '/tool state:get {\"namespace\": \"demo-notes\", \"key\": \"meeting\"}\\n/tools off\\nWhat did the tool say?\\n' | $PY interfaces/chat.py --new --tools state:get,state:set"

# --- 6. stop ----------------------------------------------------------------------------------
run 18-stop './daemon_control.py stop'
run 19-status './daemon_control.py status'
cat "$OUT/00-made.txt"
echo "(outputs in $OUT)"
