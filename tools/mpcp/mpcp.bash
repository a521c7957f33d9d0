# bash completion for mpcp(1).
# Installed as bash-completion/completions/mpcp; tests/completion.sh checks
# that it completes every long option of `mpcp --help` and every value that
# mpcp accepts for --backup, --preserve, --no-preserve, --reflink, --sparse,
# --update and --write-through-symlinks (the lists mpcp prints for a bad value), so that the two stay
# in step. Needs only bash (the bash-completion package is not required).

_mpcp_values()
{
    case $1 in
    --backup) echo "none off simple never existing nil numbered t" ;;
    --preserve | --no-preserve) echo "mode timestamps ownership links context xattr all" ;;
    --reflink | --sparse) echo "auto always never" ;;
    --update) echo "all none none-fail older" ;;
    --write-through-symlinks) echo "safe never always" ;;
    esac
}

_mpcp()
{
    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD - 1]} opt=
    # "--sparse=al" arrives as "--sparse" "=" "al" ('=' breaks words).
    if [[ $cur == = ]]; then
        opt=$prev
        cur=
    elif [[ $prev == = && $COMP_CWORD -ge 2 ]]; then
        opt=${COMP_WORDS[COMP_CWORD - 2]}
    elif [[ $cur == --*=* ]]; then
        opt=${cur%%=*}
        cur=${cur#*=}
    fi
    if [[ -n $opt ]]; then
        case $opt in
        --target-directory)
            compopt -o filenames 2>/dev/null
            mapfile -t COMPREPLY < <(compgen -d -- "$cur")
            return 0 ;;
        --jobs)
            mapfile -t COMPREPLY < <(compgen -W "$(seq 1 "$(nproc 2>/dev/null || echo 1)")" -- "$cur")
            return 0 ;;
        --preserve | --no-preserve)
            # A comma-separated list: complete its last item.
            local head= last=$cur
            if [[ $cur == *,* ]]; then
                head=${cur%,*},
                last=${cur##*,}
            fi
            mapfile -t COMPREPLY < <(compgen -P "$head" -W "$(_mpcp_values "$opt")" -- "$last")
            return 0 ;;
        --*)
            mapfile -t COMPREPLY < <(compgen -W "$(_mpcp_values "$opt")" -- "$cur")
            return 0 ;;
        esac
    fi
    case $prev in
    -t)
        compopt -o filenames 2>/dev/null
        mapfile -t COMPREPLY < <(compgen -d -- "$cur")
        return 0 ;;
    -S | -j) return 0 ;;
    esac
    if [[ $cur == -* ]]; then
        # Options that take a value end in '=' (no space after them).
        local opts="--archive --backup --backup= --force --link --dereference --no-clobber
            --no-dereference --preserve --preserve= --no-preserve= --parents --recursive
            --reflink --reflink= --remove-destination --sparse= --strip-trailing-slashes
            --symbolic-link --suffix= --target-directory= --no-target-directory --update
            --update= --verbose --one-file-system --jobs= --progress --no-progress --stats --json
            --dry-run --quiet --inplace --write-through-symlinks= --attributes-only
            --copy-contents --interactive --help --version
            -a -b -d -f -H -i -l -L -n -P -p -R -r -s -S -t -T -u -v -x -j -q"
        mapfile -t COMPREPLY < <(compgen -W "$opts" -- "$cur")
        if [[ ${#COMPREPLY[@]} -eq 1 && ${COMPREPLY[0]} == *= ]]; then
            compopt -o nospace 2>/dev/null
        fi
        return 0
    fi
    compopt -o filenames 2>/dev/null
    mapfile -t COMPREPLY < <(compgen -f -- "$cur")
    return 0
}
complete -F _mpcp mpcp
