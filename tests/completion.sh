#!/bin/bash
# The bash completion stays in step with mpcp: every long option that
# `mpcp --help` lists is completed (and nothing else), and for each option
# with a fixed set of values the completion offers exactly the values mpcp
# lists when it refuses a bad one.
set -euo pipefail
mpcp=$1
completion=$2
# shellcheck source=/dev/null
source "$completion"
fail=0

complete_words() { # the words after "mpcp", the last being completed
  COMP_WORDS=(mpcp "$@")
  COMP_CWORD=$#
  COMPREPLY=()
  _mpcp
  printf '%s\n' "${COMPREPLY[@]}" | sort -u
}

# Every long option of --help, once (the option column only, not the prose).
# --help once into a variable: `mpcp --help | grep -q` would fail under
# pipefail whenever grep exits before mpcp has written the rest.
help_text=$("$mpcp" --help)
help_opts=$(echo "$help_text" | grep -E '^  +-' | sed -E 's/^ +//; s/  .*//' |
  grep -oE -- '--[a-z][a-z-]*' | sort -u)
completed=$(complete_words -- | sed 's/=$//' | sort -u)
if [ "$help_opts" != "$completed" ]; then
  echo "completion: long options differ from mpcp --help (< help, > completion):" >&2
  diff <(echo "$help_opts") <(echo "$completed") >&2 || true
  fail=1
fi
# Each completed long option is one mpcp accepts.
for o in $completed; do
  grep -qE -- "$o(=|\\[| |\$)" <<<"$help_text" || { echo "completion: $o not in --help" >&2; fail=1; }
done

# Values: what mpcp lists for a bad value, against what is completed after "OPT=".
for o in --backup --preserve --no-preserve --reflink --sparse --update --write-through-symlinks; do
  valid=$({ "$mpcp" "$o=no-such-value" a b 2>&1 || true; } | sed -n 's/^  - //p' | tr -d "\342\200\230\231" |
    tr ',' '\n' | sed 's/^ *//' | grep . | sort -u)
  offered=$(complete_words "$o" "=" "" | sort -u)
  if [ -z "$valid" ] || [ "$valid" != "$offered" ]; then
    echo "completion: values of $o differ (< mpcp, > completion):" >&2
    diff <(echo "$valid") <(echo "$offered") >&2 || true
    fail=1
  fi
done

# A prefix narrows, and a list after a comma completes its last item.
[ "$(complete_words --sparse = al)" = always ] || { echo "completion: --sparse=al" >&2; fail=1; }
[ "$(complete_words --preserve = mode,ti)" = mode,timestamps ] ||
  { echo "completion: --preserve=mode,ti gave $(complete_words --preserve = mode,ti)" >&2; fail=1; }
[ "$(complete_words --no-c)" = --no-clobber ] || { echo "completion: --no-c" >&2; fail=1; }

[ $fail -eq 0 ] && echo "completion: every long option and value of mpcp is completed"
exit $fail
