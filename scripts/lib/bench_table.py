"""The table of scripts/bench-vs-base.sh: medians of the rounds of every row.

    python3 scripts/lib/bench_table.py OUT_DIR ROUNDS BASE

OUT_DIR holds one JSON report per run, named VARIANT-ROW-ROUND.json (variant:
base, new, off, nats; row: echo, say, rr256, rr1, idle) and system-VARIANT.json.
"""

import json
import os
import statistics
import sys


def load(out, name):
    try:
        with open(os.path.join(out, name + ".json")) as f:
            return json.loads(f.read() or "{}")
    except (OSError, ValueError):
        return {}


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def main():
    out, rounds, base = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    runs = {}
    for variant in ("base", "new", "off", "nats"):
        for row in ("echo", "say", "rr256", "rr1", "idle"):
            runs[variant, row] = [load(out, f"{variant}-{row}-{r}") for r in range(1, rounds + 1)]
            runs[variant, row] = [r for r in runs[variant, row] if r]

    def m(variant, row, field):
        return med([r.get(field) for r in runs[variant, row]])

    def cpu(variant, row):
        """Median µs per request of each process, by name (loc01… kept apart)."""
        names = {}
        for r in runs[variant, row]:
            for c in r.get("cpu", []):
                names.setdefault(c["name"], []).append(c["us_per_req"])
        return {n: statistics.median(v) for n, v in names.items()}

    def fmt_cpu(d):
        keep = [n for n in ("receive", "broker", "chat", "db", "bench-echo", "mariadb") if n in d]
        return ", ".join(f"{n} {d[n]:.1f}" for n in keep) or "–"

    def ratio(a, b):
        return f"**{a / b:.2f}x**" if a and b else "–"

    def errs(variant, row):
        return sum(int(r.get("errors", 0)) for r in runs[variant, row])

    print(f"Rounds: {rounds}, medians; base {base}; \"off\": this build with "
          "SB_METRICS=off SB_TRACE=off. CPU: µs per request, from /proc.")
    print()
    print("| row | base | this build | ratio | base p50 / p99 µs | this p50 / p99 µs "
          "| CPU µs/req base | CPU µs/req this | errors base / this |")
    print("|---|---|---|---|---|---|---|---|---|")
    names = {
        "echo": "WS `$echo` 50 × 8, msg/s",
        "say": "WS `say` 50 × 8 (committed), msg/s",
        "rr256": "bus rr 100 B, 256 in flight, req/s",
        "rr1": "bus rr 100 B, 1 in flight, req/s",
    }
    for row, name in names.items():
        b, n = m("base", row, "rps"), m("new", row, "rps")
        print(f"| {name} | {b or 0:.0f} | {n or 0:.0f} | {ratio(n, b)} "
              f"| {m('base', row, 'p50_us')} / {m('base', row, 'p99_us')} "
              f"| {m('new', row, 'p50_us')} / {m('new', row, 'p99_us')} "
              f"| {fmt_cpu(cpu('base', row))} | {fmt_cpu(cpu('new', row))} "
              f"| {errs('base', row)} / {errs('new', row)} |")
    print()
    print("Against NATS (the bench/ harness's responder and requester, same rounds):")
    print()
    print("| row | NATS req/s | base / NATS | this / NATS | NATS p50 µs | base p50 / NATS p50 | this p50 / NATS p50 |")
    print("|---|---|---|---|---|---|---|")
    for row in ("rr256", "rr1"):
        t = m("nats", row, "rps")
        p = m("nats", row, "p50_us")
        print(f"| {names[row]} | {t or 0:.0f} | {ratio(m('base', row, 'rps'), t)} "
              f"| {ratio(m('new', row, 'rps'), t)} | {p} "
              f"| {ratio(m('base', row, 'p50_us'), p)} | {ratio(m('new', row, 'p50_us'), p)} |")
    print()
    print("Recording (metrics and spans) on vs off, this build:")
    print()
    print("| row | on | off | on / off | CPU µs/req on | CPU µs/req off |")
    print("|---|---|---|---|---|---|")
    for row in ("echo", "say", "rr256", "rr1"):
        on, off = m("new", row, "rps"), m("off", row, "rps")
        print(f"| {names[row]} | {on or 0:.0f} | {off or 0:.0f} | {ratio(on, off)} "
              f"| {fmt_cpu(cpu('new', row))} | {fmt_cpu(cpu('off', row))} |")
    print()
    print("Memory:")
    print()
    print("| row | base | this build |")
    print("|---|---|---|")
    bi = (runs["base", "idle"] or [{}])[0].get("extra", {})
    ni = (runs["new", "idle"] or [{}])[0].get("extra", {})
    print(f"| idle WebSocket connection, bytes | {bi.get('bytes_per_connection')} "
          f"| {ni.get('bytes_per_connection')} |")
    bs, ns = load(out, "system-base"), load(out, "system-new")
    kib = lambda s: f"{s['kib'] / 1024:.1f} MiB" if s.get("kib") else "–"
    print(f"| whole system idle (main + apps of ecosystem.toml) | {kib(bs)} | {kib(ns)} |")
    print()
    print(f"system base: {bs.get('processes', '')}")
    print(f"system this: {ns.get('processes', '')}")


if __name__ == "__main__":
    main()
