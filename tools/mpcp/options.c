/*
 * options.c: mpcp's command line, GNU cp's wherever cp has the option, with
 * cp's messages for usage errors (so scripts that parse them keep working).
 */
#define _GNU_SOURCE
#include "mpcp.h"

#include <mproc.h>

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Kept in step with mpcp.1: same options, same wording. */
static const char help_text[] =
    "Usage: mpcp [OPTION]... [-T] SOURCE DEST\n"
    "  or:  mpcp [OPTION]... SOURCE... DIRECTORY\n"
    "  or:  mpcp [OPTION]... -t DIRECTORY SOURCE...\n"
    "Copy SOURCE to DEST, or multiple SOURCE(s) to DIRECTORY, as GNU cp does,\n"
    "writing each file atomically (temporary name, then rename).\n"
    "\n"
    "Mandatory arguments to long options are mandatory for short options too.\n"
    "  -a, --archive                same as -dR --preserve=all\n"
    "      --attributes-only        don't copy the file data, just the attributes\n"
    "      --backup[=CONTROL]       make a backup of each existing destination file\n"
    "      --copy-contents          copy contents of special files when recursive\n"
    "  -b                           like --backup but does not accept an argument\n"
    "  -d                           same as --no-dereference --preserve=links\n"
    "  -f, --force                  replace destinations that cannot be written\n"
    "  -H                           follow command-line symbolic links in SOURCE\n"
    "  -i, --interactive            prompt before overwrite (overrides a previous -n\n"
    "                                 option)\n"
    "  -l, --link                   hard link files instead of copying\n"
    "  -L, --dereference            always follow symbolic links in SOURCE\n"
    "  -n, --no-clobber             do not overwrite an existing file\n"
    "  -P, --no-dereference         never follow symbolic links in SOURCE\n"
    "  -p                           same as --preserve=mode,ownership,timestamps\n"
    "      --preserve[=ATTR_LIST]   preserve the specified attributes\n"
    "                                 (default: mode,ownership,timestamps);\n"
    "                                 also links, xattr, context (refused: no\n"
    "                                 SELinux support), all\n"
    "      --no-preserve=ATTR_LIST  don't preserve the specified attributes\n"
    "      --parents                use full source file name under DIRECTORY\n"
    "  -R, -r, --recursive          copy directories recursively\n"
    "      --reflink[=WHEN]         control clone/CoW copies: auto (default),\n"
    "                                 always, never\n"
    "      --remove-destination     remove each existing destination file before\n"
    "                                 attempting to open it (contrast with --force)\n"
    "      --sparse=WHEN            control creation of sparse files: auto\n"
    "                                 (default), always, never\n"
    "      --strip-trailing-slashes  remove any trailing slashes from each SOURCE\n"
    "                                 argument\n"
    "  -s, --symbolic-link          make symbolic links instead of copying\n"
    "  -S, --suffix=SUFFIX          override the usual backup suffix\n"
    "  -t, --target-directory=DIRECTORY  copy all SOURCE arguments into DIRECTORY\n"
    "  -T, --no-target-directory    treat DEST as a normal file\n"
    "      --update[=UPDATE]        control which existing files are updated:\n"
    "                                 all, none, none-fail, older (default)\n"
    "  -u                           equivalent to --update[=older]\n"
    "  -v, --verbose                explain what is being done\n"
    "  -x, --one-file-system        stay on this file system\n"
    "\n"
    "Beyond cp:\n"
    "  -j, --jobs=N                 copy with N worker processes\n"
    "                                 (default: the usable CPUs)\n"
    "      --progress               show a progress bar on stderr\n"
    "      --no-progress            never show a progress bar\n"
    "                                 (default: a bar when stderr is a terminal)\n"
    "      --stats                  print a summary at the end\n"
    "      --json                   print the summary as JSON on stdout\n"
    "      --dry-run                show what would be copied; change nothing\n"
    "  -q, --quiet                  print nothing but errors\n"
    "      --inplace                write existing files in place, not atomically\n"
    "      --write-through-symlinks=WHEN  write a file through an existing\n"
    "                                 destination symlink, as cp does: safe\n"
    "                                 (default: only a symlink of this user, or\n"
    "                                 in a folder of this user that no one else\n"
    "                                 can write to; others are refused), never,\n"
    "                                 always (as cp)\n"
    "      --help                   display this help and exit\n"
    "      --version                output version information and exit\n"
    "\n"
    "The backup suffix is '~', unless set with --suffix or SIMPLE_BACKUP_SUFFIX.\n"
    "The version control method may be selected via the --backup option or through\n"
    "the VERSION_CONTROL environment variable.  Here are the values:\n"
    "\n"
    "  none, off       never make backups (even if --backup is given)\n"
    "  numbered, t     make numbered backups\n"
    "  existing, nil   numbered if numbered backups exist, simple otherwise\n"
    "  simple, never   always make simple backups\n"
    "\n"
    "As a special case, mpcp makes a backup of SOURCE when the force and backup\n"
    "options are given and SOURCE and DEST are the same name for an existing,\n"
    "regular file.\n"
    "\n"
    "Exit status: 0 if everything was copied, 1 otherwise.\n";

enum {
    OPT_PRESERVE = 256,
    OPT_NO_PRESERVE,
    OPT_REFLINK,
    OPT_SPARSE,
    OPT_UPDATE,
    OPT_PROGRESS,
    OPT_NO_PROGRESS,
    OPT_STATS,
    OPT_JSON,
    OPT_DRY_RUN,
    OPT_INPLACE,
    OPT_PARENTS,
    OPT_STRIP_SLASHES,
    OPT_BACKUP,
    OPT_REMOVE_DEST,
    OPT_COPY_CONTENTS,
    OPT_ATTRIBUTES_ONLY,
    OPT_THROUGH,
    OPT_HELP,
    OPT_VERSION,
};

static const struct option long_options[] = {
    {"archive", no_argument, NULL, 'a'},
    {"backup", optional_argument, NULL, OPT_BACKUP},
    {"force", no_argument, NULL, 'f'},
    {"link", no_argument, NULL, 'l'},
    {"dereference", no_argument, NULL, 'L'},
    {"no-clobber", no_argument, NULL, 'n'},
    {"interactive", no_argument, NULL, 'i'},
    {"no-dereference", no_argument, NULL, 'P'},
    {"preserve", optional_argument, NULL, OPT_PRESERVE},
    {"no-preserve", required_argument, NULL, OPT_NO_PRESERVE},
    {"parents", no_argument, NULL, OPT_PARENTS},
    {"recursive", no_argument, NULL, 'R'},
    {"reflink", optional_argument, NULL, OPT_REFLINK},
    {"remove-destination", no_argument, NULL, OPT_REMOVE_DEST},
    {"copy-contents", no_argument, NULL, OPT_COPY_CONTENTS},
    {"attributes-only", no_argument, NULL, OPT_ATTRIBUTES_ONLY},
    {"sparse", required_argument, NULL, OPT_SPARSE},
    {"strip-trailing-slashes", no_argument, NULL, OPT_STRIP_SLASHES},
    {"symbolic-link", no_argument, NULL, 's'},
    {"suffix", required_argument, NULL, 'S'},
    {"target-directory", required_argument, NULL, 't'},
    {"no-target-directory", no_argument, NULL, 'T'},
    {"update", optional_argument, NULL, OPT_UPDATE},
    {"verbose", no_argument, NULL, 'v'},
    {"one-file-system", no_argument, NULL, 'x'},
    {"jobs", required_argument, NULL, 'j'},
    {"progress", no_argument, NULL, OPT_PROGRESS},
    {"no-progress", no_argument, NULL, OPT_NO_PROGRESS},
    {"stats", no_argument, NULL, OPT_STATS},
    {"json", no_argument, NULL, OPT_JSON},
    {"dry-run", no_argument, NULL, OPT_DRY_RUN},
    {"quiet", no_argument, NULL, 'q'},
    {"inplace", no_argument, NULL, OPT_INPLACE},
    {"write-through-symlinks", required_argument, NULL, OPT_THROUGH},
    {"help", no_argument, NULL, OPT_HELP},
    {"version", no_argument, NULL, OPT_VERSION},
    {NULL, 0, NULL, 0},
};

#ifndef MPCP_VERSION
#define MPCP_VERSION "unknown"
#endif

/* --version as GNU tools print it: name (package) version, copyright, license, warranty. */
static const char *version_text(void)
{
    static char text[512];
    snprintf(text, sizeof text,
             "mpcp (mproc) %s\n"
             "Copyright (C) 2026 the mproc authors.\n"
             "License MIT: <https://opensource.org/licenses/MIT>.\n"
             "This is free software: you are free to change and redistribute it.\n"
             "There is NO WARRANTY, to the extent permitted by law.\n",
             MPCP_VERSION);
    return text;
}

static int usage_error(void)
{
    fprintf(stderr, "Try '%s --help' for more information.\n", mpcp_program);
    return 1;
}

/* cp's argmatch failure: the bad value, the valid ones, the hint. */
static int invalid_argument(const char *value, const char *option, const char *const *valid)
{
    fprintf(stderr, "%s: invalid argument \u2018%s\u2019 for \u2018%s\u2019\n", mpcp_program, value,
            option);
    fputs("Valid arguments are:\n", stderr);
    for (const char *const *v = valid; *v; v++)
        fprintf(stderr, "  - \u2018%s\u2019\n", *v);
    return usage_error();
}

/* Returns the index of value in list, or -1. */
static int match(const char *value, const char *const *list)
{
    for (int i = 0; list[i]; i++)
        if (strcmp(value, list[i]) == 0)
            return i;
    return -1;
}

/*
 * What -b, --backup and -S gave: resolved after the loop, as cp does, so
 * that the last CONTROL wins whatever the order, and -n is refused with any.
 */
static struct {
    bool wanted;
    const char *control; /* --backup=CONTROL; NULL or "": VERSION_CONTROL, else existing */
    const char *suffix;  /* -S; NULL: SIMPLE_BACKUP_SUFFIX, else "~" */
    bool no_clobber;     /* -n */
} backup_args;

/* In cp's order: its message groups the words of one meaning. */
static const char *const backup_words[] = {"none", "off",      "simple", "never", "existing",
                                           "nil",  "numbered", "t",      NULL};
static const int backup_types[] = {MPCP_BACKUP_NONE,     MPCP_BACKUP_NONE,     MPCP_BACKUP_SIMPLE,
                                   MPCP_BACKUP_SIMPLE,   MPCP_BACKUP_EXISTING, MPCP_BACKUP_EXISTING,
                                   MPCP_BACKUP_NUMBERED, MPCP_BACKUP_NUMBERED};

/* cp's argmatch: a word, or a prefix of words of one meaning. -1: invalid, -2: ambiguous. */
static int match_backup(const char *value)
{
    int exact = match(value, backup_words);
    if (exact >= 0)
        return backup_types[exact];
    size_t len = strlen(value);
    int found = -1;
    for (int i = 0; backup_words[i]; i++) {
        if (strncmp(value, backup_words[i], len) != 0)
            continue;
        if (found >= 0 && backup_types[i] != found)
            return -2;
        found = backup_types[i];
    }
    return found;
}

static int backup_type_error(const char *value, const char *context, bool ambiguous)
{
    fprintf(stderr, "%s: %s argument \u2018%s\u2019 for \u2018%s\u2019\n", mpcp_program,
            ambiguous ? "ambiguous" : "invalid", value, context);
    fputs("Valid arguments are:", stderr);
    for (int i = 0; backup_words[i]; i++) {
        if (i > 0 && backup_types[i] == backup_types[i - 1])
            fprintf(stderr, ", \u2018%s\u2019", backup_words[i]);
        else
            fprintf(stderr, "\n  - \u2018%s\u2019", backup_words[i]);
    }
    fputc('\n', stderr);
    return usage_error();
}

/* gnulib's rule: a suffix must be its own last name component ("a/" is, "/x" and "a/b" not). */
static bool suffix_ok(const char *s)
{
    if (!s || !*s || *s == '/')
        return false;
    const char *slash = strchr(s, '/');
    return !slash || slash[strspn(slash, "/")] == '\0';
}

/* After the loop: the backup type and suffix. Returns -1 to go on, or an exit status. */
static int resolve_backup(struct mpcp_opts *opt)
{
    opt->backup = MPCP_BACKUP_NONE;
    if (!backup_args.wanted)
        return -1;
    if (backup_args.no_clobber) {
        fprintf(stderr, "%s: options --backup and --no-clobber are mutually exclusive\n",
                mpcp_program);
        return usage_error();
    }
    const char *value = backup_args.control;
    const char *context = "backup type";
    if (!value || !*value) {
        value = getenv("VERSION_CONTROL");
        context = "$VERSION_CONTROL";
    }
    opt->backup = MPCP_BACKUP_EXISTING;
    if (value && *value) {
        int type = match_backup(value);
        if (type < 0)
            return backup_type_error(value, context, type == -2);
        opt->backup = type;
    }
    const char *suffix = backup_args.suffix;
    if (!suffix)
        suffix = getenv("SIMPLE_BACKUP_SUFFIX");
    opt->suffix = suffix_ok(suffix) ? suffix : "~";
    return -1;
}

static const char *const preserve_words[] = {"mode",    "timestamps", "ownership", "links",
                                             "context", "xattr",      "all",       NULL};

static void set_preserve(struct mpcp_opts *opt, int which, bool on)
{
    switch (which) {
    case 0:
        opt->p_mode = on;
        opt->no_p_mode = !on;
        break;
    case 1:
        opt->p_time = on;
        break;
    case 2:
        opt->p_owner = on;
        break;
    case 3:
        opt->p_links = on;
        break;
    case 4: /* context: only asked for explicitly it is an error, as with cp (no SELinux) */
        opt->p_context = on;
        break;
    case 5:
        opt->p_xattr = on;
        opt->p_xattr_quiet = false;
        break;
    default: /* all */
        opt->p_mode = opt->p_time = opt->p_owner = opt->p_links = opt->p_xattr = on;
        opt->no_p_mode = !on;
        opt->p_xattr_quiet = on;
        break;
    }
}

/* Parses "mode,links,..." for --preserve or --no-preserve. */
static int parse_preserve(struct mpcp_opts *opt, const char *list, bool on, const char *option)
{
    char *copy = strdup(list);
    if (!copy)
        return 1;
    int rc = -1;
    char *save = NULL;
    for (char *word = strtok_r(copy, ",", &save); word; word = strtok_r(NULL, ",", &save)) {
        int which = match(word, preserve_words);
        if (which < 0) {
            rc = invalid_argument(word, option, preserve_words);
            break;
        }
        set_preserve(opt, which, on);
    }
    free(copy);
    return rc;
}

static int parse_jobs(struct mpcp_opts *opt, const char *arg)
{
    char *end = NULL;
    errno = 0;
    long n = strtol(arg, &end, 10);
    if (errno || end == arg || *end || n < 1 || n > 4096) {
        fprintf(stderr, "%s: invalid number of jobs: \u2018%s\u2019\n", mpcp_program, arg);
        return usage_error();
    }
    opt->jobs = (int)n;
    return -1;
}

static int parse_enum(int *out, const char *arg, const char *option, const char *const *words)
{
    int which = match(arg, words);
    if (which < 0)
        return invalid_argument(arg, option, words);
    *out = which;
    return -1;
}

static void set_archive(struct mpcp_opts *opt)
{
    opt->deref = MPCP_DEREF_NEVER;
    opt->recursive = true;
    set_preserve(opt, 6, true);
}

static int parse_long(struct mpcp_opts *opt, int c, const char *arg)
{
    static const char *const reflink_words[] = {"auto", "always", "never", NULL};
    static const char *const sparse_words[] = {"auto", "always", "never", NULL};
    static const char *const update_words[] = {"all", "none", "none-fail", "older", NULL};
    static const char *const through_words[] = {"safe", "never", "always", NULL};
    switch (c) {
    case OPT_PRESERVE:
        if (!arg) {
            opt->p_mode = opt->p_owner = opt->p_time = true;
            opt->no_p_mode = false;
            return -1;
        }
        return parse_preserve(opt, arg, true, "--preserve");
    case OPT_NO_PRESERVE:
        return parse_preserve(opt, arg, false, "--no-preserve");
    case OPT_REFLINK:
        if (!arg) {
            opt->reflink = MPCP_REFLINK_ALWAYS;
            return -1;
        }
        return parse_enum(&opt->reflink, arg, "--reflink", reflink_words);
    case OPT_SPARSE:
        return parse_enum(&opt->sparse, arg, "--sparse", sparse_words);
    case OPT_UPDATE:
        if (!arg) {
            if (!backup_args.no_clobber) /* as -u */
                opt->update = MPCP_UPDATE_OLDER;
            return -1;
        }
        return parse_enum(&opt->update, arg, "--update", update_words);
    case OPT_PROGRESS:
        opt->progress = MPCP_PROGRESS_ON;
        return -1;
    case OPT_NO_PROGRESS:
        opt->progress = MPCP_PROGRESS_OFF;
        return -1;
    case OPT_STATS:
        opt->stats = true;
        return -1;
    case OPT_JSON:
        opt->json = true;
        return -1;
    case OPT_DRY_RUN:
        opt->dry_run = true;
        return -1;
    case OPT_INPLACE:
        opt->inplace = true;
        return -1;
    case OPT_PARENTS:
        opt->parents = true;
        return -1;
    case OPT_STRIP_SLASHES:
        opt->strip_slashes = true;
        return -1;
    case OPT_BACKUP:
        backup_args.wanted = true;
        backup_args.control = arg;
        return -1;
    case OPT_THROUGH:
        return parse_enum(&opt->through_links, arg, "--write-through-symlinks", through_words);
    case OPT_REMOVE_DEST:
        opt->remove_dest = true;
        return -1;
    case OPT_ATTRIBUTES_ONLY:
        opt->attributes_only = true;
        return -1;
    case OPT_COPY_CONTENTS:
        opt->copy_contents = true;
        return -1;
    case OPT_HELP:
        fputs(help_text, stdout);
        return 0;
    case OPT_VERSION:
        fputs(version_text(), stdout);
        return 0;
    default:
        return usage_error();
    }
}

static int parse_short(struct mpcp_opts *opt, int c, const char *arg)
{
    switch (c) {
    case 'a':
        set_archive(opt);
        return -1;
    case 'b':
        backup_args.wanted = true;
        return -1;
    case 'S':
        backup_args.wanted = true;
        backup_args.suffix = arg;
        return -1;
    case 'd':
        opt->deref = MPCP_DEREF_NEVER;
        opt->p_links = true;
        return -1;
    case 'f':
        opt->force = true;
        return -1;
    case 'H':
        opt->deref = MPCP_DEREF_CMDLINE;
        return -1;
    case 'l':
        opt->hard_link = true;
        return -1;
    case 'L':
        opt->deref = MPCP_DEREF_ALWAYS;
        return -1;
    case 'n':
        /* -n and -i: the last one wins, as with cp 9.1 */
        opt->update = MPCP_UPDATE_NONE;
        opt->interactive = false;
        backup_args.no_clobber = true;
        return -1;
    case 'i':
        if (backup_args.no_clobber)
            opt->update = MPCP_UPDATE_ALL;
        opt->interactive = true;
        backup_args.no_clobber = false;
        return -1;
    case 'P':
        opt->deref = MPCP_DEREF_NEVER;
        return -1;
    case 'p':
        opt->p_mode = opt->p_owner = opt->p_time = true;
        opt->no_p_mode = false;
        return -1;
    case 'r':
    case 'R':
        opt->recursive = true;
        return -1;
    case 's':
        opt->symbolic_link = true;
        return -1;
    case 't':
        if (opt->target_dir) {
            fprintf(stderr, "%s: multiple target directories specified\n", mpcp_program);
            return usage_error();
        }
        opt->target_dir = arg;
        return -1;
    case 'T':
        opt->no_target_dir = true;
        return -1;
    case 'u':
        /* cp 9.1: -n skips every existing file, with -u given before or after it */
        if (!backup_args.no_clobber)
            opt->update = MPCP_UPDATE_OLDER;
        return -1;
    case 'v':
        opt->verbose = true;
        return -1;
    case 'x':
        opt->one_fs = true;
        return -1;
    case 'j':
        return parse_jobs(opt, arg);
    case 'q':
        opt->quiet = true;
        return -1;
    default:
        return parse_long(opt, c, arg);
    }
}

static int check_operands(struct mpcp_opts *opt)
{
    if (opt->target_dir && opt->no_target_dir) {
        fprintf(stderr,
                "%s: cannot combine --target-directory (-t) and --no-target-directory (-T)\n",
                mpcp_program);
        return usage_error();
    }
    if (opt->n_operands == 0) {
        fprintf(stderr, "%s: missing file operand\n", mpcp_program);
        return usage_error();
    }
    if (!opt->target_dir && opt->n_operands == 1) {
        char q[PATH_MAX + 64];
        mpcp_quote(q, sizeof q, opt->operands[0]);
        fprintf(stderr, "%s: missing destination file operand after %s\n", mpcp_program, q);
        return usage_error();
    }
    if (opt->no_target_dir && opt->n_operands > 2) {
        char q[PATH_MAX + 64];
        mpcp_quote(q, sizeof q, opt->operands[2]);
        fprintf(stderr, "%s: extra operand %s\n", mpcp_program, q);
        return usage_error();
    }
    if (opt->sparse != MPCP_SPARSE_AUTO && opt->reflink == MPCP_REFLINK_ALWAYS) {
        fprintf(stderr, "%s: --reflink can be used only with --sparse=auto\n", mpcp_program);
        return usage_error();
    }
    return -1;
}

int mpcp_options_parse(struct mpcp_opts *opt, int argc, char **argv)
{
    memset(opt, 0, sizeof *opt);
    memset(&backup_args, 0, sizeof backup_args);
    opt->jobs = 0;
    /*
     * Messages say "mpcp:", or "cp:" when mpcp is installed as cp (a drop-in
     * first in PATH, as coreutils' own cp tests run it): scripts that read
     * cp's messages then read ours. getopt names the program by argv[0].
     */
    const char *base = argv[0] ? strrchr(argv[0], '/') : NULL;
    base = base ? base + 1 : argv[0];
    if (base && strcmp(base, "cp") == 0)
        mpcp_program = "cp";
    argv[0] = (char *)mpcp_program;
    int c;
    while ((c = getopt_long(argc, argv, "abdfHilLnPpRrsS:t:Tuvxj:q", long_options, NULL)) != -1) {
        int rc = parse_short(opt, c, optarg);
        if (rc >= 0)
            return rc;
    }
    if (opt->hard_link && opt->symbolic_link) {
        fprintf(stderr, "%s: cannot make both hard and symbolic links\n", mpcp_program);
        return usage_error();
    }
    int rc = resolve_backup(opt);
    if (rc >= 0)
        return rc;
    opt->operands = argv + optind;
    opt->n_operands = argc - optind;
    /* As cp: -r alone copies symlinks, -rl links what they point to. */
    if (opt->deref == MPCP_DEREF_UNSET)
        opt->deref = opt->recursive && !opt->hard_link ? MPCP_DEREF_NEVER : MPCP_DEREF_ALWAYS;
    opt->update_links =
        opt->update == MPCP_UPDATE_OLDER && !opt->p_links && !opt->hard_link && !opt->symbolic_link;
    opt->jobs_auto = opt->jobs == 0;
    if (opt->jobs == 0 && mproc_cpu_count(&opt->jobs) < 0)
        opt->jobs = 1;
    /* -i asks on the terminal, one question at a time: no workers. */
    if (opt->interactive)
        opt->jobs = 1;
    mode_t old = umask(0);
    umask(old);
    opt->umask = old;
    if (opt->p_context) {
        fprintf(stderr, "%s: cannot preserve security context without an SELinux-enabled kernel\n",
                mpcp_program);
        return 1;
    }
    return check_operands(opt);
}
