"""The DataAgent platform: a coordinator that hands work units to untrusted agents, verifies what
they send (in-unit hidden checks with trusted answers, a quorum of independent voices, reputation),
pays validated work into an append-only ledger, and shows it all live. `vlcurate serve` runs it;
`vlcurate.server.app.create_app` builds the app.

Why the unit cycle has two paths: an agent's steady state is one request per unit (submit this,
lease the next), nearly all of a running platform's traffic. On SQLite every statement runs in the
server process, so the general path (`submissions.submit`, then `leasing.lease`) costs no round
trips. On PostgreSQL that path is about twenty round trips, so `cycle.fast` reads everything in one
(`vlc_snapshot`) and writes everything in one (`vlc_apply`, PL/pgSQL from the migrations).

Which decisions live only in Python, in one place for both databases: placing results on a lease's
items, grading hidden checks (`checks`), agreement and quorum with linked accounts as one voice
(`verify.judge`), points, reputation deltas (`reputation.Tally`), and the trust and audit dice
(`leasing.pg_lease_args`). The SQL functions only read and write what Python decided, plus the
random pick of a unit and the caps on leases held, which must happen under the row locks. Anything
unusual -- a replay, a rejected or late submission, a failed check (disputes, pausing), a
disagreement (reversals), a linked account in the quorum -- goes the general way.
"""
