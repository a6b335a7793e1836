#!/usr/bin/env python3
r"""Where a server's CPU goes per operation, by component, from a perf profile with call stacks.

Reads `perf script -F tid,ip,sym` output on stdin (a profile recorded with
`--call-graph dwarf`), names each sample after the innermost frame that matches a component
below (the generic ones, the runtime and the rest of the HTTP dispatcher, only when nothing
else matches) and prints each component's share of the samples and its samples per 1000
samples of RS256 signing. Signing costs the same in gatehouse and in the benchmark's least
server, so the second column compares the two servers per token, whatever their throughput.

    cargo bench --bench load -- --only client_credentials --baselines --sqlite-only \
        --runs 1 --seconds 12 &
    # once the scenario has started, for each server:
    perf record -e cpu-clock -F 499 --call-graph dwarf,32768 -p PID -o cc.data
    # stop it (Ctrl-C) when the benchmark ends, then:
    perf script -i cc.data -F tid,ip,sym --no-inline | python3 benches/perf/components.py

The same commands with `--only flow` (and no `--sqlite-only` to reach PostgreSQL, whose turns
come after SQLite's) give the authorization-code flow's groups: the database client, the
blocking-pool hop, oxide-auth and the two handlers.

PID is the least server's (`pgrep -f -- --least-server`) or gatehouse's: the benchmark starts
gatehouse several times before the scenario (a key, then the timed starts), so take the
newest (`pgrep -n -x gatehouse`) once the scenario's turns have begun. Each server serves
only in its turns, so recording it for the whole run takes only its own work.

Release builds carry no debug info, and LTO inlines small functions into their callers: a
component whose functions were all inlined counts under its caller (often "handler, the
rest"). `CARGO_PROFILE_RELEASE_DEBUG=line-tables-only` keeps more frames, at the cost of a
rebuild.
"""
import collections
import re
import sys

SPECIFIC = [
    ("RS256 signing (aws-lc-rs)", r"KeyPair::sign|Shared::sign|EVP_DigestSign|pkey_rsa_sign"),
    # The password grant's own work; in the other scenarios, their setup's logins when the
    # recording began before the turns.
    ("argon2id (password checks, or the setup's logins)", r"argon2::"),
    ("audit writer and SQLite writer threads", r"audit::write_rows|DedicatedWriter::run"),
    ("log flusher thread", r"line_buffer::LineBuffer::run"),
    ("audit event: log line and queued row", r"audit::AuditEvent::record"),
    ("claims, jti, JWT encoding", r"tokens::sign_access_with|oauth::token::client_credentials"),
    ("form and Basic auth parsing", r"http::token::read_request"),
    ("JSON answer and its headers", r"http::token::answer"),
    ("client secret check and client rate", r"check_client_secret"),
    # The flows that read or write the database (refresh, authorization code, password).
    ("database client (diesel, libpq, r2d2)", r"diesel::|pq_|PQ[a-z]|libpq|r2d2::"),
    ("oxide-auth", r"oxide_auth::"),
    ("sealed authorization code", r"sealed_code"),
    ("/authorize handler, the rest", r"http::authorize::"),
    ("/token handler, the rest", r"http::token::"),
    ("metrics", r"gatehouse::metrics::"),
    ("request span (tracing-actix-web)", r"RootSpanBuilder|TracingLoggerMiddleware|TracingResponse.*::poll"),
    ("handler, the rest", r"handler_service"),
    ("CORS middleware", r"CorsMiddleware"),
    ("body deadline middleware", r"body_timeout"),
    ("routing and other middleware", r"ConditionMiddleware|Resource<T>.*register|AppInitService|http::request_id"),
    ("HTTP: writing the response (send, loopback delivery)", r"poll_flush"),
    ("HTTP: reading and parsing the request", r"poll_request"),
    # What a blocking-pool task does that no group above names, and the thread switches of
    # the hop there and back.
    ("blocking-pool hop and the task's own work", r"run_blocking|spawn_blocking|blocking::pool"),
]
GENERIC = [
    ("HTTP: dispatcher, the rest", r"Dispatcher"),
    ("runtime (tokio, actix-server)", r"tokio::|actix_server|actix_rt"),
]
SPECIFIC = [(name, re.compile(p)) for name, p in SPECIFIC]
GENERIC = [(name, re.compile(p)) for name, p in GENERIC]
SIGNING = SPECIFIC[0][0]


def component(frames):
    for rules in (SPECIFIC, GENERIC):
        for frame in frames:
            for name, pattern in rules:
                if pattern.search(frame):
                    return name
    return "other"


def main():
    counts = collections.Counter()
    frames = None
    for line in sys.stdin:
        if line.startswith("\t"):
            parts = line.strip().split(" ", 1)
            if frames is not None and len(parts) == 2:
                frames.append(parts[1])
        elif line.strip():
            # A sample's first line: its thread id and, when perf recorded no call stack
            # for it, the address and symbol of where it was.
            if frames is not None:
                counts[component(frames)] += 1
            parts = line.split(None, 2)
            frames = [parts[2].strip()] if len(parts) == 3 else []
    if frames is not None:
        counts[component(frames)] += 1
    total = sum(counts.values())
    signing = counts[SIGNING]
    if not total or not signing:
        sys.exit("no samples with call stacks, or none in RS256 signing")
    print(f"{total} samples, {signing} in signing")
    print(f"{'share':>7}  {'per 1000 signing':>16}  component")
    for name, n in counts.most_common():
        print(f"{100 * n / total:6.2f}%  {1000 * n / signing:16.1f}  {name}")
    print(f"{'':>7}  {1000 * total / signing:16.1f}  all")


if __name__ == "__main__":
    main()
