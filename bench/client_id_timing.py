#!/usr/bin/env python3
"""Times the token endpoint's answer to a wrong secret for a known and for an unknown client id.

Usage: client_id_timing.py <broker base URL> <API key> [samples per kind, default 400]

Creates one pipeline credential (connection ``timing`` of integration ``demo``), then sends
interleaved requests: the known client id with a wrong secret, and a fresh well-formed unknown
client id with a wrong secret, each on the same keep-alive connection. Prints the medians and the
Mann-Whitney U statistic with its normal approximation z (|z| < 1.96: no difference at the 5 %
level). Python standard library only.
"""
import http.client, json, math, statistics, sys, time, urllib.parse, secrets


def main():
    base, key = sys.argv[1], sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 400
    u = urllib.parse.urlparse(base)
    conn = http.client.HTTPConnection(u.hostname, u.port)
    conn.request("POST", "/api/connections/demo/timing/credentials", body="",
                 headers={"x-functions-key": key})
    r = conn.getresponse(); cred = json.loads(r.read())
    assert r.status == 201, cred
    known = cred["client_id"]

    def once(client_id):
        body = urllib.parse.urlencode({"grant_type": "client_credentials", "client_id": client_id,
                                       "client_secret": "pcs_" + secrets.token_urlsafe(32)})
        t = time.perf_counter_ns()
        conn.request("POST", "/api/oauth2/token", body=body,
                     headers={"Content-Type": "application/x-www-form-urlencoded"})
        resp = conn.getresponse(); resp.read()
        return (time.perf_counter_ns() - t) / 1000.0, resp.status

    for _ in range(50):  # warm up
        once(known); once("pc_" + secrets.token_urlsafe(18)[:24])
    a, b = [], []
    for _ in range(n):
        a.append(once(known)[0])
        b.append(once("pc_" + secrets.token_urlsafe(18)[:24])[0])
    ranked = sorted([(v, 0) for v in a] + [(v, 1) for v in b])
    ranks, i = [0.0] * len(ranked), 0
    while i < len(ranked):
        j = i
        while j + 1 < len(ranked) and ranked[j + 1][0] == ranked[i][0]:
            j += 1
        for k in range(i, j + 1):
            ranks[k] = (i + j) / 2 + 1
        i = j + 1
    r_a = sum(rk for rk, (_, g) in zip(ranks, ranked) if g == 0)
    u_a = r_a - n * (n + 1) / 2
    mu, sigma = n * n / 2, math.sqrt(n * n * (2 * n + 1) / 12)
    z = (u_a - mu) / sigma
    print(json.dumps({"samples_each": n,
                      "known_median_us": round(statistics.median(a), 1),
                      "unknown_median_us": round(statistics.median(b), 1),
                      "known_p90_us": round(sorted(a)[int(0.9 * n)], 1),
                      "unknown_p90_us": round(sorted(b)[int(0.9 * n)], 1),
                      "mann_whitney_u": u_a, "z": round(z, 2)}))


if __name__ == "__main__":
    main()
