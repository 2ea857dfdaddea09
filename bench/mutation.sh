#!/usr/bin/env bash
# Mutation testing of tokend's pure modules with mutmut: each module alone, against the unit tests
# that cover it, in a copy of the working tree. Outside CI (a few minutes per module on 2 cores).
#
# Usage: bash bench/mutation.sh [MODULE...]
#   MODULE: schedule (with reports and outcomes, the parts it keeps beside it), jwtinfo, peers,
#           values, logs (the redaction only); default all of them.
# Environment:
#   MUTATION_WORK  where the copies and mutmut's results go (default /tmp/tokend-mutation);
#                  `cd $MUTATION_WORK/MODULE && $MUTATION_WORK/venv/bin/mutmut show NAME` shows a mutant
#   MUTATION_JOBS  mutants run at once (default: the number of CPUs)
# Prints a table of mutants, killed and survived per module, and the surviving mutants' names; the
# table is also written to $MUTATION_WORK/summary.md. Survivors judged equivalent are listed, with
# why, in bench/README.md.
set -euo pipefail
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 0
fi
cd "$(dirname "$0")/.."
repo=$PWD

work=${MUTATION_WORK:-/tmp/tokend-mutation}
jobs=${MUTATION_JOBS:-$(nproc)}
venv="$work/venv"
mutmut_version=3.8.1

# module -> "tests to run|mutant names to run (globs; empty: every mutant of the module)"
declare -A plan=(
    [schedule]="tests/test_schedule.py tests/test_schedule_effects.py tests/test_keeper.py tests/test_keeper_revoke.py|"
    [jwtinfo]="tests/test_jwtinfo.py|"
    [peers]="tests/test_peers.py|"
    [values]="tests/test_values.py tests/test_config.py|"
    [logs]="tests/test_logs_redaction.py tests/test_secrets.py|tokend.logs.xǁRedactorǁ* tokend.logs.x_redact_processor*"
)
# module -> the files mutated besides tokend/MODULE.py
declare -A beside=(
    [schedule]="tokend/reports.py tokend/outcomes.py"
)
modules=("$@")
[ ${#modules[@]} -gt 0 ] || modules=(schedule jwtinfo peers values logs)
for module in "${modules[@]}"; do
    [ -n "${plan[$module]+x}" ] || { echo "mutation: unknown module $module (one of ${!plan[*]})" >&2; exit 2; }
done

mkdir -p "$work"
if [ ! -x "$venv/bin/mutmut" ]; then
    python3 -m venv "$venv"
    # The test dependencies at CI's versions, and mutmut; not tokend itself: the tests must import
    # the mutated copy, never an installed one.
    "$venv/bin/pip" install --quiet --disable-pip-version-check -c .ci/constraints.txt \
        '.[test]' "mutmut==$mutmut_version"
    "$venv/bin/pip" uninstall --quiet --yes tokend
fi

summary="$work/summary.md"
{
    echo "| module | mutants | killed | survived | other | seconds |"
    echo "|---|---:|---:|---:|---:|---:|"
} >"$summary"
survivors="$work/survivors.txt"
: >"$survivors"

for module in "${modules[@]}"; do
    tests=${plan[$module]%%|*}
    names=${plan[$module]#*|}
    copy="$work/$module"
    rm -rf "$copy"
    mkdir -p "$copy"
    git ls-files --cached --others --exclude-standard | tar -cf - -T - | tar -xf - -C "$copy"
    {
        echo
        echo "[tool.mutmut]"
        echo 'source_paths = ["tokend"]'
        printf 'only_mutate = [%s]\n' \
            "$(printf '"%s", ' "tokend/$module.py" ${beside[$module]:-} | sed 's/, $//')"
        printf 'pytest_add_cli_args_test_selection = [%s]\n' \
            "$(printf '"%s", ' $tests | sed 's/, $//')"
        echo 'pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-x"]'
        # Files some tests read besides tokend/ and tests/ (mutmut copies only those two).
        echo 'also_copy = ["config.example.toml", "README.md", "deploy"]'
    } >>"$copy/pyproject.toml"
    started=$(date +%s)
    # shellcheck disable=SC2086  # $names: globs for mutmut, not for the shell
    (cd "$copy" && set -f && "$venv/bin/mutmut" run --max-children "$jobs" $names) \
        >"$work/$module.log" 2>&1 || { tail -n 30 "$work/$module.log" >&2; exit 1; }
    seconds=$(( $(date +%s) - started ))
    (cd "$copy" && "$venv/bin/mutmut" results --all true) >"$work/$module.results" 2>&1
    # Every mutant no test caught (mutants outside the names asked for show as "not checked").
    (cd "$copy" && "$venv/bin/mutmut" results) 2>/dev/null | sed 's/^ *//' \
        | grep -E ': (survived|timeout|no tests|suspicious)$' >>"$survivors" || true
    "$venv/bin/python" - "$module" "$work/$module.results" "$seconds" "$names" >>"$summary" <<'EOF'
import fnmatch
import sys

module, results, seconds, names = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split()
counts: dict[str, int] = {}
for line in open(results, encoding="utf-8"):
    name, sep, status = line.strip().rpartition(": ")
    if not sep or (names and not any(fnmatch.fnmatchcase(name, n) for n in names)):
        continue
    counts[status] = counts.get(status, 0) + 1
total = sum(counts.values())
killed, survived = counts.pop("killed", 0), counts.pop("survived", 0)
other = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "0"
label = module + (" (redaction)" if names else "")
print(f"| {label} | {total} | {killed} | {survived} | {other} | {seconds} |")
EOF
done

cat "$summary"
echo
echo "surviving mutants ($(wc -l <"$survivors")):"
cat "$survivors"
