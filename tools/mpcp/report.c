/*
 * report.c: how mpcp names files in messages (cp's shell-escape quoting, so
 * a name with a newline or a stray byte cannot forge a line) and the
 * end-of-run summaries.
 */
#define _GNU_SOURCE
#include "mpcp.h"

#include <mproc.h>

#include <stdio.h>
#include <string.h>
#include <wchar.h>
#include <wctype.h>

struct out {
    char *buf;
    size_t size, len;
};

static void put(struct out *o, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (o->len + 1 < o->size)
            o->buf[o->len] = s[i];
        o->len++;
    }
    if (o->size)
        o->buf[o->len < o->size ? o->len : o->size - 1] = '\0';
}

static void puts_(struct out *o, const char *s)
{
    put(o, s, strlen(s));
}

/*
 * Length of the printable character at s (1 for ASCII, more for a valid
 * printable multibyte character), or 0 if it must be escaped.
 */
static size_t printable_len(const char *s, size_t left)
{
    unsigned char c = (unsigned char)*s;
    if (c < 0x80)
        return (c >= 0x20 && c < 0x7f) ? 1 : 0;
    mbstate_t st;
    memset(&st, 0, sizeof st);
    wchar_t wc;
    size_t n = mbrtowc(&wc, s, left, &st);
    if (n == (size_t)-1 || n == (size_t)-2 || n == 0)
        return 0;
    return iswprint((wint_t)wc) ? n : 0;
}

/* Characters that may stand in a double-quoted name (cp picks "a'b" then). */
static bool dq_compatible(unsigned char c)
{
    if (c >= 0x80 || (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
        return true;
    return c != 0 && strchr(" ,%+:@]._-/'", c) != NULL;
}

static bool needs_escape(const char *name, bool *has_quote, bool *dq_ok)
{
    size_t len = strlen(name);
    bool esc = false;
    *has_quote = false;
    *dq_ok = true;
    for (size_t i = 0; i < len;) {
        size_t n = printable_len(name + i, len - i);
        if (n == 0) {
            esc = true;
            *dq_ok = false;
            i++;
            continue;
        }
        if (name[i] == '\'')
            *has_quote = true;
        if (n == 1 && !dq_compatible((unsigned char)name[i]))
            *dq_ok = false;
        i += n;
    }
    return esc;
}

static void escape_byte(struct out *o, unsigned char c)
{
    static const char letters[] = "abtnvfr";
    char tmp[8];
    if (c >= 7 && c <= 13) {
        tmp[0] = '\\';
        tmp[1] = letters[c - 7];
        put(o, tmp, 2);
        return;
    }
    snprintf(tmp, sizeof tmp, "\\%03o", c);
    puts_(o, tmp);
}

/* 'name' with each non-printable run as '$'\ooo'' and each quote as '\''. */
static void quote_escaped(struct out *o, const char *name)
{
    size_t len = strlen(name);
    bool in_dollar = false;
    put(o, "'", 1);
    for (size_t i = 0; i < len;) {
        size_t n = printable_len(name + i, len - i);
        if (n == 0) {
            if (!in_dollar)
                puts_(o, "'$'");
            in_dollar = true;
            escape_byte(o, (unsigned char)name[i]);
            i++;
            continue;
        }
        if (in_dollar) {
            puts_(o, "''");
            in_dollar = false;
        }
        if (name[i] == '\'')
            puts_(o, "'\\''");
        else
            put(o, name + i, n);
        i += n;
    }
    put(o, "'", 1);
}

size_t mpcp_quote(char *buf, size_t size, const char *name)
{
    struct out o = {buf, size, 0};
    if (size)
        buf[0] = '\0';
    bool has_quote, dq_ok;
    bool esc = needs_escape(name, &has_quote, &dq_ok);
    if (!esc && has_quote && dq_ok) {
        put(&o, "\"", 1);
        puts_(&o, name);
        put(&o, "\"", 1);
        return o.len;
    }
    if (!esc && !has_quote) {
        put(&o, "'", 1);
        puts_(&o, name);
        put(&o, "'", 1);
        return o.len;
    }
    quote_escaped(&o, name);
    return o.len;
}

/*
 * Whether cp's quotef() leaves name bare: printable, and none of the
 * characters a shell (or a "file: message" line, hence ':') would read
 * otherwise; '#' and '~' only at the start, '{' and '}' only alone.
 */
static bool bare_ok(const char *name)
{
    size_t len = strlen(name);
    if (len == 0 || name[0] == '#' || name[0] == '~')
        return false;
    if (len == 1 && (name[0] == '{' || name[0] == '}'))
        return false;
    for (size_t i = 0; i < len;) {
        size_t n = printable_len(name + i, len - i);
        if (n == 0 || (n == 1 && strchr(" !\"$&'()*;<=>?[\\^`|:", name[i])))
            return false;
        i += n;
    }
    return true;
}

size_t mpcp_quote_if_needed(char *buf, size_t size, const char *name)
{
    if (!bare_ok(name))
        return mpcp_quote(buf, size, name);
    struct out o = {buf, size, 0};
    if (size)
        buf[0] = '\0';
    puts_(&o, name);
    return o.len;
}

void mpcp_format(char *out, size_t size, const char *tmpl, const char *a, const char *b)
{
    struct out o = {out, size, 0};
    const char *args[2] = {a ? a : "", b ? b : ""};
    int next = 0;
    if (size)
        out[0] = '\0';
    for (const char *t = tmpl; *t; t++) {
        if (t[0] == '%' && t[1] == 's' && next < 2) {
            puts_(&o, args[next++]);
            t++;
            continue;
        }
        put(&o, t, 1);
    }
}

const char *mpcp_program = "mpcp";

void mpcp_error(int err, const char *msg)
{
    if (err)
        fprintf(stderr, "%s: %s: %s\n", mpcp_program, msg, mproc_strerror(-err));
    else
        fprintf(stderr, "%s: %s\n", mpcp_program, msg);
}

static void human(char *buf, size_t size, double bytes)
{
    static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
    int u = 0;
    while (bytes >= 1024 && u < 5) {
        bytes /= 1024;
        u++;
    }
    snprintf(buf, size, u ? "%.1f %s" : "%.0f %s", bytes, units[u]);
}

void mpcp_report_summary(const struct mpcp_opts *opt, const struct mpcp_stats *st)
{
    double rate = st->seconds > 0 ? (double)st->bytes / st->seconds : 0;
    if (opt->json) {
        printf("{\"files\":%llu,\"directories\":%llu,\"symlinks\":%llu,\"hardlinks\":%llu,"
               "\"specials\":%llu,\"skipped\":%llu,\"errors\":%llu,\"bytes\":%llu,"
               "\"seconds\":%.6f,\"bytes_per_second\":%.0f,\"jobs\":%d,"
               "\"folders_listed_by_workers\":%llu}\n",
               (unsigned long long)st->files, (unsigned long long)st->dirs,
               (unsigned long long)st->symlinks, (unsigned long long)st->hardlinks,
               (unsigned long long)st->specials, (unsigned long long)st->skipped,
               (unsigned long long)st->errors, (unsigned long long)st->bytes, st->seconds, rate,
               opt->jobs, (unsigned long long)st->listed);
    }
    if (opt->stats) {
        char b[32], r[32];
        human(b, sizeof b, (double)st->bytes);
        human(r, sizeof r, rate);
        fprintf(stderr,
                "mpcp: %llu files, %llu directories, %llu symlinks, %llu hard links, "
                "%llu special files, %llu skipped, %llu errors; %s in %.2f s (%s/s)\n",
                (unsigned long long)st->files, (unsigned long long)st->dirs,
                (unsigned long long)st->symlinks, (unsigned long long)st->hardlinks,
                (unsigned long long)st->specials, (unsigned long long)st->skipped,
                (unsigned long long)st->errors, b, st->seconds, r);
    }
}
