#!/usr/bin/env python3
"""The table of bench/edge.sh, from the cells <results>/<proxy>/<row>/cell.json: one line per row, a column
per proxy, and Sluicegate's verdict against the issue's targets (the same rules, applied to each proxy, mark
its cell with PASS or FAIL)."""

import argparse
import json
import os

ROW_TITLES = {
    "1": "1 h2c: streams of 1 MB, never read",
    "2a": "2 HTTP/1.1 1 MB, never read (A)",
    "2b": "2 HTTP/1.1 1 MB, never read (B)",
    "5": "5 one GET then idle",
    "6": "6 malformed chunked POST",
    "3": "3 paced upload",
    "4-9": "4 stalled backend body / 9 h2 PINGs",
}


def mb(kb):
    return kb / 1024.0


def load(results, proxy, row):
    try:
        with open(os.path.join(results, proxy, row, "cell.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def growth(c):
    base = c.get("rss_base_kb", 0)
    return mb((c.get("sample") or {}).get("peak_rss_kb", 0) - base), mb(c.get("rss_after_kb", 0) - base)


def verdict(row, c, nginx, args):
    """(pass: True/False/None, reasons) for cell c; nginx is nginx's cell of the row (or None)."""
    if c is None or "error" in c:
        return False, ["no result" if c is None else c["error"]]
    bad = []
    legit = (c.get("legit") or {})
    if legit.get("sent", 0) == 0 or legit.get("ok") != legit.get("sent"):
        bad.append("legit %s/%s" % (legit.get("ok"), legit.get("sent")))
    starved = (c.get("probe") or {}).get("starved", 0)
    if starved:
        bad.append("%d endpoint(s) got no probe" % starved)
    if c.get("transitions", 0) > 0:
        bad.append("%d ejection/down transition(s)" % c["transitions"])
    if not c.get("alive_at_end", True):
        bad.append("the proxy exited")
    a = (c.get("abuse") or {})
    undecided = False
    if row in ("1", "2a", "2b"):
        if nginx is None or "error" in nginx:
            undecided = True
        else:
            peak, after = growth(c)
            npeak, nafter = growth(nginx)
            if peak > npeak:
                bad.append("RSS peak +%.0f MB > nginx's +%.0f MB" % (peak, npeak))
            if after > max(nafter, 0) + args.rss_slack_mb:
                bad.append("RSS after +%.0f MB > nginx's +%.0f MB + %d" % (after, nafter, args.rss_slack_mb))
    elif row == "6":
        st = a.get("statuses", {})
        other = {k: v for k, v in st.items() if not (k.isdigit() and k.startswith("4"))}
        if not st or other:
            bad.append("answers not 4xx: %s" % (other or "none"))
    elif row == "3":
        if str(a.get("status")) != "200":
            bad.append("upload answered %s" % a.get("status"))
    elif row == "4-9":
        limit = args.upstream_timeout + 5
        for k in ("stall_h1", "stall_h2"):
            s = a.get(k) or {}
            if s.get("how") == "cap" or s.get("ended_s", 1e9) > limit:
                bad.append("%s ended at %s s (%s)" % (k.replace("_", " "), s.get("ended_s"), s.get("how")))
        p = a.get("h2ping") or {}
        if p.get("how") == "cap" or p.get("closed_s", 1e9) > args.idle + 10 or "error" in p:
            bad.append("h2 PING connection closed at %s s (%s)" % (p.get("closed_s"), p.get("how", p.get("error"))))
    if bad:
        return False, bad
    return (None if undecided else True), []


def cell_text(row, c):
    if c is None:
        return "not run"
    if "error" in c:
        return "error: " + c["error"]
    peak, after = growth(c)
    legit = (c.get("legit") or {})
    a = (c.get("abuse") or {})
    parts = []
    if row in ("1", "2a", "2b", "5"):
        parts.append("RSS %.0f MB: peak +%.0f, after +%.0f" % (mb(c["rss_base_kb"]), peak, after))
        opened = "%s/%s conns" % (a.get("opened"), a.get("wanted"))
        if row == "5" and a.get("closed_by_server"):
            opened += " (%d closed by proxy)" % a["closed_by_server"]
        parts.append(opened)
        parts.append("backend conns %d" % (c.get("sample") or {}).get("peak_backend_conns", 0))
    elif row == "6":
        parts.append("answers " + ", ".join("%s x%d" % kv for kv in sorted(a.get("statuses", {}).items())))
    elif row == "3":
        parts.append("%s at %s s (sent %s of %s MB)" % (a.get("status"), a.get("answered_s"), a.get("sent_mb"), a.get("size_mb")))
    elif row == "4-9":
        for k, name in (("stall_h1", "h1"), ("stall_h2", "h2")):
            s = a.get(k) or {}
            parts.append("%s ended %s s (%s)" % (name, s.get("ended_s"), s.get("how", s.get("error"))))
        p = a.get("h2ping") or {}
        parts.append("PINGs: closed %s s (%s)" % (p.get("closed_s"), p.get("how", p.get("error"))))
    parts.append("legit %s/%s" % (legit.get("ok"), legit.get("sent")))
    hits = (c.get("probe") or {}).get("hits", {})
    parts.append("probe hits %s" % "/".join(str(hits.get(k, "?")) for k in ("web:1", "web:2", "helper:1", "helper:2")))
    if c["proxy"] in ("sluicegate", "haproxy"):
        parts.append("%s %d" % ("ejected/down" if c["proxy"] == "sluicegate" else "chkdown", c.get("transitions", 0)))
    return "; ".join(parts)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("results")
    p.add_argument("--proxies", nargs="+", required=True)
    p.add_argument("--rows", nargs="+", required=True)
    p.add_argument("--idle", type=float, required=True)
    p.add_argument("--upstream-timeout", type=float, required=True)
    p.add_argument("--rss-slack-mb", type=float, default=16)
    p.add_argument("--after-wait", type=float, default=10)
    args = p.parse_args()

    mark = {True: "PASS", False: "FAIL", None: "n/a"}
    print("| row | " + " | ".join(args.proxies) + " | Sluicegate vs target |")
    print("|---|" + "---|" * len(args.proxies) + "---|")
    summary = []
    for row in args.rows:
        nginx = load(args.results, "nginx", row) if "nginx" in args.proxies else None
        cells, sg = [], ""
        for proxy in args.proxies:
            c = load(args.results, proxy, row)
            ok, why = verdict(row, c, nginx, args)
            cells.append("**%s** %s" % (mark[ok], cell_text(row, c)))
            if proxy == "sluicegate":
                sg = mark[ok] + (": " + "; ".join(why) if why else "")
                summary.append((row, ok))
        print("| %s | %s | %s |" % (ROW_TITLES.get(row, row), " | ".join(cells), sg or "not run"))
    print()
    if summary:
        print("Sluicegate: %d of %d rows pass (%s)." % (
            sum(1 for _, ok in summary if ok), len(summary),
            ", ".join("%s %s" % (r, mark[ok]) for r, ok in summary)))
    print()
    print("Cells: RSS at rest, growth at the peak and %s after the abuse (MB, summed over the proxy's processes);"
          " connections opened of those wanted; peak established connections from the proxy to the backends;"
          " legit GETs answered 200 of those sent during the abuse; probe hits: requests that reached each"
          " endpoint (web 1/2, helper 1/2) of the probes sent right after the abuse (0: taken out of service);"
          " Sluicegate: ejected+down transitions in /metrics during the row; haproxy: servers' chkdown during the"
          " row. Targets: legit 100%%, no endpoint taken out, rows 1-2 RSS at or below nginx's (peak; after"
          " within nginx's + %d MB), row 6 4xx, row 3 200, row 4 ends within upstream timeout + 5 s (%g s),"
          " row 9 closed within idle + 10 s (%g s)."
          % ("%g s" % args.after_wait, args.rss_slack_mb, args.upstream_timeout + 5, args.idle + 10))


if __name__ == "__main__":
    main()
